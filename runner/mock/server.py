"""The mock Messages API as an aiohttp application.

Routes: `POST /v1/messages`, `POST /v1/messages/count_tokens`, the Message Batches
endpoints (batch_routes.py), and for tests in another process `GET /_mock/stats` and
`POST /_mock/reset`. Every answer carries a
`request-id` header, and the rate-limit headers when limits are set.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from runner.mock.batches import BatchBook, MockBatch, batch_object, chunks
from runner.mock.cache import PromptCache
from runner.mock.config import MockConfig
from runner.mock.encode import dumps, error_body
from runner.mock.faults import HTTP_FAULTS, RESET, Fault, parse_markers, pick_fault
from runner.mock.params import check_model
from runner.mock.ratelimit import RateLimiter
from runner.mock.record import MockRecord, ServedAttempt
from runner.mock.replies import generate_reply
from runner.mock.respond import Answer, abort, send_message, send_stream
from runner.mock.wire import (
    ParsedRequest,
    WireError,
    check_api_headers,
    parse_count_tokens_request,
    parse_messages_request,
)


@dataclass
class MockState:
    """Everything one server remembers between requests."""

    config: MockConfig
    record: MockRecord
    cache: PromptCache = field(default_factory=PromptCache)
    seen: dict[str, int] = field(default_factory=dict)  # attempts so far, by request key
    # Messages requests being answered now, and the most at once, for the benchmarks.
    in_flight: int = 0
    peak_in_flight: int = 0
    limiter: RateLimiter = field(init=False)
    batches: BatchBook = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config)
        self.batches = BatchBook(self.config, self.record, self.cache, self.seen)

    def reset(self) -> None:
        """Forget the cache, the attempt counts, the buckets' levels and the record."""
        self.cache.clear()
        self.seen.clear()
        self.limiter.reset()
        self.record.clear()
        self.batches.clear()
        self.peak_in_flight = self.in_flight


STATE = web.AppKey("mock_state", MockState)


def create_app(
    config: MockConfig | None = None, record: MockRecord | None = None
) -> web.Application:
    """The mock API application; `record` collects what it serves."""
    config = config or MockConfig()
    # aiohttp refuses larger bodies itself; _read_body turns that into the API's 413.
    app = web.Application(client_max_size=config.max_request_bytes)
    app[STATE] = MockState(config, record if record is not None else MockRecord())
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_post("/v1/messages/batches", _create_batch)
    app.router.add_get("/v1/messages/batches", _list_batches)
    app.router.add_get("/v1/messages/batches/{batch_id}", _retrieve_batch)
    app.router.add_delete("/v1/messages/batches/{batch_id}", _delete_batch)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", _cancel_batch)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", _batch_results)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    # Last: any other path or method gets the API's JSON 404 rather than aiohttp's text one.
    app.router.add_route("*", "/{path:.*}", _not_found)
    return app


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    request_id = _new_request_id()
    try:
        parsed = await _parse(request, state, parse_messages_request)
        parse_markers(parsed.prompt)  # a malformed marker is the caller's mistake: 400
        if parsed.input_tokens > config.context_window:
            raise WireError(
                f"prompt is too long: {parsed.input_tokens} tokens > "
                f"{config.context_window} maximum"
            )
    except WireError as exc:
        return _error(state, request_id, exc.status, exc.error_type, exc.message)
    number = state.seen.get(parsed.key, 0) + 1
    state.seen[parsed.key] = number
    attempt = ServedAttempt(
        key=parsed.key,
        prompt=parsed.prompt,
        number=number,
        request_id=request_id,
        started_at=time.time(),
        stream=parsed.stream,
    )
    state.record.add(attempt)
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    answer: Answer | None = None
    try:
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        fault = pick_fault(parsed, number, config)
        if fault is not None and fault.kind == RESET:
            state.record.update(attempt, fault=RESET)
            abort(request)
            return web.Response()  # never sent: the connection is gone
        if fault is not None and fault.kind in HTTP_FAULTS:
            return _fault_response(state, request_id, fault, attempt)
        admitted = _admit(state, parsed, request_id)
        if isinstance(admitted, web.Response):
            state.record.update(attempt, status=429, error_type="rate_limit_error")
            return admitted
        answer = admitted
        answer.fault = fault.kind if fault is not None else None
        answer.on_settled = lambda a: _settled(state, attempt, a)
        headers = _headers(state, request_id)
        send = send_stream if parsed.stream else send_message
        return await send(request, headers, config, answer)
    finally:
        state.in_flight -= 1
        if answer is not None:
            state.limiter.charge_output(answer.output_tokens)
            _settled(state, attempt, answer)
        state.record.finish(attempt, time.time())


def _admit(state: MockState, parsed: ParsedRequest, request_id: str) -> Answer | web.Response:
    """Pass the rate limits and take the prompt cache; a 429 answer if over a limit."""
    usage = state.cache.peek(parsed)
    refusal = state.limiter.admit(usage.input_tokens + usage.cache_creation_input_tokens)
    if refusal is not None:
        return _error(
            state,
            request_id,
            429,
            "rate_limit_error",
            refusal.message,
            {"retry-after": str(refusal.retry_after)},
        )
    reply = generate_reply(parsed, state.config.reply_tokens, state.config.tokens_per_delta)
    usage = state.cache.use(parsed)
    model = state.config.serve_model or parsed.model
    return Answer(request_id, model, reply, usage.as_usage(reply.output_tokens))


def _settled(state: MockState, attempt: ServedAttempt, answer: Answer) -> None:
    reported = answer.usage
    if not answer.completed and answer.fault != "no_stop":  # no_stop did send message_delta
        # A broken stream only reported message_start's provisional usage; a cut JSON body none.
        reported = dict(answer.usage, output_tokens=1) if attempt.stream else {}
    state.record.update(
        attempt,
        status=answer.status,
        fault=answer.fault,
        error_type="overloaded_error" if answer.fault == "error_event" else None,
        text=answer.text,
        usage=reported,
        output_tokens_generated=answer.output_tokens,
        stop_reason=answer.reply.stop_reason if answer.completed else None,
        completed=answer.completed,
    )


def _fault_response(
    state: MockState, request_id: str, fault: Fault, attempt: ServedAttempt
) -> web.Response:
    status, error_type, message = HTTP_FAULTS[fault.kind]
    state.record.update(attempt, status=status, fault=fault.kind, error_type=error_type)
    return _error(state, request_id, status, error_type, message, fault.headers(), fault.details())


async def _count_tokens(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        parsed = await _parse(request, state, parse_count_tokens_request)
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    # The total a message with this prompt reports across input, cache creation and reads.
    return _json({"input_tokens": parsed.input_tokens})


async def _parse(
    request: web.Request, state: MockState, parse: Callable[[bytes, str], ParsedRequest]
) -> ParsedRequest:
    """Check the key and version headers, read the body within its limit, and parse it."""
    config = state.config
    check_api_headers(request.headers, config.api_key)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise WireError(
            f"Request exceeds the maximum allowed number of bytes ({config.max_request_bytes}).",
            413,
            "request_too_large",
        ) from exc
    parsed = parse(body, request.headers.get("anthropic-version", ""))
    check_model(parsed.model, config.models)  # after the body's shape, as the API checks
    return parsed


# ---- Message Batches (the book of batches is batches.py) ----------------------


async def _create_batch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        check_api_headers(request.headers, state.config.api_key)
        body = await _read_limited(request, state.config.max_batch_bytes)
        batch = state.batches.create(body)
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    if state.config.latency_ms:
        # The batch exists before its answer leaves: a client that dies meanwhile lost it.
        await asyncio.sleep(state.config.latency_ms / 1000)
    return _json(batch_object(batch, _origin(request)))


async def _retrieve_batch(request: web.Request) -> web.StreamResponse:
    return _on_batch(request, lambda book, batch_id: book.get(batch_id))


async def _cancel_batch(request: web.Request) -> web.StreamResponse:
    return _on_batch(request, lambda book, batch_id: book.cancel(batch_id))


async def _delete_batch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        check_api_headers(request.headers, state.config.api_key)
        batch_id = request.match_info["batch_id"]
        state.batches.delete(batch_id)
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    return _json({"id": batch_id, "type": "message_batch_deleted"})


async def _list_batches(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    query = request.query
    try:
        check_api_headers(request.headers, state.config.api_key)
        limit = int(query.get("limit", "20")) if query.get("limit", "20").isdigit() else 0
        if not 1 <= limit <= 1000:
            raise WireError("limit: Input should be an integer from 1 to 1000")
        batches, more = state.batches.page(limit, query.get("before_id"), query.get("after_id"))
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    origin = _origin(request)
    return _json(
        {
            "data": [batch_object(batch, origin) for batch in batches],
            "has_more": more,
            "first_id": batches[0].id if batches else None,
            "last_id": batches[-1].id if batches else None,
        }
    )


async def _batch_results(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        check_api_headers(request.headers, state.config.api_key)
        lines = state.batches.result_lines(request.match_info["batch_id"])
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    response = web.StreamResponse(headers={"request-id": _new_request_id()})
    response.content_type = "application/binary"
    await response.prepare(request)
    for chunk in chunks(lines):
        await response.write(chunk)
    await response.write_eof()
    return response


def _on_batch(
    request: web.Request, act: Callable[[BatchBook, str], MockBatch]
) -> web.StreamResponse:
    """Check the headers, apply `act` to the batch in the path, answer the batch object."""
    state = request.app[STATE]
    try:
        check_api_headers(request.headers, state.config.api_key)
        batch = act(state.batches, request.match_info["batch_id"])
    except WireError as exc:
        return _error(state, _new_request_id(), exc.status, exc.error_type, exc.message)
    return _json(batch_object(batch, _origin(request)))


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refused with the API's 413 past `limit` bytes (client_max_size is lower)."""
    too_large = WireError(
        f"Request exceeds the maximum allowed number of bytes ({limit}).", 413, "request_too_large"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _origin(request: web.Request) -> str:
    """scheme://host:port as the client reached us, for `results_url`."""
    return f"{request.scheme}://{request.host}"


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    in_flight = {"in_flight": state.in_flight, "peak_in_flight": state.peak_in_flight}
    return _json(state.record.totals() | in_flight)


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"ok": True})


async def _not_found(request: web.Request) -> web.Response:
    message = f"{request.method} {request.path} is not served by the mock API"
    return _error(request.app[STATE], _new_request_id(), 404, "not_found_error", message)


def _json(value: object) -> web.Response:
    headers = {"request-id": _new_request_id()}
    return web.Response(body=dumps(value), headers=headers, content_type="application/json")


def _headers(state: MockState, request_id: str) -> dict[str, str]:
    headers = {"request-id": request_id}
    if state.config.ratelimit_headers and state.limiter.enabled:
        headers.update(state.limiter.headers())
    return headers


def _error(
    state: MockState,
    request_id: str,
    status: int,
    error_type: str,
    message: str,
    extra_headers: dict[str, str] | None = None,
    details: dict[str, str] | None = None,
) -> web.Response:
    headers = _headers(state, request_id)
    if extra_headers:
        headers.update(extra_headers)
    return web.Response(
        status=status,
        body=error_body(error_type, message, request_id, details),
        headers=headers,
        content_type="application/json",
    )


def _new_request_id() -> str:
    return "req_mock_" + os.urandom(12).hex()
