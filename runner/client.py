"""One Messages API attempt over HTTP, and the one place transport errors become RunnerErrors.

Reading the answer is `reading.py`'s; this module sends, bounds the attempt (the
watchdog's idle and total timeouts, the caps on one event and on the whole answer)
and translates every failure, from httpx or from the answer's shape, into an ApiError.
After `message_stop` the body is still read to its end so httpcore keeps the
connection for the next request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import Any, cast

import httpx

from runner.apikey import mask
from runner.errors import (
    ApiError,
    AttemptFacts,
    ConnectError,
    DeadlineError,
    DroppedError,
    EofWithoutStop,
    LocalFailureError,
    MalformedError,
    RejectedError,
    StalledError,
    TooLargeError,
    out_of_file_handles,
)
from runner.models import Outcome, Request
from runner.provider import http_error, request_id, streaming
from runner.reading import AnswerReader, BadAnswer, Completion
from runner.sse import EventNotText, EventTooLarge, SseDecoder
from runner.transport import ApiClient, Bounds
from runner.watchdog import Watch

__all__ = ["Completion", "count_tokens", "stream_message"]


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").partition(";")[0].strip().lower()


async def _read_capped(
    response: httpx.Response, watch: Watch, limit: int, *, truncate: bool = False
) -> bytes:
    """The whole body; past `limit` bytes its start if `truncate`, else _AnswerTooLarge."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        watch.touch()
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            if truncate:
                break
            raise _AnswerTooLarge(f"the answer exceeds {limit} bytes")
    return b"".join(chunks)[: limit if truncate else None]


class _AnswerTooLarge(ValueError):
    """The whole answer grew past its cap."""


async def _read_events(
    response: httpx.Response, watch: Watch, reading: AnswerReader, bounds: Bounds
) -> None:
    """Read the event stream to its end; `reading.completed` says if it reached `message_stop`."""
    decoder = SseDecoder(bounds.max_event_bytes)
    size = 0
    # Without a content-encoding the body is read straight from the transport's stream
    # (httpx's errors included): aiter_bytes would add two generator layers per chunk.
    body = (
        response.aiter_bytes()
        if "content-encoding" in response.headers
        else cast(httpx.AsyncByteStream, response.stream)
    )
    try:
        async for chunk in body:
            watch.touch()
            size += len(chunk)
            if size > bounds.max_answer_bytes:
                raise _AnswerTooLarge(f"the answer exceeds {bounds.max_answer_bytes} bytes")
            for kind, data in decoder.feed(chunk):
                # After message_stop the rest of the body is still read: httpcore returns a
                # connection to its pool only once the response is complete, else it closes it.
                if reading.completed is None:
                    reading.on_event(kind, data)
        for kind, data in decoder.flush():
            if reading.completed is None:
                reading.on_event(kind, data)
    except (httpx.TransportError, ValueError):
        if reading.completed is None:
            raise


async def stream_message(
    http: ApiClient,
    url: httpx.URL,
    headers: httpx.Headers,
    request: Request,
    on_response: Callable[[httpx.Response], None] | None = None,
) -> Completion:
    """Send one request and read its answer to the end, or raise an ApiError."""
    reading = AnswerReader(time.perf_counter())
    got_headers = False
    with http.watchdog.watch() as watch:
        try:
            response = await http.send(url, headers, streaming(request.body), watch.touch)
            async with aclosing(response):
                got_headers = True
                watch.touch()
                reading.request_id = request_id(response)
                if on_response is not None:
                    on_response(response)
                if response.status_code != 200:
                    # An error page can be any size; its first 64 KiB say what it is.
                    body = await _read_capped(response, watch, 1 << 16, truncate=True)
                    raise http_error(response, body.decode("utf-8", "replace"), request.model)
                content_type = _content_type(response)
                if content_type == "application/json":
                    limit = http.bounds.max_answer_bytes
                    reading.on_message(await _read_capped(response, watch, limit))
                elif content_type in ("text/event-stream", ""):
                    await _read_events(response, watch, reading, http.bounds)
                else:
                    raise BadAnswer(f"the answer is {content_type[:100]}, not an event stream")
        except ApiError:
            raise
        except (_AnswerTooLarge, EventTooLarge) as exc:
            raise TooLargeError(
                f"response too large: {exc}", reading.facts(Outcome.TOO_LARGE, "response_too_large")
            ) from None
        except (BadAnswer, EventNotText) as exc:
            raise MalformedError(
                f"malformed answer: {mask(str(exc))[:300]}",
                reading.facts(Outcome.MALFORMED, "malformed"),
            ) from None
        except httpx.TimeoutException as exc:
            if not got_headers:
                raise ConnectError(
                    f"timed out before the response headers ({type(exc).__name__})",
                    AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
                ) from None
            raise StalledError(
                f"stream stalled ({type(exc).__name__})", reading.facts(Outcome.STALLED, "stalled")
            ) from None
        except httpx.TransportError as exc:
            if (local := out_of_file_handles(exc)) is not None:  # this machine, not the API
                raise LocalFailureError.from_os_error(local, "a new connection") from None
            cause = mask(f"{type(exc).__name__}: {exc}")[:300]
            if not got_headers:
                raise ConnectError(
                    f"connection failed: {cause}",
                    AttemptFacts(outcome=Outcome.CONNECT_ERROR, error_type="connect_error"),
                ) from None
            raise DroppedError(
                f"stream broken: {cause}", reading.facts(Outcome.DROPPED, "dropped")
            ) from None
    if reading.completed is not None:
        return reading.completed  # only the end of an already complete body was slow
    if watch.expired is not None:
        raise _expired(watch.expired, got_headers, reading, http.bounds)
    raise EofWithoutStop(
        "stream ended without message_stop",
        reading.facts(Outcome.EOF_WITHOUT_STOP, "eof_without_stop"),
    )


def _expired(why: str, got_headers: bool, reading: AnswerReader, bounds: Bounds) -> ApiError:
    """The watchdog ended the attempt: whether it was silent or too long."""
    if why == "deadline":
        return DeadlineError(
            f"attempt still running at its {bounds.attempt_timeout:g} s deadline",
            reading.facts(Outcome.TIMEOUT, "deadline"),
        )
    if not got_headers:
        return ConnectError(
            f"no response headers within the {bounds.idle_timeout:g} s idle timeout",
            AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
        )
    return StalledError(
        f"stream stalled: no data for the {bounds.idle_timeout:g} s idle timeout",
        reading.facts(Outcome.STALLED, "stalled"),
    )


async def count_tokens(
    http: ApiClient, url: httpx.URL, headers: httpx.Headers, body: dict[str, Any]
) -> int:
    """Input tokens of `body` by the free count_tokens endpoint, or an ApiError.

    https://docs.claude.com/en/api/messages-count-tokens: same headers as a message,
    a body of model/system/messages (no max_tokens), an answer `{"input_tokens": N}`.
    """
    json_headers = httpx.Headers(headers)
    json_headers["accept"] = "application/json"
    content = b""
    with http.watchdog.watch() as watch:
        try:
            response = await http.send(url, json_headers, json.dumps(body).encode(), watch.touch)
            async with aclosing(response):
                content = await _read_capped(response, watch, 1 << 16, truncate=True)
        except httpx.TimeoutException as exc:
            raise ConnectError(
                f"count_tokens: no usable answer ({type(exc).__name__})",
                AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
            ) from None
        except httpx.TransportError as exc:
            raise ConnectError(
                f"count_tokens: connection failed: {mask(f'{type(exc).__name__}: {exc}')}",
                AttemptFacts(outcome=Outcome.CONNECT_ERROR, error_type="connect_error"),
            ) from None
    text = content.decode("utf-8", "replace")
    if watch.expired is not None:
        raise ConnectError(
            "count_tokens: no answer within the idle timeout",
            AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
        )
    if response.status_code != 200:
        raise http_error(response, text)
    try:
        count = json.loads(text)["input_tokens"]
        if type(count) is not int:
            raise TypeError(count)
        return count
    except (ValueError, KeyError, TypeError):
        raise RejectedError(
            f"count_tokens answered without input_tokens: {mask(text[:200])}",
            AttemptFacts(outcome=Outcome.HTTP_ERROR, http_status=200, error_type="bad_answer"),
        ) from None
