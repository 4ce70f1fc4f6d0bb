"""Commands of ``bridge`` that need the JetStream API, and a prompt error without it.

Dead letters (``bridge dlq ...``) are read and deleted through the JetStream API
(direct get, message delete, stream purge), and ``bridge provision`` creates,
changes and inspects streams and consumers: in restrictive mode only the
provisioner's admin user may do that (docs/OPERATIONS.md, "Permission sets").  An
app user asking anyway gets no answer — the server drops the request and reports
a "Permissions Violation" asynchronously — so the command used to wait for the
client's request timeout and end with ``nats: timeout``.

:func:`until_denied` runs such a command and ends it as soon as the server has
reported a denied publish to a ``$JS.API`` subject on this connection
(:attr:`bridge.transport.connection.Connection.permission_errors`), raising
:class:`~bridge.errors.AdminCredentialsError` whose one-line message names the
command, the NATS user and what to do.  :class:`DeniedFastApi` does the same per
request, for commands that read the API only optionally (``bridge status``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.config import BridgeConfig
from bridge.errors import AdminCredentialsError
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi

T = TypeVar("T")

#: ``bridge`` commands that only work with JetStream API (admin) permissions.
ADMIN_COMMANDS = frozenset({"dlq", "provision"})
#: Where the operator's documentation explains which credentials to use.
ADMIN_DOC = "docs/OPERATIONS.md#commands-that-need-admin-credentials"
#: How often a running command looks for an asynchronously reported violation.
VIOLATION_POLL = 0.02

#: The ``$JS.API`` subject the server denied so far, or ``None``
#: (:meth:`bridge.transport.connection.Connection.denied_api_subject`).
Denied = Callable[[], str | None]


def admin_message(command: str, config: BridgeConfig, subject: str) -> str:
    """One line: what needs admin credentials, who lacks them, what to do."""
    user = config.credentials.user
    who = f"NATS user {user!r}" if user else "the NATS credentials in use"
    return (
        f"{command} needs admin credentials: {who} may not use the JetStream API "
        f"(publish to {subject!r} denied); run it as the provisioner's admin user "
        f"(NATS_USER=... NATS_PASSWORD=... of the admin; make up MODE=restrictive writes "
        f".devstack/{config.app_name}.admin.env for --env-file); see {ADMIN_DOC}"
    )


async def until_denied(
    work: Awaitable[T], denied: Denied, *, command: str, config: BridgeConfig
) -> T:
    """Await ``work``; cancel it and raise :class:`AdminCredentialsError` as soon as
    ``denied()`` names a denied ``$JS.API`` publish (checked every
    :data:`VIOLATION_POLL` seconds while ``work`` runs, and once more if it fails,
    since the server's denial and the client's timeout race).  ``work`` that
    succeeds returns its result."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=VIOLATION_POLL)
            if done and not task.cancelled() and task.exception() is None:
                return task.result()
            subject = denied()
            if subject is not None:
                raise AdminCredentialsError(admin_message(command, config, subject))
            if done:
                return task.result()  # the command's own error
    finally:
        if not task.done():
            task.cancel()
            # The command's cancellation is collected; a cancellation of ours propagates.
            await asyncio.gather(task, return_exceptions=True)


class DeniedFastApi(JetStreamApi):
    """A :class:`JetStreamApi` whose requests end with :class:`AdminCredentialsError`
    as soon as the server denies them, instead of after the request timeout."""

    def __init__(
        self, connection: Connection, config: BridgeConfig, *, command: str, timeout: float
    ) -> None:
        super().__init__(connection.nc, timeout=timeout)
        self._connection = connection
        self._config = config
        self._command = command

    async def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await until_denied(
            super().request(subject, body),
            self._connection.denied_api_subject,
            command=self._command,
            config=self._config,
        )
