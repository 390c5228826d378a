"""Validate request bodies the way the Messages API does, and reduce them to text blocks.

Error messages follow the real API's `path: reason` form, e.g.
`max_tokens: Field required`, `foo: Extra inputs are not permitted`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Tokens added for each message, standing in for the role markers a real tokenizer adds.
MESSAGE_OVERHEAD_TOKENS = 3
# The real API accepts at most four cache breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4

_MESSAGES_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "stream",
    }
)
_COUNT_TOKENS_FIELDS = frozenset({"model", "messages", "system"})
_ROLES = ("user", "assistant")
_TTLS = ("5m", "1h")


class WireError(Exception):
    """A request the API refuses; carries the HTTP status and the Anthropic error type."""

    def __init__(self, message: str, status: int = 400, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type


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


def parse_messages_request(body: bytes) -> ParsedRequest:
    """Validate a `POST /v1/messages` body."""
    data = load_object(body)
    reject_extra(data, _MESSAGES_FIELDS)
    max_tokens = data.get("max_tokens")
    if "max_tokens" not in data:
        raise WireError("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise WireError("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise WireError("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None and (not _is_number(value) or not 0.0 <= value <= 1.0):
            raise WireError(f"{name}: Input should be a number between 0 and 1")
    top_k = data.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise WireError("top_k: Input should be a non-negative integer")
    stops = data.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise WireError("stop_sequences: Input should be a list of non-empty strings")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict) or not set(metadata) <= {"user_id"}:
        raise WireError("metadata: Input should be an object with an optional user_id")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise WireError("stream: Input should be a valid boolean")
    return _parse_prompt(data, max_tokens, stream, tuple(stops))


def parse_count_tokens_request(body: bytes) -> ParsedRequest:
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
    blocks: list[Block] = []
    system = data.get("system")
    if system is not None:
        blocks.extend(_content_blocks(system, "system", "system", first_overhead=0))
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise WireError("messages: at least one message is required")
    prompt = ""
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
        if not any(b.text for b in content) and not is_final_assistant:
            raise WireError(
                f"{path}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        if role == "user":
            prompt = "".join(b.text for b in content)
        blocks.extend(content)
    breakpoints = sum(1 for b in blocks if b.cache_ttl)
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        raise WireError(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )
    prompt_fields = {"model": model, "system": system, "messages": messages}
    reply_seed = hashlib.sha256(_canonical(prompt_fields)).digest()
    key = hashlib.sha256(reply_seed + str(max_tokens).encode()).hexdigest()
    return ParsedRequest(
        model=model,
        blocks=tuple(blocks),
        input_tokens=sum(b.tokens for b in blocks),
        prompt=prompt,
        key=key,
        reply_seed=reply_seed,
        max_tokens=max_tokens,
        stream=stream,
        stop_sequences=stops,
    )


def _content_blocks(content: Any, role: str, path: str, first_overhead: int) -> list[Block]:
    """A string or a list of text blocks, as the API accepts for `system` and `content`."""
    if isinstance(content, str):
        return [Block(role, content, text_tokens(content) + first_overhead, True, None)]
    if not isinstance(content, list) or (role == "user" and not content):
        raise WireError(f"{path}: Input should be a valid string or a non-empty list of blocks")
    blocks = []
    for j, raw in enumerate(content):
        where = f"{path}.{j}"
        if not isinstance(raw, dict):
            raise WireError(f"{where}: Input should be a valid dictionary")
        if raw.get("type") != "text":
            raise WireError(
                f"{where}: Input tag {raw.get('type')!r} found using 'type' does not match any "
                "of the expected tags: 'text' (the mock API serves text only)"
            )
        extra = set(raw) - {"type", "text", "cache_control"}
        if extra:
            raise WireError(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
        text = raw.get("text")
        if not isinstance(text, str) or not text:
            raise WireError(f"{where}.text: text content blocks must be non-empty")
        ttl = _cache_ttl(raw.get("cache_control"), f"{where}.cache_control")
        overhead = first_overhead if j == 0 else 0
        blocks.append(Block(role, text, text_tokens(text) + overhead, j == 0, ttl))
    return blocks


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
