"""NATS connection with credentials, endless reconnects and an observable state.

Contract:
- :meth:`Connection.start` connects, retrying with capped exponential backoff
  until it succeeds or ``timeout`` passes (then :class:`~bridge.errors.ConnectionError`
  naming the cause: refused, host not found, timeout, ...).  Two failures that do not
  fix themselves are not retried: a server certificate that fails TLS verification
  (wrong ``tls_ca_file``, or a certificate for another host; the error names the CA
  file) and credentials the server refuses (the error names the variables to check).
- Causes are told once, not per attempt (:mod:`bridge.transport._causes`): while
  connecting or reconnecting, the first failure of each cause is one WARNING line with
  ``cause`` and a hint; the repeats are DEBUG.  An outage is one ``nats disconnected;
  reconnecting`` and one ``nats reconnected`` (with ``outage_seconds``).
- Once connected, nats-py reconnects forever (``max_reconnect_attempts=-1``), so
  a NATS outage of any length does not leave the process dead.
- A connection that went dead silently (a partition: no FIN, no RST, nothing
  arrives) is noticed by the client's PINGs within
  ``ping_interval * (max_outstanding_pings + 1)`` and replaced like any other
  lost connection; until then ``state`` still says connected.
- :meth:`Connection.stop` drains (subscriptions finish what they hold, pending
  publishes flush) within ``timeout`` and then closes; the disconnect it causes is
  not an outage and logs nothing above DEBUG.
- ``state`` and ``last_error`` are readable at any time for health checks.
  Permission violations reported asynchronously by the server are kept in
  ``permission_errors`` so callers can turn a silent timeout into a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import deque
from enum import StrEnum
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from bridge.config import BridgeConfig, Credentials
from bridge.errors import ConnectionError
from bridge.transport._causes import describe_failure, failure_cause, label

log = logging.getLogger("bridge.connection")


#: A server "Permissions Violation" error as nats-py reports it (lower-cased).
_VIOLATION = re.compile(
    r'permissions violation for (publish|subscription) to "([^"]+)"(?: using queue "([^"]+)")?',
    re.IGNORECASE,
)


def parse_violation(text: str) -> tuple[str, str, str | None] | None:
    """``(operation, subject, queue)`` of a server "Permissions Violation" error.

    nats-py hands the text over lower-cased: the subject may differ in case.
    """
    match = _VIOLATION.search(text)
    if match is None:
        return None
    operation = "publish" if match.group(1).lower() == "publish" else "subscribe"
    return operation, match.group(2), match.group(3)


class ConnectionState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL so it can be logged."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def connect_options(credentials: Credentials) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for ``credentials`` (no I/O)."""
    options: dict[str, Any] = {}
    if credentials.user:
        options["user"] = credentials.user
        options["password"] = credentials.password
    if credentials.token:
        options["token"] = credentials.token
    if credentials.nkey_seed:
        options["nkeys_seed_str"] = credentials.nkey_seed
    if credentials.creds_file:
        options["user_credentials"] = credentials.creds_file
    if credentials.uses_tls:
        context = ssl.create_default_context(cafile=credentials.tls_ca_file)
        if credentials.tls_cert_file and credentials.tls_key_file:
            context.load_cert_chain(credentials.tls_cert_file, credentials.tls_key_file)
        options["tls"] = context
    if credentials.inbox_prefix:
        options["inbox_prefix"] = credentials.inbox_prefix.encode()
    return options


class Connection:
    """One NATS connection and its JetStream context, owned by a :class:`~bridge.runtime.Bridge`."""

    def __init__(self, config: BridgeConfig, *, name: str | None = None) -> None:
        self._config = config
        self._name = name or config.app_name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.state = ConnectionState.IDLE
        self.last_error: str | None = None
        self.permission_errors: deque[str] = deque(maxlen=50)
        self.reconnects = 0
        self._connected_at: float | None = None
        # while start() connects: the last error nats-py reported, and a failure
        # that ends the attempt — TLS verification or refused credentials (see
        # _connect_within)
        self._reported: str | None = None
        self._reported_cause: str | None = None
        self._untrusted: ssl.SSLCertVerificationError | None = None
        self._refused_credentials: Exception | None = None
        self._fatal: asyncio.Event | None = None
        # causes already told in this connect or outage (module doc: once, not per retry)
        self._told: set[str] = set()
        self._outage_started: float | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Connect, retrying with backoff until ``timeout`` seconds have passed."""
        if self._nc is not None and not self._nc.is_closed:
            return
        self.state = ConnectionState.CONNECTING
        self._stopping = False
        self._told.clear()
        deadline = time.monotonic() + timeout
        delay = self._config.reconnect_wait
        cause = "error"
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._nc = await self._connect_within(max(remaining, 0.1))
                break
            except ssl.SSLCertVerificationError as exc:  # a wrong CA does not fix itself
                self.state = ConnectionState.CLOSED
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise ConnectionError(self._untrusted_message(exc)) from exc
            except _RefusedCredentials as exc:  # nor do refused credentials
                self.state = ConnectionState.CLOSED
                raise ConnectionError(
                    f"NATS at {self._servers()} refused the connection: "
                    f"{describe_failure('auth', self.last_error)}"
                ) from exc
            except Exception as exc:
                if isinstance(exc, TimeoutError) and self._reported is not None:
                    # what nats-py saw, not the deadline
                    self.last_error, cause = self._reported, self._reported_cause or "error"
                else:
                    self.last_error = (
                        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    )
                    cause = failure_cause(exc)
                    self._tell("nats unreachable; retrying", cause, self.last_error)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.state = ConnectionState.CLOSED
                    raise ConnectionError(
                        f"could not connect to NATS at {self._servers()} within {timeout:g}s: "
                        f"{describe_failure(cause, self.last_error)}"
                    ) from exc
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, self._config.reconnect_wait_max)
        self._js = self._nc.jetstream()
        self.state = ConnectionState.CONNECTED
        self._connected_at = time.monotonic()
        url = self._nc.connected_url
        log.info("nats connected", extra={"server": redact_url(url.geturl()) if url else None})

    def _servers(self) -> str:
        return ", ".join(redact_url(u) for u in self._config.nats_urls)

    def _tell(self, message: str, cause: str, error: str | None) -> None:
        """Log a connection failure: WARNING the first time its cause is seen in this
        connect or outage, DEBUG after that (module doc)."""
        level = logging.DEBUG if cause in self._told else logging.WARNING
        self._told.add(cause)
        log.log(
            level,
            f"{message}: {label(cause)}",
            extra={
                "cause": cause,
                "servers": [redact_url(u) for u in self._config.nats_urls],
                "error": error,
                "hint": describe_failure(cause, None),
            },
        )

    async def _connect_within(self, timeout: float) -> Client:
        """Connect within ``timeout``; raise a TLS verification failure or refused
        credentials at once.

        nats-py retries the *initial* connect for ever when reconnects are unbounded
        (reporting each failure to the error callback), so the start-up deadline is
        enforced here, and a server certificate that fails verification or credentials
        the server refuses — reported through the callback — end the attempt instead of
        being retried.
        """
        self._reported, self._reported_cause = None, None
        self._untrusted, self._refused_credentials = None, None
        failed = asyncio.Event()
        self._fatal = failed
        connect = asyncio.ensure_future(self._connect())
        untrusted = asyncio.ensure_future(failed.wait())
        try:
            await asyncio.wait(
                {connect, untrusted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (connect, untrusted):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if connect.done() and not connect.cancelled() and connect.exception() is None:
            return connect.result()
        if self._untrusted is not None:
            raise self._untrusted
        if self._refused_credentials is not None:
            raise _RefusedCredentials() from self._refused_credentials
        if connect.done() and not connect.cancelled():
            raise connect.exception()  # type: ignore[misc]
        raise TimeoutError(f"no connection within {timeout:.1f}s")

    def _untrusted_message(self, exc: ssl.SSLCertVerificationError) -> str:
        servers = self._servers()
        ca = self._config.credentials.tls_ca_file
        hint = (
            f"credentials.tls_ca_file={ca!r} must be the CA that signed the server's certificate"
            if ca
            else "no credentials.tls_ca_file is set and the system's CAs do not trust it: "
            "set tls_ca_file to the CA that signed the server's certificate"
        )
        return (
            f"NATS server at {servers} failed TLS verification ({exc}); {hint}, and the "
            "certificate must name the host used in nats_urls"
        )

    async def _connect(self) -> Client:
        return await nats.connect(
            servers=list(self._config.nats_urls),
            name=self._name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._config.reconnect_wait,
            connect_timeout=self._config.connect_timeout,
            ping_interval=self._config.ping_interval,
            max_outstanding_pings=self._config.max_outstanding_pings,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            **{
                **connect_options(self._config.credentials),
                # the app's own reply inbox, the one its permissions grant
                "inbox_prefix": self._config.inbox_prefix.encode(),
            },
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Drain and close; never raises for an already-closed connection."""
        nc, self._nc = self._nc, None
        self._js = None
        self._stopping = True
        if nc is None or nc.is_closed:
            self.state = ConnectionState.CLOSED
            return
        try:
            await asyncio.wait_for(nc.drain(), timeout)
        except Exception as exc:  # drain failed or timed out: close hard, nothing to keep
            log.warning("nats drain failed; closing", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await nc.close()
        self.state = ConnectionState.CLOSED
        log.debug("nats connection closed")

    # -- accessors ------------------------------------------------------------------
    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise ConnectionError("not connected: call start() first")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise ConnectionError("not connected: call start() first")
        return self._js

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def snapshot(self) -> dict[str, Any]:
        """State for health endpoints; never includes credentials."""
        server = None
        if self._nc is not None and self._nc.connected_url is not None:
            server = redact_url(self._nc.connected_url.geturl())
        return {
            "state": str(self.state),
            "connected": self.is_connected,
            "server": server,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    def denied_api_subject(self) -> str | None:
        """The ``$JS.API`` subject of the first publish the server refused this connection
        (a "Permissions Violation"): the user may not use the JetStream management API.
        A slow or missing answer is no denial — only the server's verdict counts."""
        for text in self.permission_errors:
            parsed = parse_violation(text)
            if (
                parsed is not None
                and parsed[0] == "publish"
                and (parsed[1].lower().startswith("$js.api."))
            ):
                return parsed[1]
        return None

    # -- callbacks (nats-py calls these on its own tasks) ---------------------------
    async def _on_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.last_error = text
        cause = failure_cause(exc)
        if "permissions violation" in str(exc).lower():
            self.permission_errors.append(str(exc))
            log.error("nats permission violation", extra={"error": str(exc)})
            return
        if self.state == ConnectionState.CONNECTING:
            # start() decides and tells (one line per cause, or the error it raises)
            if cause != "closed" or self._reported is None:  # the reset after a refusal
                self._reported, self._reported_cause = text, cause
            if isinstance(exc, ssl.SSLCertVerificationError) and self._fatal is not None:
                self._untrusted = exc
                self._fatal.set()
            elif cause == "auth" and self._fatal is not None:
                self._refused_credentials = exc
                self._fatal.set()
            elif cause != "closed":
                self._tell("nats unreachable; retrying", cause, text)
            return
        if self._stopping or (cause == "closed" and self.state == ConnectionState.CONNECTED):
            # a stop, or the loss _on_disconnected is about to tell
            log.debug("nats error", extra={"cause": cause, "error": text})
        elif self.state == ConnectionState.RECONNECTING:
            self._tell("nats unreachable; still reconnecting", cause, text)
        else:
            log.warning("nats error", extra={"cause": cause, "error": text})

    async def _on_disconnected(self) -> None:
        if self._stopping or self.state == ConnectionState.CLOSED:
            log.debug("nats disconnected (stopping)")
            return
        self.state = ConnectionState.RECONNECTING
        self._told.clear()
        self._outage_started = time.monotonic()
        log.warning("nats disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.state = ConnectionState.CONNECTED
        started, self._outage_started = self._outage_started, None
        outage = round(time.monotonic() - started, 3) if started is not None else None
        log.info(
            "nats reconnected",
            extra={"reconnects": self.reconnects, "outage_seconds": outage},
        )

    async def _on_closed(self) -> None:
        self.state = ConnectionState.CLOSED


class _RefusedCredentials(Exception):
    """The server refused the credentials while start() connected (not retried)."""
