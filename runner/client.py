"""One Messages API attempt over HTTP, and the one place transport errors become RunnerErrors.

Reading the answer is `reading.py`'s; this module sends, bounds the attempt (the
watchdog's idle and total timeouts, the caps on one event and on the whole answer)
and translates every failure, from httpx or from the answer's shape, into an ApiError.
After `message_stop` the body is still read to its end so httpcore keeps the
connection for the next request.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from runner import __version__
from runner.apikey import mask, mask_optional
from runner.errors import (
    ApiError,
    AttemptFacts,
    ConnectError,
    DeadlineError,
    DroppedError,
    EofWithoutStop,
    FatalApiError,
    HttpRetryableError,
    LocalFailureError,
    MalformedError,
    ModelNotFoundError,
    RejectedError,
    StalledError,
    TooLargeError,
    out_of_file_handles,
)
from runner.models import Outcome, Request
from runner.reading import AnswerReader, BadAnswer, Completion, error_body
from runner.sse import EventNotText, EventTooLarge, SseDecoder
from runner.transport import ApiClient, Bounds
from runner.watchdog import Watch

__all__ = ["Completion", "api_headers", "count_tokens", "parse_retry_after", "stream_message"]

ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403})
SPEND_CAP_CODE = "enforced_spend_limit_reached"


def api_headers(
    api_key: str | None,
    *,
    version: str | None = None,
    beta: Sequence[str] = (),
    auth_token: str | None = None,
) -> httpx.Headers:
    """Headers every request carries, as the official SDKs send them.

    Like the SDKs, an API key goes in `x-api-key` and an auth token (ANTHROPIC_AUTH_TOKEN,
    what some proxies want) in `Authorization: Bearer`; both are sent when both are set.
    """
    headers = {
        "anthropic-version": version or ANTHROPIC_VERSION,
        "content-type": "application/json",
        "accept": "text/event-stream",
        "user-agent": f"runner/{__version__}",
    }
    if api_key:
        headers["x-api-key"] = api_key
    if auth_token:
        headers["authorization"] = f"Bearer {auth_token}"
    if beta:
        headers["anthropic-beta"] = ",".join(beta)
    return httpx.Headers(headers)


def job_headers(request: Any, api_key: str | None) -> httpx.Headers:
    """`api_headers` for a job's [request] (version, betas) and the environment's auth token."""
    return api_headers(
        api_key,
        version=request.anthropic_version,
        beta=request.anthropic_beta or (),
        auth_token=os.environ.get("ANTHROPIC_AUTH_TOKEN"),
    )


def credentials_missing(api_key: str | None) -> bool:
    """True when neither an API key nor ANTHROPIC_AUTH_TOKEN is there to authenticate with."""
    return not api_key and not os.environ.get("ANTHROPIC_AUTH_TOKEN")


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms`, else `retry-after` (seconds or a date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_error(response: httpx.Response, body: str, model: str | None = None) -> ApiError:
    status = response.status_code
    error_type, message, details = error_body(body)
    facts = AttemptFacts(
        outcome=Outcome.HTTP_ERROR,
        http_status=status,
        error_type=error_type or f"http_{status}",
        request_id=_request_id(response),
        retry_after_s=parse_retry_after(response.headers),
    )
    text = f"HTTP {status} {error_type or ''}: {message}".replace(" :", ":")
    if status in FATAL_STATUSES or (status == 429 and details.get("error_code") == SPEND_CAP_CODE):
        return FatalApiError(text, facts)
    # The API names an unknown model in the message ("model: claude-..."); a 404 that
    # does is about the whole job, not this row.
    if status == 404 and error_type == "not_found_error" and model and model in message:
        return ModelNotFoundError(text, facts)
    should_retry = response.headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    else:
        retryable = status in RETRYABLE_STATUSES or status >= 500
    return (HttpRetryableError if retryable else RejectedError)(text, facts)


def _request_id(response: httpx.Response) -> str | None:
    return mask_optional(response.headers.get("request-id"))


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
    try:
        async for chunk in response.aiter_bytes():
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
            response = await http.send(url, headers, request.body, watch.touch)
            async with aclosing(response):
                got_headers = True
                watch.touch()
                reading.request_id = _request_id(response)
                if on_response is not None:
                    on_response(response)
                if response.status_code != 200:
                    # An error page can be any size; its first 64 KiB say what it is.
                    body = await _read_capped(response, watch, 1 << 16, truncate=True)
                    raise _http_error(response, body.decode("utf-8", "replace"), request.model)
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
        raise _http_error(response, text)
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
