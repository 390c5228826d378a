"""One streamed Messages API attempt, and the one place transport errors become RunnerErrors.

Wire rules (https://docs.anthropic.com/en/docs/build-with-claude/streaming):
`message_start` carries input and cache usage; `message_delta` carries the stop reason
and the *cumulative* output tokens (so the last one wins, never a sum); `ping` and
unknown event types are ignored; an `error` event can arrive after the 200.

The hot path was cut by profiling (bench/README.md): only the data of the four events that
carry facts is JSON-decoded, and the body is read to its end after `message_stop` so
httpcore keeps the connection for the next request.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from runner import __version__
from runner.errors import (
    ApiError,
    AttemptFacts,
    ConnectError,
    DroppedError,
    EofWithoutStop,
    FatalApiError,
    HttpRetryableError,
    MidstreamError,
    RejectedError,
    StalledError,
)
from runner.models import Outcome, Request, Usage
from runner.transport import ApiClient

ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403})
SPEND_CAP_CODE = "enforced_spend_limit_reached"


@dataclass(frozen=True, slots=True)
class Completion:
    """A stream that reached `message_stop`."""

    text: str
    stop_reason: str | None
    usage: Usage
    request_id: str | None
    ttft_ms: float | None
    latency_ms: float
    # message_start's message.model: the model that answered (a proxy may substitute).
    served_model: str | None = None


def api_headers(api_key: str) -> httpx.Headers:
    """Headers every request carries, as the official SDKs send them."""
    return httpx.Headers(
        {
            "x-api-key": api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
            "user-agent": f"runner/{__version__}",
        }
    )


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


class _UsageTracker:
    """Usage as the stream reports it: message_start first, message_delta fields override."""

    __slots__ = ("fields", "geo", "server_tools", "split")

    def __init__(self) -> None:
        self.fields: dict[str, int] = {}
        self.split: dict[str, int] = {}
        self.server_tools: dict[str, int] = {}
        self.geo: str | None = None

    def start(self, usage: dict[str, Any]) -> None:
        self.fields.update({k: v for k, v in usage.items() if isinstance(v, int)})
        self._priced_extras(usage)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            self.split = split

    def _priced_extras(self, usage: dict[str, Any]) -> None:
        # Billed per request (usage.server_tool_use) and by region (usage.inference_geo).
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            self.server_tools = {k: v for k, v in tools.items() if isinstance(v, int)}
        if isinstance(usage.get("inference_geo"), str):
            self.geo = usage["inference_geo"]

    def delta(self, usage: dict[str, Any]) -> None:
        # message_delta's counts are cumulative: replace, never add.
        self.fields.update({k: v for k, v in usage.items() if isinstance(v, int)})
        self._priced_extras(usage)

    def usage(self) -> Usage:
        f = self.fields
        creation = f.get("cache_creation_input_tokens", 0) or 0
        five = self.split.get("ephemeral_5m_input_tokens", 0) or 0
        hour = self.split.get("ephemeral_1h_input_tokens", 0) or 0
        if five + hour == 0:
            five = creation
        return Usage(
            input_tokens=f.get("input_tokens", 0) or 0,
            output_tokens=f.get("output_tokens", 0) or 0,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=f.get("cache_read_input_tokens", 0) or 0,
            cache_creation_5m=five,
            cache_creation_1h=hour,
            web_search_requests=self.server_tools.get("web_search_requests", 0),
            web_fetch_requests=self.server_tools.get("web_fetch_requests", 0),
            inference_geo=self.geo,
        )


def _error_body(text: str) -> tuple[str | None, str, dict[str, Any]]:
    """The (type, message, details) of an Anthropic error JSON, tolerating proxies' HTML."""
    try:
        error = json.loads(text).get("error") or {}
    except (ValueError, AttributeError):
        return None, text.strip()[:300] or "(empty body)", {}
    if not isinstance(error, dict):
        return None, str(error)[:300], {}
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    return error.get("type"), str(error.get("message", "")), details


def _http_error(response: httpx.Response, body: str) -> ApiError:
    status = response.status_code
    error_type, message, details = _error_body(body)
    facts = AttemptFacts(
        outcome=Outcome.HTTP_ERROR,
        http_status=status,
        error_type=error_type or f"http_{status}",
        request_id=response.headers.get("request-id"),
        retry_after_s=parse_retry_after(response.headers),
    )
    text = f"HTTP {status} {error_type or ''}: {message}".replace(" :", ":")
    if status in FATAL_STATUSES or (status == 429 and details.get("error_code") == SPEND_CAP_CODE):
        return FatalApiError(text, facts)
    should_retry = response.headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    else:
        retryable = status in RETRYABLE_STATUSES or status >= 500
    return (HttpRetryableError if retryable else RejectedError)(text, facts)


class _Reading:
    """What one attempt's stream has said so far, and what each event adds to it."""

    __slots__ = (
        "request_id",
        "served_model",
        "started",
        "stop_reason",
        "text",
        "tracker",
        "ttft_ms",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.text: list[str] = []
        self.tracker = _UsageTracker()
        self.request_id: str | None = None
        self.ttft_ms: float | None = None
        self.stop_reason: str | None = None
        self.served_model: str | None = None

    def on_event(self, kind: str, data: str) -> Completion | None:
        """Take in one event; the Completion once it is `message_stop`."""
        # Only the four events that carry facts are JSON-decoded.
        if kind == "content_block_delta":
            delta = json.loads(data).get("delta", {})
            if delta.get("type") == "text_delta":
                if self.ttft_ms is None:
                    self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
                self.text.append(delta["text"])
        elif kind == "message_start":
            message = json.loads(data).get("message", {})
            self.tracker.start(message.get("usage") or {})
            if isinstance(message.get("model"), str):
                self.served_model = message["model"]
        elif kind == "message_delta":
            fields = json.loads(data)
            self.tracker.delta(fields.get("usage") or {})
            self.stop_reason = (fields.get("delta") or {}).get("stop_reason", self.stop_reason)
        elif kind == "message_stop":
            return Completion(
                text="".join(self.text),
                stop_reason=self.stop_reason,
                usage=self.tracker.usage(),
                request_id=self.request_id,
                ttft_ms=self.ttft_ms,
                latency_ms=(time.perf_counter() - self.started) * 1000.0,
                served_model=self.served_model,
            )
        elif kind == "error":
            error_type, message, _ = _error_body(data)
            raise MidstreamError(
                f"error event mid-stream: {error_type}: {message}",
                self.facts(Outcome.MIDSTREAM_ERROR, error_type or "error_event"),
            )
        # ping, content_block_start/stop and unknown event types: nothing to do.
        return None

    def facts(self, outcome: Outcome, error_type: str | None = None) -> AttemptFacts:
        """What a failed attempt got before it failed, for the attempts table."""
        return AttemptFacts(
            outcome=outcome,
            http_status=200,
            error_type=error_type,
            request_id=self.request_id,
            usage=self.tracker.usage() if self.tracker.fields else None,
            output_text="".join(self.text),
            ttft_ms=self.ttft_ms,
        )


async def stream_message(
    http: ApiClient,
    url: httpx.URL,
    headers: httpx.Headers,
    request: Request,
    on_response: Callable[[httpx.Response], None] | None = None,
) -> Completion:
    """Send one request and read its stream to `message_stop`, or raise an ApiError."""
    started = time.perf_counter()
    reading = _Reading(started)
    got_headers = False
    completion: Completion | None = None
    try:
        response = await http.send(url, headers, request.body)
        async with aclosing(response):
            got_headers = True
            reading.request_id = response.headers.get("request-id")
            if on_response is not None:
                on_response(response)
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                raise _http_error(response, body)
            async for sse in EventSource(response).aiter_sse():
                # After message_stop the rest of the body is still read: httpcore returns a
                # connection to its pool only once the response is complete, else it closes it.
                if completion is None:
                    completion = reading.on_event(sse.event, sse.data)
    except ApiError:
        raise
    except httpx.TimeoutException as exc:
        if completion is not None:
            return completion  # only the end of an already complete body was slow
        if not got_headers:
            raise ConnectError(
                f"timed out before the response headers ({type(exc).__name__})",
                AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
            ) from None
        raise StalledError(
            "stream stalled: no data for the idle timeout",
            reading.facts(Outcome.STALLED, "stalled"),
        ) from None
    except (httpx.TransportError, SSEError) as exc:
        if completion is not None:
            return completion
        if not got_headers:
            raise ConnectError(
                f"connection failed: {type(exc).__name__}: {exc}",
                AttemptFacts(outcome=Outcome.CONNECT_ERROR, error_type="connect_error"),
            ) from None
        raise DroppedError(
            f"stream broken: {type(exc).__name__}: {exc}",
            reading.facts(Outcome.DROPPED, "dropped"),
        ) from None
    except json.JSONDecodeError as exc:
        raise DroppedError(
            f"stream sent invalid JSON: {exc}", reading.facts(Outcome.DROPPED, "invalid_event")
        ) from None
    if completion is not None:
        return completion
    raise EofWithoutStop(
        "stream ended without message_stop",
        reading.facts(Outcome.EOF_WITHOUT_STOP, "eof_without_stop"),
    )


async def count_tokens(
    http: ApiClient, url: httpx.URL, headers: httpx.Headers, body: dict[str, Any]
) -> int:
    """Input tokens of `body` by the free count_tokens endpoint, or an ApiError.

    https://docs.claude.com/en/api/messages-count-tokens: same headers as a message,
    a body of model/system/messages (no max_tokens), an answer `{"input_tokens": N}`.
    """
    try:
        json_headers = httpx.Headers(headers)
        json_headers["accept"] = "application/json"
        response = await http.send(url, json_headers, json.dumps(body).encode())
        async with aclosing(response):
            await response.aread()
    except httpx.TimeoutException as exc:
        raise ConnectError(
            f"count_tokens timed out ({type(exc).__name__})",
            AttemptFacts(outcome=Outcome.TIMEOUT, error_type="timeout"),
        ) from None
    except httpx.TransportError as exc:
        raise ConnectError(
            f"count_tokens: connection failed: {type(exc).__name__}: {exc}",
            AttemptFacts(outcome=Outcome.CONNECT_ERROR, error_type="connect_error"),
        ) from None
    if response.status_code != 200:
        raise _http_error(response, response.text)
    try:
        return int(response.json()["input_tokens"])
    except (ValueError, KeyError, TypeError):
        raise RejectedError(
            f"count_tokens answered without input_tokens: {response.text[:200]}",
            AttemptFacts(outcome=Outcome.HTTP_ERROR, http_status=200, error_type="bad_answer"),
        ) from None
