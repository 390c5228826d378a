"""A hostile Messages API for tests: each row's prompt picks how the server misbehaves.

`[[hostile:KIND]]` in the prompt chooses one of BEHAVIOURS for every attempt of that
row; `[[body:NAME]]` serves the bytes a test put in `HostileServer.bodies[NAME]` (the
fuzz test). Everything else gets a well-formed stream. The event shapes follow
https://docs.anthropic.com/en/docs/build-with-claude/streaming (text, thinking, tool
use, citations, refusals).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runner.mock.serve import serve_app_in_thread

_MARKER = re.compile(r"\[\[(hostile|body):([A-Za-z0-9_.-]+)\]\]")
USAGE = {"input_tokens": 12, "output_tokens": 7}


def sse(event: str | None, data: Any) -> bytes:
    """One event; `event=None` leaves out the `event:` line (data-only SSE)."""
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def message_start(model: str = "claude-sonnet-5-5") -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_hostile",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 0},
        },
    }


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[dict]:
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def shaped_events(shape: str, text: str = "hello world") -> list[dict[str, Any]]:
    """The events of a real answer of one shape, as the API streams them."""
    blocks: list[dict[str, Any]] = []
    stop_reason = "end_turn"
    if shape == "thinking":
        blocks += _block(
            0,
            {"type": "thinking", "thinking": "", "signature": ""},
            [
                {"type": "thinking_delta", "thinking": "Let me think."},
                {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
            ],
        )
    if shape == "tool_use":
        blocks += _block(
            1,
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
            [
                {"type": "input_json_delta", "partial_json": '{"location": "Par'},
                {"type": "input_json_delta", "partial_json": 'is"}'},
            ],
        )
        stop_reason = "tool_use"
    text_deltas: list[dict[str, Any]] = [{"type": "text_delta", "text": text}]
    if shape == "citations":
        text_deltas.append(
            {
                "type": "citations_delta",
                "citation": {
                    "type": "char_location",
                    "cited_text": "The grass is green.",
                    "document_index": 0,
                    "document_title": "Example",
                    "start_char_index": 0,
                    "end_char_index": 20,
                },
            }
        )
    if shape == "refusal":
        stop_reason = "refusal"
    blocks = _block(2, {"type": "text", "text": ""}, text_deltas) + blocks
    return [
        message_start(),
        {"type": "ping"},
        *blocks,
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]


def encode(events: list[dict[str, Any]], named: bool = True) -> bytes:
    """An event stream of `events`, each named by its type unless `named` is False."""
    return b"".join(sse(str(e.get("type")) if named else None, e) for e in events)


def _stream(body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=body,
        headers={"request-id": "req_hostile", **(headers or {})},
        content_type="text/event-stream",
    )


def _error(status: int, error_type: str, message: str, **headers: str) -> web.Response:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _with(events: list[dict[str, Any]], index: int, **fields: Any) -> bytes:
    events = [dict(e) for e in events]
    events[index].update(fields)
    return encode(events)


Behaviour = Callable[["Hit"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Hit:
    """One request as a behaviour sees it."""

    request: web.Request
    key: str
    model: str


async def _ping_forever(hit: Hit) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(hit.request)
    await response.write(sse("message_start", message_start()))
    for _ in range(3000):  # bounded: 5 minutes at most
        await asyncio.sleep(0.1)
        await response.write(sse("ping", {"type": "ping"}))
    return response


async def _huge_answer(hit: Hit) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(hit.request)
    await response.write(sse("message_start", message_start()))
    chunk = sse("ping", {"type": "ping", "pad": "x" * 60_000})
    for _ in range(200):  # 12 MB at most
        await response.write(chunk)
    return response


def _fixed(make: Callable[[Hit], web.StreamResponse]) -> Behaviour:
    async def behave(hit: Hit) -> web.StreamResponse:
        return make(hit)

    return behave


_OK = shaped_events("text")
BEHAVIOURS: dict[str, Behaviour] = {
    "ok": _fixed(lambda h: _stream(encode(_OK))),
    "data_only": _fixed(lambda h: _stream(encode(_OK, named=False))),
    # A proxy that compresses the event stream although nobody asked for it.
    "gzipped": _fixed(lambda h: _stream(gzip.compress(encode(_OK)), {"Content-Encoding": "gzip"})),
    "json_message": _fixed(
        lambda h: web.json_response(
            {
                "id": "msg_json",
                "type": "message",
                "role": "assistant",
                "model": h.model,
                "content": [{"type": "text", "text": "whole answer"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": USAGE,
            },
            headers={"request-id": "req_json"},
        )
    ),
    "null_delta": _fixed(lambda h: _stream(_with(_OK, 3, delta=None))),
    "null_message": _fixed(lambda h: _stream(_with(_OK, 0, message=None))),
    "data_null": _fixed(lambda h: _stream(b"event: message_start\ndata: null\n\n")),
    "text_not_str": _fixed(
        lambda h: _stream(_with(_OK, 3, delta={"type": "text_delta", "text": 5}))
    ),
    "usage_wrong": _fixed(lambda h: _stream(_with(_OK, 5, usage="lots"))),
    "invalid_json": _fixed(lambda h: _stream(b"event: message_start\ndata: {nope\n\n")),
    "invalid_utf8": _fixed(lambda h: _stream(b'event: message_start\ndata: {"a": "\xff\xfe"}\n\n')),
    "binary": _fixed(
        lambda h: web.Response(body=os.urandom(4096), content_type="application/octet-stream")
    ),
    "html_200": _fixed(lambda h: web.Response(text="<html>hi</html>", content_type="text/html")),
    "huge_event": _fixed(
        lambda h: _stream(encode([message_start()]) + b"data: " + b"x" * 3_000_000 + b"\n\n")
    ),
    "huge_answer": _huge_answer,
    "ping_forever": _ping_forever,
    "echo_json": _fixed(
        lambda h: _error(400, "invalid_request_error", f"bad key {h.key}", **{"request-id": h.key})
    ),
    "echo_html": _fixed(
        lambda h: web.Response(
            status=502, text=f"<html>key {h.key}</html>", content_type="text/html"
        )
    ),
    "echo_event": _fixed(
        lambda h: _stream(
            encode([message_start()])
            + sse("error", {"type": "error", "error": {"type": "api_error", "message": h.key}})
        )
    ),
    "echo_text": _fixed(
        lambda h: _stream(
            encode(shaped_events("text", text=f"your key is {h.key}")),
            {"request-id": f"req_{h.key}"},
        )
    ),
    "echo_401": _fixed(lambda h: _error(401, "authentication_error", f"invalid x-api-key {h.key}")),
    "model_404": _fixed(lambda h: _error(404, "not_found_error", f"model: {h.model}")),
    "other_404": _fixed(
        lambda h: _error(404, "not_found_error", "The requested resource could not be found.")
    ),
    "gateway_limits": _fixed(
        lambda h: _stream(
            encode(_OK),
            {
                "llm_provider-anthropic-ratelimit-requests-limit": "120",
                "llm_provider-anthropic-ratelimit-requests-remaining": "119",
            },
        )
    ),
}


@dataclass
class HostileServer:
    """A running hostile API: its URL, the bodies a test serves, and what it was asked."""

    base_url: str = ""
    bodies: dict[str, bytes] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # the marker of every request, in order


def _app(server: HostileServer) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        content = body["messages"][-1]["content"]
        prompt = content if isinstance(content, str) else json.dumps(content)
        match = _MARKER.search(prompt)
        kind, name = match.groups() if match else ("hostile", "ok")
        server.seen.append(f"{kind}:{name}")
        if kind == "body":
            return _stream(server.bodies[name])
        # Every credential the request carried, echoed wherever a behaviour echoes "the key".
        key = " ".join(
            filter(None, (request.headers.get(h) for h in ("x-api-key", "authorization")))
        )
        hit = Hit(request, key, body.get("model", ""))
        return await BEHAVIOURS[name](hit)

    async def count_tokens(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key", "")
        return _error(
            400, "invalid_request_error", f"cannot count for {key}", **{"request-id": key}
        )

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    return app


@contextmanager
def serve_hostile() -> Iterator[HostileServer]:
    """The hostile API on 127.0.0.1, in a background thread."""
    server = HostileServer()
    with serve_app_in_thread(_app(server)) as base_url:
        server.base_url = base_url
        yield server
