"""HTTP connections to the API: httpx's transports and errors, without its client layers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from runner.job import (
    DEFAULT_ATTEMPT_TIMEOUT_S,
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    Job,
)
from runner.network import AsyncioBackend, asyncio_transport
from runner.watchdog import Watchdog


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long and how large one attempt may get before it is ended."""

    idle_timeout: float = 60.0
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT_S
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES

    @classmethod
    def of(cls, job: Job) -> Bounds:
        """The bounds a job sets in `[retry]` and `[limits]`."""
        return cls(
            idle_timeout=job.retry.idle_timeout,
            attempt_timeout=job.retry.attempt_timeout,
            max_event_bytes=job.limits.max_event_bytes,
            max_answer_bytes=job.limits.max_answer_bytes,
        )


class ApiClient:
    """Sends requests straight through an httpx transport; the caller closes each response.

    Not `httpx.AsyncClient`: its per-request layers (URL and header merging, cookie
    extraction, auth and redirect hooks) were about 13% of runner's CPU at concurrency
    64 (bench/README.md), and none of them does anything for one API endpoint that
    takes a key header. Cookies are therefore not kept, as no Anthropic endpoint sets any.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, bounds: Bounds) -> None:
        self._transport = transport
        self.bounds = bounds
        # The idle and total timeouts are the watchdog's, not httpx's read timeout: a
        # per-read timer would throw away answers waiting in the socket after a pause.
        self.watchdog = Watchdog(bounds.idle_timeout, bounds.attempt_timeout)
        timeout = httpx.Timeout(connect=30.0, read=None, write=60.0, pool=None)
        self._extensions = {"timeout": timeout.as_dict()}
        self._exit_stack = AsyncExitStack()

    async def send(
        self,
        url: httpx.URL,
        headers: httpx.Headers,
        body: bytes,
        on_sent: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """POST `body`; the response's headers have arrived, its body is still to be read.

        `on_sent` is called once the whole body is written: the server's time starts then.
        """
        request = httpx.Request(
            "POST", url, headers=headers, content=body, extensions=self._extensions
        )
        # Host and content-length are set from `content`; only the stream is swapped.
        request.stream = _Body(body, on_sent)
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def __aenter__(self) -> ApiClient:
        """Start the watchdog; leaving closes every connection."""
        self._exit_stack.push_async_callback(self._transport.aclose)
        watching = await self._exit_stack.enter_async_context(anyio.create_task_group())
        watching.start_soon(self.watchdog.run)
        self._exit_stack.callback(watching.cancel_scope.cancel)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._exit_stack.__aexit__(*exc_info)


def new_http_client(concurrency: int, bounds: Bounds) -> ApiClient:
    """One client for the run, with a connection pool that fits the concurrency."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        # httpx honours proxy variables (and NO_PROXY) only in its own client.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return ApiClient(_ThroughClient(httpx.AsyncClient(limits=limits)), bounds)
    return ApiClient(ShardedTransport(concurrency), bounds)


_PROXY_VARIABLES = tuple(
    case(name)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    for case in (str.upper, str.lower)
)


class _ThroughClient(httpx.AsyncBaseTransport):
    """An `httpx.AsyncClient` behind the transport interface, for its proxy routing."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the client, leaving the body to be streamed."""
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """Small httpcore pools side by side, each request sent through the least busy one.

    httpcore scans every pooled connection on every request (and polls each idle socket),
    which profiling showed to be the largest client cost at concurrency 64 and above
    (bench/README.md); pools of SHARD_SIZE connections keep that scan short. Their
    connections are runner.network's, not anyio's (cheaper reads on long streams).
    """

    SHARD_SIZE = 4

    def __init__(self, concurrency: int) -> None:
        count = max(1, -(-concurrency // self.SHARD_SIZE))
        size = self.SHARD_SIZE if count > 1 else max(1, concurrency)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # One TLS context for all: building one loads the CA bundle (~0.1 s of CPU each).
        tls = httpx.create_ssl_context()
        backend = AsyncioBackend()
        self._shards = [asyncio_transport(backend, tls, limits) for _ in range(count)]
        # Responses open per shard: with at most `concurrency` in flight one always has room.
        self._open = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the shard with the fewest open responses; free it when the body closes."""
        index = self._open.index(min(self._open))
        self._open[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._open[index] -= 1
            raise
        response.stream = _Releasing(response.stream, self._open, index)
        return response

    async def aclose(self) -> None:
        """Close every shard's connections."""
        for shard in self._shards:
            await shard.aclose()


class _Body(httpx.AsyncByteStream):
    """A request body that says when it has been written (httpcore asks for more then)."""

    __slots__ = ("_body", "_on_sent")

    def __init__(self, body: bytes, on_sent: Callable[[], None] | None) -> None:
        self._body = body
        self._on_sent = on_sent

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body
        if self._on_sent is not None:
            self._on_sent()


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when closed."""

    __slots__ = ("_index", "_open", "_stream")

    def __init__(self, stream: Any, open_counts: list[int], index: int) -> None:
        self._stream = stream
        self._open: list[int] | None = open_counts
        self._index = index

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The shard's own stream, not a generator around it: one layer less per chunk.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        if self._open is not None:
            self._open[self._index] -= 1
            self._open = None
        await self._stream.aclose()
