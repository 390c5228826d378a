"""Send a served reply: as an SSE stream or a JSON message, broken on purpose when asked.

Without delays the whole stream goes out in one write; with `chunk_delay_ms` each
delta is its own write, so a client sees the text arrive piece by piece.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runner.mock.config import MockConfig
from runner.mock.encode import (
    UNKNOWN_EVENT,
    encode_message,
    encode_stream,
    error_body,
    error_object,
    sse,
)
from runner.mock.replies import Reply


@dataclass(slots=True)
class Answer:
    """A reply to send, and what of it actually reached the wire (filled in while sending)."""

    request_id: str
    model: str
    reply: Reply
    usage: dict[str, Any]  # the final usage, output tokens included
    fault: str | None = None  # a stream fault kind
    status: int = 200
    text: str = ""
    output_tokens: int = 0
    completed: bool = False
    # Called once what will be sent is known, before the last bytes go out, so a test
    # that reads the record right after its response sees the finished attempt.
    on_settled: Callable[[Answer], None] | None = None

    def settle(self) -> None:
        """Report what is about to be sent."""
        if self.on_settled is not None:
            self.on_settled(self)

    @property
    def message_id(self) -> str:
        """The message id, derived from the request id so logs line up."""
        return "msg_" + self.request_id.removeprefix("req_")


async def _write(response: web.StreamResponse, data: bytes, config: MockConfig) -> None:
    """Write `data`; with `fragment_bytes`, in pieces that split UTF-8 and lines across reads."""
    step = config.fragment_bytes
    if not step:
        await response.write(data)
        return
    for start in range(0, len(data), step):
        await response.write(data[start : start + step])
        await asyncio.sleep(0.001)  # a separate TCP segment, so a separate read for the client


async def send_stream(
    request: web.Request, headers: Mapping[str, str], config: MockConfig, answer: Answer
) -> web.StreamResponse:
    """Stream the reply as server-sent events, applying the answer's stream fault if any."""
    reply, fault = answer.reply, answer.fault
    events = encode_stream(answer.message_id, answer.model, reply, answer.usage)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    count = len(events.deltas)
    if fault in ("error_event", "drop", "stall"):
        count = (count + 1) // 2  # "some deltas" before the failure
    body = [events.head]
    if fault == "unknown_event":
        body.append(UNKNOWN_EVENT)
    delay = config.chunk_delay_ms / 1000
    if delay:
        for i in range(count):
            if i:
                await _write(response, b"".join(body), config)
                body.clear()
                await asyncio.sleep(delay)
            body.append(events.deltas[i])
            answer.text += "".join(reply.chunks[i])
            answer.output_tokens += len(reply.chunks[i])
    else:
        body += events.deltas[:count]
        answer.text = "".join(token for chunk in reply.chunks[:count] for token in chunk)
        answer.output_tokens = sum(len(chunk) for chunk in reply.chunks[:count])
    if fault is None or fault in ("unknown_event", "no_stop"):
        answer.output_tokens = reply.output_tokens
        body += [events.block_stop, events.message_delta]
        if fault is None or fault == "unknown_event":
            body.append(events.message_stop)
            answer.completed = True
    elif fault == "error_event":
        error = error_object("overloaded_error", "Overloaded")
        body.append(sse("error", {"type": "error", "error": error}))
    answer.settle()
    await _write(response, b"".join(body), config)
    if fault == "drop":
        abort(request)
        return response
    if fault == "stall":
        await asyncio.sleep(config.stall_s)
    await response.write_eof()
    return response


async def send_message(
    request: web.Request, headers: Mapping[str, str], config: MockConfig, answer: Answer
) -> web.StreamResponse:
    """Answer with one JSON message; stream faults become their nearest non-stream form."""
    reply, fault = answer.reply, answer.fault
    if fault == "error_event":
        body = error_body("overloaded_error", "Overloaded", answer.request_id)
        answer.status = 529
        answer.settle()
        return web.Response(status=529, body=body, headers=headers, content_type="application/json")
    body = encode_message(answer.message_id, answer.model, reply, answer.usage)
    if fault not in ("drop", "stall"):
        answer.text, answer.output_tokens = reply.text, reply.output_tokens
        answer.completed = True
        answer.settle()
        return web.Response(body=body, headers=headers, content_type="application/json")
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    answer.settle()
    await response.prepare(request)
    if fault == "drop":
        await response.write(body[: len(body) // 2])
        abort(request)
        return response
    await asyncio.sleep(config.stall_s)
    abort(request)
    return response


def abort(request: web.Request) -> None:
    """Cut the TCP connection without a clean end, as a dying proxy would."""
    if request.transport is not None:
        request.transport.abort()
