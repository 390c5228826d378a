"""The floor of client CPU per event: a bare asyncio reader of the same streams.

No HTTP library and no SSE decoder: one keep-alive connection per slot, a hand-written
request, the chunked body unframed and split on blank lines, and JSON decoded only for
the two events that carry usage. Whatever a real client spends above this is its own.
Prints one JSON line of totals, like bench/sdk_baseline.py, plus the events it saw.

Usage: python bench/floor.py INPUT.jsonl BASE_URL MODEL CONCURRENCY MAX_TOKENS
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit


class Totals:
    """What every stream said, summed."""

    def __init__(self) -> None:
        self.ok = self.errors = self.input_tokens = self.output_tokens = self.events = 0


async def _read_body(reader: asyncio.StreamReader, totals: Totals) -> None:
    """Unframe a chunked body, count its events and take the usage from the two that carry it."""
    raw = b""
    payload = b""
    output_tokens = 0
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        raw += data
        last = False
        while True:
            end = raw.find(b"\r\n")
            if end < 0:
                break
            size = int(raw[:end], 16)
            if len(raw) < end + size + 4:
                break
            payload += raw[end + 2 : end + 2 + size]
            raw = raw[end + size + 4 :]
            if size == 0:
                last = True
                break
        start = 0
        while (end := payload.find(b"\n\n", start)) >= 0:
            totals.events += 1
            if payload.startswith(b"event: message_", start):
                data_at = payload.index(b"\ndata: ", start) + 7
                fields = json.loads(payload[data_at:end])
                if fields["type"] == "message_start":
                    totals.input_tokens += fields["message"]["usage"]["input_tokens"]
                elif fields["type"] == "message_delta":
                    output_tokens = fields["usage"]["output_tokens"]
            start = end + 2
        payload = payload[start:]
        if last:
            totals.output_tokens += output_tokens
            return


async def _worker(
    rows: Iterator[str], host: str, port: int, head: bytes, model: str, max_tokens: int, t: Totals
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    for line in rows:
        body = json.dumps(
            {
                "model": model,
                "max_tokens": max_tokens,
                "stream": True,
                "messages": [{"role": "user", "content": json.loads(line)["prompt"]}],
            }
        ).encode()
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200") or b"chunked" not in status.lower():
            t.errors += 1
            raise SystemExit(f"floor: unexpected answer {status[:200]!r}")
        await _read_body(reader, t)
        t.ok += 1
    writer.close()


async def main(path: str, base_url: str, model: str, concurrency: int, max_tokens: int) -> None:
    """Send every row of `path` over `concurrency` connections and print the totals."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\nx-api-key: bench-dummy-key\r\n"
        "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        "accept: text/event-stream\r\n"
    ).encode()
    totals = Totals()
    with open(path, encoding="utf-8") as lines:
        rows = iter(lines)  # shared: each worker takes the next row when it is free
        await asyncio.gather(
            *(
                _worker(rows, host, port, head, model, max_tokens, totals)
                for _ in range(concurrency)
            )
        )
    print(json.dumps(vars(totals)))


if __name__ == "__main__":
    path, base_url, model, concurrency, max_tokens = sys.argv[1:6]
    asyncio.run(main(path, base_url, model, int(concurrency), int(max_tokens)))
