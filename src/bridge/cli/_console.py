"""``bridge console``: the operator console (:mod:`bridge.integrations.console`) served
on its own, with the app's environment like every ``bridge`` command.

    bridge console [--host 127.0.0.1] [--port 8400]     → http://127.0.0.1:8400/console/

It runs a *passive* bridge of the app (:func:`open_passive`): connected, but no
relay, no consumer, and no provisioning or verification — an operator needs the
console most when the topology is wrong, and it never changes the stream.  So it
reads what every process of the app does (outbox, inbox, the durable's lag, dead
letters, reconciliation runs) and replays and purges dead letters, but publishes no
outbox row and consumes nothing.  The charts' end-to-end lag comes from a consumer in
the same process, so here it stays empty (throughput and backlog are read from the
database and JetStream).

The operator token is ``BRIDGE_CONSOLE_TOKEN`` (without it the console is read-only).
In restrictive mode run it with the admin credentials
(``--env-file .devstack/<app>.admin.env``): an app user may not read dead letters.
The port is bound before anything else starts, so a port in use is one line; NATS
unreachable is one line too.  A missing stream does not stop it: the page says
what it cannot read (``bridge provision verify`` says why).  Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.cli._context import Context, Output
from bridge.cli._options import EXIT_OK, EXIT_USAGE
from bridge.config import BridgeConfig
from bridge.errors import ConfigError
from bridge.routing.dlq import DeadLetters
from bridge.transport.publisher import Publisher

if TYPE_CHECKING:
    from bridge.runtime import Bridge

DEFAULT_PORT = 8400
#: Seconds to reach NATS at start (as the other ``bridge`` commands).
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


def add_console_parser(sub: Any) -> None:
    """The ``console`` sub-command's arguments (``sub``: the parser's subparsers)."""
    parser = sub.add_parser("console", help="serve the operator console (web page)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on ({DEFAULT_PORT}; 0: any free port)")  # fmt: skip


def passive(config: BridgeConfig) -> BridgeConfig:
    """``config`` for a process that only looks and replays (module doc)."""
    return config.with_(enable_relay=False, enable_consumer=False, auto_provision=False)


async def open_passive(config: BridgeConfig, engine: AsyncEngine) -> Bridge:
    """A :class:`~bridge.runtime.Bridge` of the app that only connects (module doc).

    ``Bridge.start`` would provision or verify the topology; this connects and sets
    the two parts the console uses, the publisher and the dead letters, as
    ``start`` does.  ``Bridge.stop`` closes it like any bridge.
    """
    from bridge.runtime import Bridge

    config = passive(config)
    bridge = Bridge(config, engine=engine)
    try:
        await bridge.connection.start(timeout=START_TIMEOUT)
        js = bridge.connection.js
        bridge.publisher = Publisher(
            js, stream=config.stream_name, timeout=config.relay.publish_timeout
        )
        if config.use_dlq:
            bridge.dead_letters = DeadLetters(config, js, bridge.publisher)
    except BaseException:
        await bridge.stop(STOP_TIMEOUT)
        raise
    return bridge


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; ConfigError naming the address when it cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port "
            "or --host"
        ) from exc
    sock.setblocking(False)
    return sock


async def serve_console(
    config: BridgeConfig,
    engine: AsyncEngine,
    env: Mapping[str, str],
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the console of ``config``'s app on ``sock`` until ``stop`` is set
    (module doc); ``listening`` is told the console's URL once it serves."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from bridge.integrations.console.app import Console
    from bridge.integrations.console.options import options_from_env

    console = Console(options_from_env(env))
    bridge = await open_passive(config, engine)
    try:
        await console.start(bridge)
        app = FastAPI(title=f"{config.app_name} console", docs_url=None, redoc_url=None,
                      openapi_url=None)  # fmt: skip
        app.include_router(console.router)

        async def root() -> RedirectResponse:
            return RedirectResponse(f"{console.path}/", status_code=307)

        app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
        server = _Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="bridge-console-http")
        try:
            while not server.started:  # uvicorn says so by a flag only
                if task.done():
                    await task  # its error, if any
                    return
                await asyncio.sleep(0.02)
            host, port = sock.getsockname()[:2]
            if listening is not None:
                listening(f"http://{host}:{port}{console.path}/")
            await asyncio.wait({task, asyncio.create_task(stop.wait())},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            server.should_exit = True
            try:
                await asyncio.wait_for(task, STOP_TIMEOUT)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await console.stop()
    finally:
        await bridge.stop(STOP_TIMEOUT)


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its own signal capture: the command owns SIGINT/SIGTERM."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server


def _Server(config: Any) -> Any:
    return _server_class()(config)


async def cmd_console(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``bridge console`` (module doc)."""
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        out.err.write(
            f"bridge console: {exc.name} is missing: install the console extra "
            "(pip install 'jetstream-bridge[console]')\n"
        )
        return EXIT_USAGE
    try:
        from bridge.integrations.console.options import options_from_env

        token_set = options_from_env(ctx.env).actions_enabled
        sock = bind(args.host, args.port)
    except ConfigError as exc:
        out.err.write(f"bridge console: {exc}\n")
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread only
        for sig in stop_signals:
            loop.add_signal_handler(sig, stop.set)

    def show(url: str) -> None:
        mode = "" if token_set else " read-only (no BRIDGE_CONSOLE_TOKEN)"
        out.out.write(f"bridge console: {ctx.config.app_name}{mode} at {url} (Ctrl-C stops)\n")
        out.out.flush()

    try:
        await serve_console(ctx.config, ctx.db(), ctx.env, sock, stop, listening=show)
    finally:
        sock.close()
        for sig in stop_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return EXIT_OK
