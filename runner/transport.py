"""HTTP connections to the API: httpx's transports and errors, without its client layers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx


class ApiClient:
    """Sends requests straight through an httpx transport; the caller closes each response.

    Not `httpx.AsyncClient`: its per-request layers (URL and header merging, cookie
    extraction, auth and redirect hooks) were about 13% of runner's CPU at concurrency
    64 (bench/README.md), and none of them does anything for one API endpoint that
    takes a key header. Cookies are therefore not kept, as no Anthropic endpoint sets any.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, idle_timeout: float) -> None:
        self._transport = transport
        # httpx's read timeout applies to each read, so it is exactly an idle timeout
        # between bytes of the stream (pings count as activity), never a total one.
        timeout = httpx.Timeout(connect=30.0, read=idle_timeout, write=60.0, pool=None)
        self._extensions = {"timeout": timeout.as_dict()}

    async def send(self, url: httpx.URL, headers: httpx.Headers, body: bytes) -> httpx.Response:
        """POST `body`; the response's headers have arrived, its body is still to be read."""
        request = httpx.Request(
            "POST", url, headers=headers, content=body, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._transport.aclose()


def new_http_client(concurrency: int, idle_timeout: float) -> ApiClient:
    """One client for the run, with a connection pool that fits the concurrency."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        # httpx honours proxy variables (and NO_PROXY) only in its own client.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return ApiClient(_ThroughClient(httpx.AsyncClient(limits=limits)), idle_timeout)
    return ApiClient(ShardedTransport(concurrency), idle_timeout)


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
    (bench/README.md); pools of SHARD_SIZE connections keep that scan short.
    """

    SHARD_SIZE = 4

    def __init__(self, concurrency: int) -> None:
        count = max(1, -(-concurrency // self.SHARD_SIZE))
        size = self.SHARD_SIZE if count > 1 else max(1, concurrency)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # One TLS context for all: building one loads the CA bundle (~0.1 s of CPU each).
        tls = httpx.create_ssl_context()
        self._shards = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(count)]
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


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when closed."""

    __slots__ = ("_index", "_open", "_stream")

    def __init__(self, stream: Any, open_counts: list[int], index: int) -> None:
        self._stream = stream
        self._open = open_counts
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._open is not None:
            self._open[self._index] -= 1
            self._open = None
        await self._stream.aclose()
