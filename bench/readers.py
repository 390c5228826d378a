"""Read the same streams through different HTTP stacks, to price the read path alone.

Each stack sends every row of the input with `concurrency` workers and decodes the
events the way runner does (JSON only for the four that carry facts). No rate limiter,
no retries, no store: what is left is the HTTP and SSE layers, so the stacks can be
compared against each other and against bench/floor.py. Prints one JSON line of totals.

Usage: python bench/readers.py STACK INPUT.jsonl BASE_URL MODEL CONCURRENCY MAX_TOKENS
STACK: runner (runner.client.stream_message as it is), backend (runner's transport, over
runner/network.py, and a lean SSE decoder), sharded (the same transport on httpcore's
anyio backend), httpcore (one httpcore pool), aiohttp (aiohttp's client and the decoder).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

HEADERS = {
    "x-api-key": "bench-dummy-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "accept": "text/event-stream",
}


class SseDecoder:
    """Server-sent events from bytes in any pieces: (event, data) once each blank line ends one."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        """The events completed by `data`."""
        buffer = self._buffer + data
        if b"\r" in buffer:
            # CR LF and lone CR end lines too; a CR at the end may be half of a CR LF.
            keep = buffer.endswith(b"\r")
            buffer = buffer[:-1] if keep else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep:
                buffer += b"\r"
        events = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            event = "message"
            data_lines = []
            for line in buffer[start:end].split(b"\n"):
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data_lines.append(value)
                elif name == b"event":
                    event = value.decode()
            start = end + 2
            if data_lines:
                events.append((event, b"\n".join(data_lines).decode()))
        self._buffer = buffer[start:]
        return events


class Totals:
    """What every stream said, summed."""

    def __init__(self) -> None:
        self.ok = self.errors = self.input_tokens = self.output_tokens = 0


def _take(totals: Totals, event: str, data: str, usage: dict[str, int]) -> bool:
    """Fold one event into `usage` as runner does; True at message_stop."""
    if event == "content_block_delta":
        delta = json.loads(data)["delta"]
        if delta.get("type") == "text_delta":
            usage["chars"] = usage.get("chars", 0) + len(delta["text"])
    elif event == "message_start":
        usage["input_tokens"] = json.loads(data)["message"]["usage"]["input_tokens"]
    elif event == "message_delta":
        usage["output_tokens"] = json.loads(data)["usage"]["output_tokens"]
    elif event == "message_stop":
        totals.ok += 1
        totals.input_tokens += usage.get("input_tokens", 0)
        totals.output_tokens += usage.get("output_tokens", 0)
        return True
    return False


async def _decode(chunks: AsyncIterator[bytes], totals: Totals) -> None:
    decoder = SseDecoder()
    usage: dict[str, int] = {}
    async for chunk in chunks:
        for event, data in decoder.feed(chunk):
            _take(totals, event, data, usage)


def _body(line: str, model: str, max_tokens: int, stream: bool = True) -> bytes:
    """The request body; runner's own Request holds the params (without `stream`)."""
    prompt = json.loads(line)["prompt"]
    message = {"role": "user", "content": prompt}
    payload = {"model": model, "max_tokens": max_tokens, "messages": [message]}
    return json.dumps({**payload, "stream": True} if stream else payload).encode()


async def _workers(rows: Iterator[str], concurrency: int, send: Callable[[str], Awaitable[None]]):
    async def worker() -> None:
        for line in rows:
            await send(line)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_runner(rows: Iterator[str], base_url: str, model: str, conc: int, mt: int) -> Totals:
    """runner's own read path: ApiClient over the sharded httpx transport, httpx-sse."""
    import httpx

    from runner.client import stream_message
    from runner.models import Request
    from runner.provider import api_headers
    from runner.transport import Bounds, new_http_client

    totals = Totals()
    url = httpx.URL(base_url + "/v1/messages")
    headers = api_headers("bench-dummy-key")
    async with new_http_client(conc, Bounds()) as http:

        async def send(line: str) -> None:
            request = Request("", 0, model, _body(line, model, mt, stream=False), "", 0, mt)
            completion = await stream_message(http, url, headers, request)
            totals.ok += 1
            totals.input_tokens += completion.usage.input_tokens
            totals.output_tokens += completion.usage.output_tokens

        await _workers(rows, conc, send)
    return totals


async def run_sharded(rows: Iterator[str], base_url: str, model: str, conc: int, mt: int) -> Totals:
    """runner's sharded transport on httpcore's own (anyio) network backend, the lean decoder."""
    import httpcore

    return await _run_transport(
        rows,
        base_url,
        model,
        conc,
        mt,
        lambda: httpcore.AsyncConnectionPool(max_connections=4, max_keepalive_connections=4),
    )


async def run_backend(rows: Iterator[str], base_url: str, model: str, conc: int, mt: int) -> Totals:
    """runner's sharded transport as it is (runner/network.py's backend), the lean decoder."""
    return await _run_transport(rows, base_url, model, conc, mt, None)


async def _run_transport(
    rows: Iterator[str],
    base_url: str,
    model: str,
    conc: int,
    mt: int,
    new_pool: Callable[[], Any] | None,
) -> Totals:
    """runner's ApiClient and transport, its raw body stream read by the lean decoder."""
    import httpx

    from runner.transport import Bounds, new_http_client

    totals = Totals()
    url = httpx.URL(base_url + "/v1/messages")
    headers = httpx.Headers(HEADERS)
    async with new_http_client(conc, Bounds()) as http:
        if new_pool is not None:
            for shard in http._transport._shards:  # type: ignore[attr-defined]
                shard._pool = new_pool()

        async def send(line: str) -> None:
            response = await http.send(url, headers, _body(line, model, mt))
            try:
                await _decode(response.stream.__aiter__(), totals)
            finally:
                await response.stream.aclose()

        await _workers(rows, conc, send)
    return totals


async def run_httpcore(
    rows: Iterator[str], base_url: str, model: str, conc: int, mt: int
) -> Totals:
    """httpcore's connection pool used directly, with the lean decoder."""
    import httpcore

    totals = Totals()
    url = base_url + "/v1/messages"
    headers = list(HEADERS.items())
    async with httpcore.AsyncConnectionPool(max_connections=conc) as pool:

        async def send(line: str) -> None:
            async with pool.stream(
                "POST", url, headers=headers, content=_body(line, model, mt)
            ) as r:
                await _decode(r.aiter_stream(), totals)

        await _workers(rows, conc, send)
    return totals


async def run_aiohttp(rows: Iterator[str], base_url: str, model: str, conc: int, mt: int) -> Totals:
    """aiohttp's client, with the lean decoder over whatever each read returned."""
    import aiohttp

    totals = Totals()
    url = base_url + "/v1/messages"
    connector = aiohttp.TCPConnector(limit=conc)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(line: str) -> None:
            async with session.post(url, data=_body(line, model, mt), headers=HEADERS) as r:
                await _decode(r.content.iter_any(), totals)

        await _workers(rows, conc, send)
    return totals


STACKS: dict[str, Callable[..., Awaitable[Totals]]] = {
    "runner": run_runner,
    "sharded": run_sharded,
    "backend": run_backend,
    "httpcore": run_httpcore,
    "aiohttp": run_aiohttp,
}


async def main(stack: str, path: str, base_url: str, model: str, conc: int, mt: int) -> None:
    """Send every row through `stack` and print the totals."""
    with open(path, encoding="utf-8") as lines:
        totals: Any = await STACKS[stack](iter(lines), base_url, model, conc, mt)
    print(json.dumps(vars(totals) | {"errors": totals.errors}))


if __name__ == "__main__":
    stack, path, base_url, model, concurrency, max_tokens = sys.argv[1:7]
    asyncio.run(main(stack, path, base_url, model, int(concurrency), int(max_tokens)))
