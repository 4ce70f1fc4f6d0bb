"""TLS to NATS: a nats-server with a certificate signed by a CA made in the test; the
bridge connects with ``credentials.tls_ca_file``, publishes and consumes; a wrong CA
stops the start at once with an error that says so."""

from __future__ import annotations

import datetime
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from consumer_support import (
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.config import Credentials
from bridge.errors import ConnectionError
from bridge.testing import NatsServer
from bridge.transport.connection import Connection


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate it signed for 127.0.0.1/localhost, and an unrelated CA."""
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _authority("bridge test CA")
    _other_key, other_cert = _authority("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Pki(
        ca=_pem(tmp / "ca.pem", ca_cert.public_bytes(pem)),
        other_ca=_pem(tmp / "other-ca.pem", other_cert.public_bytes(pem)),
        server_cert=_pem(tmp / "server.pem", cert.public_bytes(pem)),
        server_key=_pem(
            tmp / "server.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    )


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> NatsServer:
    server = NatsServer(
        config=f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}" }}'
    ).start()
    yield server  # type: ignore[misc]
    server.cleanup()


async def test_bridge_publishes_and_consumes_over_tls(
    pki: Pki, tls_server: NatsServer, unique: str, database_url: str
) -> None:
    cfg = make_config(tls_server.url, unique, credentials=Credentials(tls_ca_file=str(pki.ca)))
    stack = await build_stack(cfg, database_url)  # connects, provisions, publishes as peer
    try:
        # the server requires TLS (next test): being connected means TLS verified it
        assert stack.connection.is_connected
        stack.router.on("organization.created", record_effect)
        await stack.start_consumer()
        for i in range(3):
            await stack.publish(org_event(cfg, f"r{i}"))

        async def applied() -> bool:
            return await stack.effects() == 3

        await wait_until(applied, timeout=15)
    finally:
        await close_stack(stack)


async def test_without_the_ca_the_server_is_not_trusted(
    tls_server: NatsServer, unique: str
) -> None:
    """The server requires TLS; the system's CAs do not know the test CA."""
    connection = Connection(make_config(tls_server.url, unique))
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        await connection.start(timeout=20)


async def test_wrong_ca_fails_at_once_naming_the_certificate_problem(
    pki: Pki, tls_server: NatsServer, unique: str
) -> None:
    cfg = make_config(
        tls_server.url, unique, credentials=Credentials(tls_ca_file=str(pki.other_ca))
    )
    connection = Connection(cfg)
    started = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        await connection.start(timeout=20)
    # A wrong CA does not fix itself: no retrying until the start-up deadline.
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "certificate verify failed" in message
    assert str(pki.other_ca) in message and "tls_ca_file" in message
    assert tls_server.url in message
