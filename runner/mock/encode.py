"""Bytes on the wire: SSE events and JSON bodies, encoded once per answer.

Shapes follow https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://docs.anthropic.com/en/api/errors. JSON is compact and not ASCII-escaped, so
multi-byte characters reach the client as raw UTF-8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from runner.mock.replies import Reply

_DELTA_HEAD = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
)
CONTENT_BLOCK_START = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
    b"\n\n"
)
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
CONTENT_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
# An event type no client knows yet; the docs ask clients to ignore such events.
UNKNOWN_EVENT = (
    b"event: future_event\n"
    b'data: {"type":"future_event","detail":{"note":"clients must ignore unknown events"}}\n\n'
)


@lru_cache(maxsize=4096)
def _escaped(token: str) -> bytes:
    """A token as it appears inside a JSON string; escaping is per character, so it composes."""
    return json.dumps(token, ensure_ascii=False)[1:-1].encode()


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with its `event:` and `data:` lines."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def error_object(
    error_type: str, message: str, details: dict[str, str] | None = None
) -> dict[str, Any]:
    """The `error` member of an error body or error event."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details:
        error["details"] = details
    return error


def error_body(
    error_type: str, message: str, request_id: str, details: dict[str, str] | None = None
) -> bytes:
    """The JSON body of an HTTP error answer."""
    return dumps(
        {
            "type": "error",
            "error": error_object(error_type, message, details),
            "request_id": request_id,
        }
    )


@dataclass(frozen=True, slots=True)
class EncodedStream:
    """A whole SSE answer, pre-encoded: the head, one chunk per delta, the tail events."""

    head: bytes  # message_start, content_block_start, ping
    deltas: tuple[bytes, ...]
    block_stop: bytes
    message_delta: bytes
    message_stop: bytes


def encode_stream(
    message_id: str, model: str, reply: Reply, usage: dict[str, Any]
) -> EncodedStream:
    """Encode every event of a streamed reply."""
    start_usage = dict(usage, output_tokens=1)  # provisional, as the real API sends
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    head = sse("message_start", {"type": "message_start", "message": message})
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
        "usage": {"output_tokens": reply.output_tokens},
    }
    return EncodedStream(
        head=head + CONTENT_BLOCK_START + PING,
        deltas=tuple(
            _DELTA_HEAD + b'"' + b"".join(map(_escaped, chunk)) + b'"}}\n\n'
            for chunk in reply.chunks
        ),
        block_stop=CONTENT_BLOCK_STOP,
        message_delta=sse("message_delta", delta),
        message_stop=MESSAGE_STOP,
    )


def message_object(
    message_id: str, model: str, reply: Reply, usage: dict[str, Any]
) -> dict[str, Any]:
    """A whole Message: a non-streamed reply, or a succeeded batch item's `message`."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": usage,
    }


def encode_message(message_id: str, model: str, reply: Reply, usage: dict[str, Any]) -> bytes:
    """The JSON body of a non-streamed reply."""
    return dumps(message_object(message_id, model, reply, usage))
