"""Validate request bodies the way the Messages API does, and reduce them to text blocks.

Error messages follow the real API's `path: reason` form, e.g.
`max_tokens: Field required`, `foo: Extra inputs are not permitted`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from runner.mock import params
from runner.mock.errors import WireError
from runner.request_params import KNOWN_PARAMS

__all__ = ["ParsedRequest", "WireError", "parse_count_tokens_request", "parse_messages_request"]

# Tokens added for each message, standing in for the role markers a real tokenizer adds.
MESSAGE_OVERHEAD_TOKENS = 3
# The real API accepts at most four cache breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4

# The body's fields: the API's parameters as runner knows them (one list), and `stream`.
_MESSAGES_FIELDS = frozenset({*KNOWN_PARAMS, "stream"})
_COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
)
DEFAULT_VERSION = "2023-06-01"
# Content blocks by role, and the fields each may carry.
_BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "cache_control", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
_USER_BLOCKS = ("text", "image", "document", "tool_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The mock's price of an image or a PDF in input tokens: the real API counts about
# (width x height) / 750 for an image (at most ~1,600) and ~1,500-3,000 a PDF page.
IMAGE_TOKENS_MAX = 1_600
URL_IMAGE_TOKENS = 1_200
PDF_BYTES_PER_TOKEN = 20
_ROLES = ("user", "assistant")
_TTLS = ("5m", "1h")


@dataclass(frozen=True, slots=True)
class Block:
    """One text block of the prompt, in the order the model reads it."""

    role: str  # "system", "user" or "assistant"
    text: str
    tokens: int
    starts_message: bool
    cache_ttl: str | None  # "5m" or "1h" when the block carries cache_control


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated request: what the reply, the cache and the fault markers depend on."""

    model: str
    blocks: tuple[Block, ...]
    input_tokens: int
    prompt: str  # the text of the last user message
    key: str  # same model + system + messages + max_tokens -> same key
    reply_seed: bytes  # same model + system + messages -> same reply (cut at max_tokens)
    max_tokens: int = 0
    stream: bool = False
    stop_sequences: tuple[str, ...] = ()
    tools: Mapping[str, Any] = field(default_factory=dict)  # custom tool name -> input_schema
    tool_choice: Mapping[str, Any] | None = None
    thinking: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    answers_tool: bool = False  # the last user message returns a tool's result


def check_api_headers(headers: Mapping[str, str], api_key: str | None) -> None:
    """Refuse a request without a key (or with the wrong one) or without anthropic-version."""
    key = headers.get("x-api-key", "")
    if not key:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not key:
        raise WireError("x-api-key header is required", 401, "authentication_error")
    if api_key is not None and key != api_key:
        raise WireError("invalid x-api-key", 401, "authentication_error")
    if not headers.get("anthropic-version"):
        raise WireError("anthropic-version: header is required")


def text_tokens(text: str) -> int:
    """The mock's tokenizer: one token per four UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def parse_messages_request(body: bytes, version: str = DEFAULT_VERSION) -> ParsedRequest:
    """Validate a `POST /v1/messages` body sent under `anthropic-version: version`."""
    data = load_object(body)
    if version >= params.NO_SAMPLING_VERSION:
        params.check_sampling(data, version)  # before the generic check: its own message
    reject_extra(data, _MESSAGES_FIELDS)
    max_tokens = data.get("max_tokens")
    if "max_tokens" not in data:
        raise WireError("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise WireError("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise WireError("max_tokens: Input should be greater than or equal to 1")
    params.check_sampling(data, version)
    stops = data.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise WireError("stop_sequences: Input should be a list of non-empty strings")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict) or not set(metadata) <= {"user_id"}:
        raise WireError("metadata: Input should be an object with an optional user_id")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise WireError("stream: Input should be a valid boolean")
    params.check_service_tier(data)
    return _parse_prompt(data, max_tokens, stream, tuple(stops))


def parse_count_tokens_request(body: bytes, version: str = DEFAULT_VERSION) -> ParsedRequest:
    """Validate a `POST /v1/messages/count_tokens` body (no max_tokens, no sampling)."""
    data = load_object(body)
    reject_extra(data, _COUNT_TOKENS_FIELDS)
    return _parse_prompt(data, 0, False, ())


def _parse_prompt(
    data: dict[str, Any], max_tokens: int, stream: bool, stops: tuple[str, ...]
) -> ParsedRequest:
    model = data.get("model")
    if "model" not in data:
        raise WireError("model: Field required")
    if not isinstance(model, str) or not model:
        raise WireError("model: Input should be a non-empty string")
    if "messages" not in data:
        raise WireError("messages: Field required")
    tools = params.parse_tools(data)
    thinking = params.parse_thinking(data, max_tokens)
    params.check_thinking_compatible(data, thinking)
    output_schema = params.parse_output_schema(data)
    blocks: list[Block] = []
    system = data.get("system")
    if system is not None:
        blocks.extend(_content_blocks(system, "system", "system", first_overhead=0))
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise WireError("messages: at least one message is required")
    prompt = ""
    answers_tool = False
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise WireError(f"{path}: Input should be a valid dictionary")
        extra = set(message) - {"role", "content"}
        if extra:
            raise WireError(f"{path}.{sorted(extra)[0]}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in _ROLES:
            raise WireError(f"{path}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise WireError(f"{path}.content: Field required")
        content = _content_blocks(
            message["content"], role, f"{path}.content", first_overhead=MESSAGE_OVERHEAD_TOKENS
        )
        is_final_assistant = i == len(messages) - 1 and role == "assistant"
        if not any(b.text or b.tokens for b in content) and not is_final_assistant:
            raise WireError(
                f"{path}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        if role == "user":
            prompt = "".join(b.text for b in content)
            answers_tool = _has_tool_result(message["content"])
        blocks.extend(content)
    params.check_prefill(model, messages)
    breakpoints = sum(1 for b in blocks if b.cache_ttl)
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        raise WireError(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )
    prompt_fields = {"model": model, "system": system, "messages": messages}
    for name in ("tools", "tool_choice", "thinking", "output_config", "output_format"):
        if data.get(name) is not None:
            prompt_fields[name] = data[name]
    reply_seed = hashlib.sha256(_canonical(prompt_fields)).digest()
    key = hashlib.sha256(reply_seed + str(max_tokens).encode()).hexdigest()
    tool_tokens = text_tokens(_canonical(data["tools"]).decode()) if data.get("tools") else 0
    return ParsedRequest(
        model=model,
        blocks=tuple(blocks),
        input_tokens=sum(b.tokens for b in blocks) + tool_tokens,
        prompt=prompt,
        key=key,
        reply_seed=reply_seed,
        max_tokens=max_tokens,
        stream=stream,
        stop_sequences=stops,
        tools=tools,
        tool_choice=data.get("tool_choice"),
        thinking=thinking,
        output_schema=output_schema,
        answers_tool=answers_tool,
    )


def _content_blocks(content: Any, role: str, path: str, first_overhead: int) -> list[Block]:
    """A string or a list of blocks, as the API accepts for `system` and `content`."""
    if isinstance(content, str):
        return [Block(role, content, text_tokens(content) + first_overhead, True, None)]
    if not isinstance(content, list) or (role == "user" and not content):
        raise WireError(f"{path}: Input should be a valid string or a non-empty list of blocks")
    allowed = {"user": _USER_BLOCKS, "assistant": _ASSISTANT_BLOCKS}.get(role, ("text",))
    blocks = []
    for j, raw in enumerate(content):
        where = f"{path}.{j}"
        if not isinstance(raw, dict):
            raise WireError(f"{where}: Input should be a valid dictionary")
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in allowed:
            tags = ", ".join(f"'{tag}'" for tag in allowed)
            raise WireError(
                f"{where}: Input tag {kind!r} found using 'type' does not match any "
                f"of the expected tags: {tags}"
            )
        extra = set(raw) - _BLOCK_FIELDS[kind]
        if extra:
            raise WireError(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
        text, tokens = _block_content(kind, raw, where)
        ttl = _cache_ttl(raw.get("cache_control"), f"{where}.cache_control")
        overhead = first_overhead if j == 0 else 0
        blocks.append(Block(role, text, tokens + overhead, j == 0, ttl))
    return blocks


def _block_content(kind: str, raw: dict[str, Any], where: str) -> tuple[str, int]:
    """The text a block shows the model (for the prompt) and the input tokens it costs."""
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str) or not text:
            raise WireError(f"{where}.text: text content blocks must be non-empty")
        return text, text_tokens(text)
    if kind in ("image", "document"):
        return "", _media_tokens(kind, raw.get("source"), f"{where}.source")
    if kind == "tool_use":
        if not isinstance(raw.get("id"), str) or not isinstance(raw.get("name"), str):
            raise WireError(f"{where}: tool_use blocks need an id and a name")
        if not isinstance(raw.get("input"), dict):
            raise WireError(f"{where}.input: Input should be a valid dictionary")
        return "", text_tokens(_canonical(raw["input"]).decode()) + 10
    if kind == "tool_result":
        if not isinstance(raw.get("tool_use_id"), str):
            raise WireError(f"{where}.tool_use_id: Field required")
        inner = raw.get("content", "")
        if isinstance(inner, list):
            parts = _content_blocks(inner, "user", f"{where}.content", 0)
            return "".join(b.text for b in parts), sum(b.tokens for b in parts)
        if not isinstance(inner, str):
            raise WireError(f"{where}.content: Input should be a valid string or list")
        return inner, text_tokens(inner) + 5
    if kind == "thinking":
        if not isinstance(raw.get("thinking"), str) or not isinstance(raw.get("signature"), str):
            raise WireError(f"{where}: thinking blocks need their thinking and signature")
        return "", text_tokens(raw["thinking"])
    if not isinstance(raw.get("data"), str):  # redacted_thinking
        raise WireError(f"{where}.data: Field required")
    return "", text_tokens(raw["data"]) // 4


def _media_tokens(kind: str, source: Any, where: str) -> int:
    """Input tokens of an image or document source, checked as the API checks it."""
    if not isinstance(source, dict):
        raise WireError(f"{where}: Field required")
    source_type = source.get("type")
    if source_type == "url":
        if not isinstance(source.get("url"), str) or not source["url"].startswith("http"):
            raise WireError(f"{where}.url: Input should be a valid URL")
        return URL_IMAGE_TOKENS if kind == "image" else 3_000
    if kind == "document" and source_type == "text":
        if source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str):
            raise WireError(f"{where}.media_type: Input should be 'text/plain'")
        return text_tokens(source["data"])
    if source_type != "base64":
        raise WireError(f"{where}.type: Input should be 'base64' or 'url'")
    media_type = source.get("media_type")
    allowed = _IMAGE_TYPES if kind == "image" else ("application/pdf",)
    if media_type not in allowed:
        names = ", ".join(f"'{t}'" for t in allowed)
        raise WireError(f"{where}.media_type: Input should be {names}")
    data = source.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raw = b""
    if not raw:
        raise WireError(f"{where}.data: Input should be non-empty valid base64")
    if kind == "image":
        return min(IMAGE_TOKENS_MAX, 85 + len(raw) // 100)
    return 1_500 + len(raw) // PDF_BYTES_PER_TOKEN


def _has_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _cache_ttl(control: Any, path: str) -> str | None:
    if control is None:
        return None
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise WireError(f"{path}.type: Input should be 'ephemeral'")
    extra = set(control) - {"type", "ttl"}
    if extra:
        raise WireError(f"{path}.{sorted(extra)[0]}: Extra inputs are not permitted")
    ttl = control.get("ttl", "5m")
    if ttl not in _TTLS:
        raise WireError(f"{path}.ttl: Input should be '5m' or '1h'")
    return ttl


def load_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; anything else is the API's 400."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"There was an issue with your request body: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WireError("The request body must be a JSON object")
    return data


def reject_extra(data: dict[str, Any], allowed: frozenset[str]) -> None:
    """Refuse a field the endpoint does not take, as the API does."""
    extra = sorted(set(data) - allowed)
    if extra:
        raise WireError(f"{extra[0]}: Extra inputs are not permitted")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
