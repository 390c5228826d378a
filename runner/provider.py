"""The Anthropic wire, in one place: paths, headers, params, errors, rate-limit headers.

Backends (backend.py) decide how requests are executed; what the API expects and
answers is said here once, for all of them. Reading an answer (a stream's events or a
whole Message) is this provider's too, in its two decoders without I/O: `sse.py`
(bytes -> events) and `reading.py` (events or a Message -> a Completion).

- paths: `POST /v1/messages` (https://docs.anthropic.com/en/api/messages), its
  count_tokens, and the Message Batches endpoints
  (https://docs.anthropic.com/en/api/creating-message-batches);
- params: a rendered request's body is the Messages API params without `stream`;
  `streaming` adds `"stream": true` for the stream backend, the batch backend sends the
  params as they are (https://docs.anthropic.com/en/docs/build-with-claude/streaming);
- errors (https://docs.anthropic.com/en/api/errors): an HTTP answer's status, type and
  `x-should-retry` into an ApiError by kind, and an `errored` batch item's type into
  what it means for its row;
- rate limits (https://docs.anthropic.com/en/api/rate-limits): the
  `anthropic-ratelimit-*` headers, also under a gateway's prefix.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

from runner import __version__
from runner.apikey import mask_optional
from runner.errors import (
    ApiError,
    AttemptFacts,
    FatalApiError,
    HttpRetryableError,
    ModelNotFoundError,
    RejectedError,
)
from runner.models import Outcome
from runner.reading import error_body

ANTHROPIC_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
BATCHES_PATH = "/v1/messages/batches"

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


def streaming(params: bytes) -> bytes:
    """The body of a streamed request: the params with `"stream":true` added."""
    # A params body is one JSON object: its last byte is the closing brace.
    return params[:-1] + b',"stream":true}'


# ---- errors ---------------------------------------------------------------------


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


def http_error(response: httpx.Response, body: str, model: str | None = None) -> ApiError:
    """An HTTP error answer as the ApiError of its kind (retry decisions go by the type)."""
    status = response.status_code
    error_type, message, details = error_body(body)
    facts = AttemptFacts(
        outcome=Outcome.HTTP_ERROR,
        http_status=status,
        error_type=error_type or f"http_{status}",
        request_id=request_id(response),
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


def request_id(response: httpx.Response) -> str | None:
    """The answer's `request-id` header (masked: a server may echo anything)."""
    return mask_optional(response.headers.get("request-id"))


class ItemVerdict(StrEnum):
    """What an `errored` batch item means for its row."""

    AGAIN = "again"  # another item may succeed: sent in a later batch
    FATAL = "fatal"  # the credentials or the account: the run stops (exit 3)
    FINAL = "final"  # the request itself: the row is `error`, not sent again


# The error types, by what another try can do.
_AGAIN = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
_FATAL = frozenset({"authentication_error", "permission_error", "billing_error"})


def item_verdict(error_type: str) -> ItemVerdict:
    """The verdict on an `errored` item by its error type (invalid_request_error is final)."""
    if error_type in _AGAIN:
        return ItemVerdict.AGAIN
    if error_type in _FATAL:
        return ItemVerdict.FATAL
    return ItemVerdict.FINAL


# ---- rate-limit headers -----------------------------------------------------------

_RATELIMIT_PREFIX = "anthropic-ratelimit-"
# The header names of each meter: anthropic-ratelimit-{name}-limit/-remaining/-reset.
_HEADER_NAMES = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}


def rate_limits(headers: httpx.Headers) -> dict[str, tuple[float, float | None]]:
    """Each meter the answer states a limit for: (limit, remaining now or None)."""
    found = _ratelimit_headers(headers)
    meters: dict[str, tuple[float, float | None]] = {}
    for meter, name in _HEADER_NAMES.items():
        prefix = f"{_RATELIMIT_PREFIX}{name}"
        limit = _number(found.get(f"{prefix}-limit"))
        if not limit:
            continue
        remaining = _number(found.get(f"{prefix}-remaining"))
        if remaining is None:
            remaining = _remaining_from_reset(found.get(f"{prefix}-reset"), limit)
        meters[meter] = (limit, remaining)
    return meters


def _ratelimit_headers(headers: httpx.Headers) -> dict[str, str]:
    """The `anthropic-ratelimit-*` headers, also under a gateway's prefix; unprefixed win."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        at = name.find(_RATELIMIT_PREFIX)
        if at == 0 or (at > 0 and name[at:] not in found):
            found[name[at:]] = value
    return found


def _number(value: str | None) -> float | None:
    """A header's non-negative finite number, else None (a gateway may send anything)."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number < math.inf else None


def _remaining_from_reset(value: str | None, limit: float) -> float | None:
    """What remains, from the RFC 3339 time at which the bucket is full again."""
    if not value:
        return None
    try:
        full_at = datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return limit - max(0.0, full_at - time.time()) * limit / 60.0
