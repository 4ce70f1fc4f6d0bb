"""Why a NATS connection failed, in words an operator can act on.

:func:`failure_cause` sorts a client error into a few causes — the server refused the
TCP connection, the host name does not resolve, the server refused the credentials,
TLS failed, no answer in time, the server closed the connection — and
:func:`describe_failure` says what to check for each.  The connection
(:mod:`bridge.transport.connection`) logs each cause once per connect or outage and
puts the description in the error that ends a start-up.  Nothing here holds a secret:
the client's error texts name hosts and ports, never credentials.
"""

from __future__ import annotations

import socket
import ssl

from nats.errors import ConnectionClosedError, StaleConnectionError

#: cause → (short label, what to check)
CAUSES = {
    "refused": (
        "connection refused",
        "nothing listens there; check that nats-server runs and the host and port of "
        "NATS_URL / nats_urls",
    ),
    "dns": ("host not found", "the host name does not resolve; check NATS_URL / nats_urls"),
    "auth": (
        "authorization violation",
        "the server refused the credentials; check NATS_USER / NATS_PASSWORD, NATS_TOKEN, "
        "NATS_CREDS or the NKey seed",
    ),
    "tls": (
        "TLS failure",
        "check credentials.tls_ca_file / tls_cert_file / tls_key_file and whether the "
        "server expects TLS",
    ),
    "timeout": (
        "no answer",
        "nothing answered within connect_timeout; a firewall, a wrong port or an overloaded server",
    ),
    "closed": ("connection closed by the server", "the server closed the connection"),
}


def failure_cause(exc: BaseException) -> str:
    """The cause of a connection failure: a key of :data:`CAUSES`, else ``"error"``."""
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text:
        return "auth"
    if isinstance(exc, ssl.SSLError) or "tls" in text:
        return "tls"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(
        exc,
        ConnectionResetError
        | BrokenPipeError
        | EOFError
        | StaleConnectionError
        | ConnectionClosedError,
    ):
        return "closed"
    return "error"


def label(cause: str) -> str:
    """A few words for ``cause`` (``"connection refused"``)."""
    return CAUSES[cause][0] if cause in CAUSES else "connection error"


def describe_failure(cause: str, error: str | None) -> str:
    """``"<label>: <what to check> (<the client's error>)"``."""
    if cause not in CAUSES:
        return error or "unknown error"
    text = f"{label(cause)}: {CAUSES[cause][1]}"
    return f"{text} ({error})" if error else text
