"""Run the mock API on a socket: in the foreground (the CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from runner.mock.config import MockConfig
from runner.mock.record import MockRecord
from runner.mock.server import create_app

# Handlers still running at shutdown (a stalled stream) are cancelled after this long.
SHUTDOWN_TIMEOUT_S = 0.25
# Connections waiting to be accepted: aiohttp's default of 128 drops the SYNs of a client
# opening hundreds at once, which then waits a second for its retry (the kernel caps it
# at net.core.somaxconn).
LISTEN_BACKLOG = 4096
# How long serve_in_thread waits for the server to bind, and then to stop.
THREAD_TIMEOUT_S = 10.0


async def start_server(
    config: MockConfig, record: MockRecord, host: str, port: int
) -> tuple[web.AppRunner, str]:
    """Bind the mock API and return its runner and base URL (port 0 picks a free port)."""
    return await start_app(create_app(config, record), host, port)


async def start_app(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Bind any aiohttp application (the mock, or a test's server) and return its base URL.

    With `tls` (a server context holding a certificate) it is served over HTTPS.
    """
    runner = web.AppRunner(
        app,
        # Stop a handler when its client goes away, so a stall ends with its client.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, ssl_context=tls)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    scheme = "http" if tls is None else "https"
    return runner, f"{scheme}://{bound_host}:{bound_port}"


async def stop_server(runner: web.AppRunner) -> None:
    """Close the socket, then cancel whatever is still running (stalled streams)."""
    await runner.cleanup()
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftover:
        task.cancel()
    await asyncio.gather(*leftover, return_exceptions=True)


@dataclass(frozen=True)
class MockServer:
    """A running mock API: where to reach it and what it served."""

    base_url: str
    record: MockRecord
    config: MockConfig


@contextmanager
def serve_in_thread(
    config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[MockServer]:
    """Run the mock API in a background thread with its own event loop until the block ends."""
    config = config or MockConfig()
    record = MockRecord()
    with serve_app_in_thread(create_app(config, record), host, port) as base_url:
        yield MockServer(base_url, record, config)


@contextmanager
def serve_app_in_thread(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """Serve `app` from a background thread with its own event loop; yields its base URL."""
    loop = asyncio.new_event_loop()
    started: dict[str, object] = {}
    ready = threading.Event()

    async def start() -> None:
        try:
            started["runner"], started["url"] = await start_app(app, host, port, tls)
        except Exception as exc:  # re-raised in the calling thread below
            started["error"] = exc
        finally:
            ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="runner-mock-api", daemon=True)
    thread.start()
    try:
        if not ready.wait(THREAD_TIMEOUT_S):
            raise TimeoutError("the mock API did not start in time")
        if "error" in started:
            raise started["error"]  # type: ignore[misc]
        yield str(started["url"])
    finally:
        runner = started.get("runner")
        if isinstance(runner, web.AppRunner):
            stopping = asyncio.run_coroutine_threadsafe(stop_server(runner), loop)
            stopping.result(THREAD_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_TIMEOUT_S)
        loop.close()
