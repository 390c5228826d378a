"""Bytes on the wire: SSE events and JSON bodies, encoded once per answer.

Shapes follow https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://docs.anthropic.com/en/api/errors. JSON is compact and not ASCII-escaped, so
multi-byte characters reach the client as raw UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from runner.mock.replies import Reply

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
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
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    start = sse("message_start", {"type": "message_start", "message": message})
    head = b""
    stop: dict[str, Any] = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    if reply.stop_details:
        stop["stop_details"] = dict(reply.stop_details)
    delta = {
        "type": "message_delta",
        "delta": stop,
        "usage": {"output_tokens": reply.output_tokens},
    }
    index = 0
    if reply.thinking:
        head += _thinking_events(reply, index)
        index += 1
    deltas: tuple[bytes, ...] = ()
    block_stop = b""
    if reply.chunks or reply.tool_use is None:  # a reply without a tool call has text
        head += _block_start(index, {"type": "text", "text": ""})
        delta_head = (
            b"event: content_block_delta\n"
            b'data: {"type":"content_block_delta","index":' + str(index).encode() + b","
            b'"delta":{"type":"text_delta","text":'
        )
        deltas = tuple(
            delta_head + b'"' + b"".join(map(_escaped, chunk)) + b'"}}\n\n'
            for chunk in reply.chunks
        )
        block_stop = _block_stop(index)
        index += 1
    if reply.tool_use is not None:
        tool_events = _tool_use_events(reply.tool_use, index)
        if head:
            block_stop += tool_events
        else:
            head, block_stop = tool_events, b""
    # The ping follows the first content_block_start, as in the docs' example stream.
    first_end = head.index(b"\n\n") + 2
    return EncodedStream(
        head=start + head[:first_end] + PING + head[first_end:],
        deltas=deltas,
        block_stop=block_stop,
        message_delta=sse("message_delta", delta),
        message_stop=MESSAGE_STOP,
    )


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def _thinking_events(reply: Reply, index: int) -> bytes:
    """A thinking block: its deltas, then its signature (signature_delta) just before the stop."""
    events = [_block_start(index, {"type": "thinking", "thinking": "", "signature": ""})]
    events += [
        _block_delta(index, {"type": "thinking_delta", "thinking": t}) for t in reply.thinking
    ]
    events.append(_block_delta(index, {"type": "signature_delta", "signature": reply.signature}))
    events.append(_block_stop(index))
    return b"".join(events)


def _tool_use_events(call: Mapping[str, Any], index: int) -> bytes:
    """A tool_use block: its input arrives as partial JSON (input_json_delta) in pieces."""
    start = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
    text = json.dumps(call["input"], ensure_ascii=False)
    pieces = [text[i : i + 12] for i in range(0, len(text), 12)]
    events = [_block_start(index, start)]
    events += [_block_delta(index, {"type": "input_json_delta", "partial_json": p}) for p in pieces]
    events.append(_block_stop(index))
    return b"".join(events)


def content_blocks(reply: Reply) -> list[dict[str, Any]]:
    """The content of the whole message, block by block."""
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append(
            {"type": "thinking", "thinking": "".join(reply.thinking), "signature": reply.signature}
        )
    if reply.chunks or reply.tool_use is None:
        blocks.append({"type": "text", "text": reply.text})
    if reply.tool_use is not None:
        blocks.append({"type": "tool_use", **reply.tool_use})
    return blocks


def message_object(
    message_id: str, model: str, reply: Reply, usage: dict[str, Any]
) -> dict[str, Any]:
    """A whole Message: a non-streamed reply, or a succeeded batch item's `message`."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content_blocks(reply),
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        **({"stop_details": dict(reply.stop_details)} if reply.stop_details else {}),
        "usage": usage,
    }


def encode_message(message_id: str, model: str, reply: Reply, usage: dict[str, Any]) -> bytes:
    """The JSON body of a non-streamed reply."""
    return dumps(message_object(message_id, model, reply, usage))
