"""What every ``bridge`` command works with: its output (a table or JSON) and its
lazily opened NATS connection and database engine (:class:`Context`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.config import BridgeConfig
from bridge.env import (
    database_url_from_env,
)
from bridge.routing.dlq import DeadLetters
from bridge.transport.connection import Connection
from bridge.transport.publisher import Publisher


@dataclass
class Output:
    out: TextIO
    err: TextIO
    json_mode: bool

    def emit(self, data: Any, table: Sequence[Sequence[Any]] | None = None) -> None:
        if self.json_mode:
            self.out.write(json.dumps(data, indent=2, default=str) + "\n")
        elif table is not None:
            self.out.write(render_table(table) + "\n")
        else:
            self.out.write(f"{data}\n")

    def progress(self, done: int, total: int, label: str = "") -> None:
        if not self.json_mode:
            bar = ""
            if label:
                filled = 20 * done // total if total else 20
                bar = f"{label} [{'#' * filled}{'.' * (20 - filled)}] "
            self.err.write(f"\r{bar}{done}/{total}")
            if done == total:
                self.err.write("\n")
            self.err.flush()


def render_table(rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns; the first row is the header."""
    if not rows:
        return "(nothing)"
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(text_rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in text_rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


class Context:
    """Lazily opened NATS connection and database engine for one command."""

    def __init__(self, config: BridgeConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = env
        self.engine: AsyncEngine | None = None
        self.connection: Connection | None = None

    def db(self) -> AsyncEngine:
        if self.engine is None:
            self.engine = create_async_engine(database_url_from_env(self.env), pool_size=2)
        return self.engine

    async def nats(self) -> Connection:
        if self.connection is None:
            self.connection = Connection(self.config, name=f"{self.config.app_name}-cli")
            await self.connection.start(timeout=5.0)
        return self.connection

    def denied_api_subject(self) -> str | None:
        """The ``$JS.API`` subject the server refused this command's connection, if any."""
        return self.connection.denied_api_subject() if self.connection is not None else None

    async def dead_letters(self) -> DeadLetters:
        conn = await self.nats()
        publisher = Publisher(conn.js, stream=self.config.stream_name)
        return DeadLetters(self.config, conn.js, publisher)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.stop(timeout=2.0)
        if self.engine is not None:
            await self.engine.dispose()


@asynccontextmanager
async def opened(config: BridgeConfig, env: Mapping[str, str]) -> AsyncIterator[Context]:
    ctx = Context(config, env)
    try:
        yield ctx
    finally:
        await ctx.close()
