"""What one attempt's answer says, from its events or from a whole Message; no I/O.

Wire rules (https://docs.anthropic.com/en/docs/build-with-claude/streaming):
`message_start` carries input and cache usage; `message_delta` carries the stop reason
and the *cumulative* output tokens (so the last one wins, never a sum); `ping` and
unknown event types are ignored; an `error` event can arrive after the 200. An event
without an `event:` line takes its type from the JSON's `type`, as data-only proxies
expect, and a complete Message JSON (https://docs.anthropic.com/en/api/messages) is
an answer too. Any other shape raises BadAnswer: a server's answer never crashes a run.

The hot path was cut by profiling (bench/README.md): only the data of the events that
carry facts is JSON-decoded when the events are named.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from runner.apikey import mask, mask_optional
from runner.content import AnswerContent, ContentCollector
from runner.errors import AttemptFacts, MidstreamError
from runner.models import Outcome, Usage


class BadAnswer(ValueError):
    """The answer is not shaped as the API's: invalid JSON, a null or mistyped field."""


@dataclass(frozen=True, slots=True)
class Completion:
    """An answer that reached its end (`message_stop`, or a whole Message)."""

    text: str
    stop_reason: str | None
    usage: Usage
    request_id: str | None
    ttft_ms: float | None
    latency_ms: float
    # message_start's message.model: the model that answered (a proxy may substitute).
    served_model: str | None = None
    # Tool calls and thinking; the stop's details (a refusal's category) as JSON text.
    content: AnswerContent = field(default_factory=AnswerContent)
    stop_details: str | None = None
    thinking_tokens: int | None = None


def error_body(text: str) -> tuple[str | None, str, dict[str, Any]]:
    """The (type, message, details) of an Anthropic error JSON, tolerating proxies' HTML."""
    try:
        error = json.loads(text).get("error") or {}
    except (ValueError, AttributeError):
        return None, mask(text.strip()[:300]) or "(empty body)", {}
    if not isinstance(error, dict):
        return None, mask(str(error)[:300]), {}
    raw_details = error.get("details")
    details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    error_type = error.get("type")
    error_type = mask(error_type)[:100] if isinstance(error_type, str) else None
    return error_type, mask(str(error.get("message", ""))[:2000]), details


def _object(value: object, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise BadAnswer(f"{what} is {type(value).__name__}, not an object")


def _optional_object(value: object, what: str) -> dict[str, Any]:
    return {} if value is None else _object(value, what)


def _decode(data: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise BadAnswer(f"{what} is not JSON: {exc}") from None
    return _object(value, what)


def _optional_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadAnswer(f"{what} is {type(value).__name__}, not a string")


def _counts(usage: dict[str, Any]) -> dict[str, int]:
    """The token counts of a usage object; anything that is not a count is left out."""
    # `type(v) is int`, not isinstance: a bool is an int too.
    return {k: v for k, v in usage.items() if type(v) is int and v >= 0}


class _UsageTracker:
    """Usage as the stream reports it: message_start first, message_delta fields override."""

    __slots__ = ("fields", "geo", "server_tools", "split")

    def __init__(self) -> None:
        self.fields: dict[str, int] = {}
        self.split: dict[str, int] = {}
        self.server_tools: dict[str, int] = {}
        self.geo: str | None = None

    def start(self, usage: dict[str, Any]) -> None:
        self.fields.update(_counts(usage))
        self._priced_extras(usage)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            self.split = _counts(split)

    def delta(self, usage: dict[str, Any]) -> None:
        # message_delta's counts are cumulative: replace, never add.
        self.fields.update(_counts(usage))
        self._priced_extras(usage)

    def _priced_extras(self, usage: dict[str, Any]) -> None:
        # Billed per request (usage.server_tool_use) and by region (usage.inference_geo).
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            self.server_tools = _counts(tools)
        if isinstance(usage.get("inference_geo"), str):
            self.geo = mask(usage["inference_geo"][:100])

    def usage(self) -> Usage:
        f = self.fields
        creation = f.get("cache_creation_input_tokens", 0)
        five = self.split.get("ephemeral_5m_input_tokens", 0)
        hour = self.split.get("ephemeral_1h_input_tokens", 0)
        if five + hour == 0:
            five = creation
        return Usage(
            input_tokens=f.get("input_tokens", 0),
            output_tokens=f.get("output_tokens", 0),
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=f.get("cache_read_input_tokens", 0),
            cache_creation_5m=five,
            cache_creation_1h=hour,
            web_search_requests=self.server_tools.get("web_search_requests", 0),
            web_fetch_requests=self.server_tools.get("web_fetch_requests", 0),
            inference_geo=self.geo,
        )


# The events whose data carries facts; the others are not decoded when named.
_FACT_EVENTS = frozenset(
    {"content_block_start", "content_block_delta", "message_start", "message_delta", "error"}
)


class AnswerReader:
    """What one attempt's answer has said so far, and what each event adds to it."""

    __slots__ = (
        "completed",
        "content",
        "request_id",
        "served_model",
        "started",
        "stop_details",
        "stop_reason",
        "text",
        "tracker",
        "ttft_ms",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.completed: Completion | None = None  # set once the answer has ended
        self.served_model: str | None = None
        self.text: list[str] = []
        self.tracker = _UsageTracker()
        self.request_id: str | None = None
        self.ttft_ms: float | None = None
        self.stop_reason: str | None = None
        self.content = ContentCollector()
        self.stop_details: str | None = None

    def on_event(self, kind: str, data: str) -> Completion | None:
        """Take in one event; the Completion once it is `message_stop`."""
        if kind == "":
            fields = _decode(data, "an event")
            kind = _optional_str(fields.get("type"), "an event's type") or ""
        elif kind in _FACT_EVENTS:
            fields = _decode(data, f"a {kind} event")
        elif kind == "message_stop":
            return self.completion()
        else:
            return None  # ping, content_block_start/stop and unknown types: nothing to do
        if kind == "content_block_delta":
            delta = _object(fields.get("delta"), "content_block_delta's delta")
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise BadAnswer("a text_delta's text is not a string")
                if self.ttft_ms is None:
                    self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
                self.text.append(text)
            else:
                self.content.delta(fields.get("index"), delta)
        elif kind == "content_block_start":
            self.content.start(fields.get("index"), fields.get("content_block"))
        elif kind == "message_start":
            message = _object(fields.get("message"), "message_start's message")
            self.tracker.start(_optional_object(message.get("usage"), "message_start's usage"))
            self._served_by(message)
        elif kind == "message_delta":
            self.tracker.delta(_optional_object(fields.get("usage"), "message_delta's usage"))
            delta = _optional_object(fields.get("delta"), "message_delta's delta")
            if "stop_reason" in delta:
                self.stop_reason = _optional_str(delta["stop_reason"], "stop_reason")
            self._stopped_because(delta)
        elif kind == "message_stop":
            return self.completion()
        elif kind == "error":
            self._raise_error(data)
        return None

    def on_message(self, body: bytes) -> Completion:
        """Take in a whole Message JSON (a gateway answering the stream request at once)."""
        message = _decode(body, "the JSON answer")
        if message.get("type") == "error":
            self._raise_error(body.decode("utf-8", "replace"))
        return self.take_message(message)

    def take_message(self, message: dict[str, Any]) -> Completion:
        """Take in a whole Message already decoded (a succeeded batch item's `message`)."""
        content = message.get("content")
        if not isinstance(content, list):
            raise BadAnswer("the JSON answer has no content list")
        for index, block in enumerate(content):
            block = _object(block, "a content block")
            self.content.block(index, block)
            if block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise BadAnswer("a text block's text is not a string")
                self.text.append(text)
        self.tracker.start(_optional_object(message.get("usage"), "the answer's usage"))
        self._served_by(message)
        self.stop_reason = _optional_str(message.get("stop_reason"), "stop_reason")
        self._stopped_because(message)
        self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
        return self.completion()

    def completion(self) -> Completion:
        """The answer as it stands, complete; kept in `completed`."""
        self.completed = Completion(
            text=mask("".join(self.text)),
            stop_reason=mask_optional(self.stop_reason),
            usage=self.tracker.usage(),
            request_id=self.request_id,
            ttft_ms=self.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            served_model=self.served_model,
            content=self.content.content(),
            stop_details=self.stop_details,
            thinking_tokens=self.tracker.fields.get("thinking_tokens"),
        )
        return self.completed

    def _stopped_because(self, fields: dict[str, Any]) -> None:
        # stop_details: e.g. {"type": "refusal", "category": ..., "explanation": ...}.
        details = fields.get("stop_details")
        if isinstance(details, dict):
            self.stop_details = mask(json.dumps(details, ensure_ascii=False)[:2000])

    def _served_by(self, message: dict[str, Any]) -> None:
        model = message.get("model")
        if isinstance(model, str):
            self.served_model = mask(model[:200])

    def facts(self, outcome: Outcome, error_type: str | None = None) -> AttemptFacts:
        """What a failed attempt got before it failed, for the attempts table."""
        return AttemptFacts(
            outcome=outcome,
            http_status=200,
            error_type=error_type,
            request_id=self.request_id,
            usage=self.tracker.usage() if self.tracker.fields else None,
            output_text=mask("".join(self.text)),
            ttft_ms=self.ttft_ms,
        )

    def _raise_error(self, data: str) -> None:
        error_type, message, _ = error_body(data)
        raise MidstreamError(
            f"error event mid-stream: {error_type}: {message}",
            self.facts(Outcome.MIDSTREAM_ERROR, error_type or "error_event"),
        )
