"""Minimal JetStream management API client speaking raw JSON.

We build the JSON ourselves so every duration is converted to nanoseconds in one
place (:func:`bridge._support.durations.to_nanos`) and so a permission denial — which the
server reports only as an asynchronous error plus a request timeout — becomes a
:class:`~bridge.errors.PermissionDeniedError` naming the API subject.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bridge.errors import (
    MissingConsumerError,
    MissingStreamError,
    PermissionDeniedError,
    ProvisioningError,
)

STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


class JetStreamApi:
    """Request/reply on ``$JS.API.*`` with errors mapped to the bridge hierarchy."""

    def __init__(self, nc: Client, *, prefix: str = "$JS.API", timeout: float = 5.0) -> None:
        self._nc = nc
        self._prefix = prefix
        self._timeout = timeout

    async def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        full = f"{self._prefix}.{subject}"
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self._nc.request(full, payload, timeout=self._timeout)
        except (TimeoutError, NatsTimeoutError) as exc:
            raise PermissionDeniedError(
                f"no answer to {full} within {self._timeout}s: the NATS user is probably not "
                f"allowed to publish to {full} (or JetStream is not enabled)"
            ) from exc
        except NoRespondersError as exc:
            raise ProvisioningError(f"JetStream is not enabled on the server ({full})") from exc
        data: dict[str, Any] = json.loads(msg.data or b"{}")
        return data

    @staticmethod
    def error_of(reply: dict[str, Any]) -> tuple[int, str] | None:
        err = reply.get("error")
        if not err:
            return None
        return int(err.get("err_code", 0)), str(err.get("description", err))

    async def stream_info(self, name: str) -> dict[str, Any]:
        reply = await self.request(f"STREAM.INFO.{name}")
        err = self.error_of(reply)
        if err and err[0] == STREAM_NOT_FOUND:
            raise MissingStreamError(f"stream {name!r} does not exist")
        if err:
            raise ProvisioningError(f"stream info {name!r}: {err[1]}")
        return reply

    async def save_stream(self, config: dict[str, Any], *, create: bool) -> dict[str, Any]:
        verb = "CREATE" if create else "UPDATE"
        reply = await self.request(f"STREAM.{verb}.{config['name']}", config)
        err = self.error_of(reply)
        if err:
            raise ProvisioningError(f"stream {verb.lower()} {config['name']!r}: {err[1]}")
        return reply

    async def consumer_info(self, stream: str, name: str) -> dict[str, Any]:
        reply = await self.request(f"CONSUMER.INFO.{stream}.{name}")
        err = self.error_of(reply)
        if err and err[0] == CONSUMER_NOT_FOUND:
            raise MissingConsumerError(f"consumer {name!r} on stream {stream!r} does not exist")
        if err and err[0] == STREAM_NOT_FOUND:
            raise MissingStreamError(f"stream {stream!r} does not exist")
        if err:
            raise ProvisioningError(f"consumer info {stream}/{name}: {err[1]}")
        return reply

    async def save_consumer(
        self, stream: str, config: dict[str, Any], *, action: str
    ) -> dict[str, Any]:
        name = config["durable_name"]
        body = {"stream_name": stream, "config": config, "action": action}
        reply = await self.request(f"CONSUMER.CREATE.{stream}.{name}", body)
        err = self.error_of(reply)
        if err:
            raise ProvisioningError(f"consumer {action} {stream}/{name}: {err[1]}")
        return reply

    async def delete_consumer(self, stream: str, name: str) -> None:
        reply = await self.request(f"CONSUMER.DELETE.{stream}.{name}")
        err = self.error_of(reply)
        if err and err[0] != CONSUMER_NOT_FOUND:
            raise ProvisioningError(f"consumer delete {stream}/{name}: {err[1]}")

    async def delete_stream(self, name: str) -> None:
        reply = await self.request(f"STREAM.DELETE.{name}")
        err = self.error_of(reply)
        if err and err[0] != STREAM_NOT_FOUND:
            raise ProvisioningError(f"stream delete {name}: {err[1]}")
