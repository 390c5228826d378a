"""Which fault, if any, an attempt gets: from a marker in the prompt, else by probability.

Markers go in the text of the last user message:

- `[[fault:KIND]]` fails the first attempt of that request,
- `[[fault:KIND:N]]` the first N attempts,
- `[[fault:KIND:all]]` every attempt,
- `[[fault:429:N:retry=S]]` sets the `retry-after` of a 429 (default 1 second).

Several markers are consumed in order: `[[fault:429]] [[fault:drop:2]]` answers
attempt 1 with a 429, attempts 2 and 3 with a dropped stream, and serves attempt 4.
"Attempt" counts every time the server has seen the same request (same request key).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from runner.mock.config import FAULT_KINDS, MockConfig
from runner.mock.wire import ParsedRequest, WireError

_MARKER = re.compile(r"\[\[fault:([^\]]*)\]\]")

# Faults answered with an HTTP error before any stream: status, error type, message.
HTTP_FAULTS: dict[str, tuple[int, str, str]] = {
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    "529": (529, "overloaded_error", "Overloaded"),
    "500": (500, "api_error", "Internal server error"),
    "503": (503, "api_error", "Service unavailable"),
    "408": (408, "timeout_error", "Request timed out"),
    "400": (400, "invalid_request_error", "Invalid request (injected by the mock API)"),
    "401": (401, "authentication_error", "invalid x-api-key"),
    "403": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "404": (404, "not_found_error", "The requested resource could not be found."),
    "413": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    "spend_cap": (
        429,
        "rate_limit_error",
        "You have reached your specified API usage limits. You will regain access on the "
        "first day of next month.",
    ),
    "should_retry_false": (500, "api_error", "Internal server error (do not retry)"),
    "should_retry_true": (400, "invalid_request_error", "Invalid request (retry allowed)"),
}
# Faults that answer 200 and break (or, for unknown_event, merely decorate) the stream.
STREAM_FAULTS = frozenset({"error_event", "drop", "no_stop", "stall", "unknown_event"})
# The connection is aborted before any response headers.
RESET = "reset"


@dataclass(frozen=True, slots=True)
class Fault:
    """The fault injected into one attempt."""

    kind: str
    retry_after: int = 1  # seconds; only the 429 fault sends it

    def headers(self) -> dict[str, str]:
        """Extra response headers this fault sends."""
        if self.kind == "429":
            return {"retry-after": str(self.retry_after)}
        if self.kind == "should_retry_false":
            return {"x-should-retry": "false"}
        if self.kind == "should_retry_true":
            return {"x-should-retry": "true"}
        return {}

    def details(self) -> dict[str, str] | None:
        """The `error.details` object of the error body, when the fault has one."""
        if self.kind == "spend_cap":
            return {"error_code": "enforced_spend_limit_reached"}
        return None


@dataclass(frozen=True, slots=True)
class _Marker:
    kind: str
    count: int | None  # None: every attempt
    retry_after: int


def parse_markers(text: str) -> tuple[_Marker, ...]:
    """The fault markers in `text`, in order; a malformed marker is a 400."""
    if "[[fault:" not in text:
        return ()
    markers = []
    for match in _MARKER.finditer(text):
        kind, *options = match.group(1).split(":")
        if kind not in FAULT_KINDS:
            raise WireError(f"unknown mock fault kind in marker {match.group(0)!r}")
        count: int | None = 1
        retry_after = 1
        for option in options:
            if option == "all":
                count = None
            elif option.isdigit():
                count = int(option)
            elif option.startswith("retry=") and option[6:].isdigit():
                retry_after = int(option[6:])
            else:
                raise WireError(f"bad option {option!r} in mock fault marker {match.group(0)!r}")
        markers.append(_Marker(kind, count, retry_after))
    return tuple(markers)


def pick_fault(request: ParsedRequest, attempt: int, config: MockConfig) -> Fault | None:
    """The fault for attempt number `attempt` (from 1) of `request`, or None."""
    remaining = attempt
    for marker in parse_markers(request.prompt):
        if marker.count is None or remaining <= marker.count:
            return Fault(marker.kind, marker.retry_after)
        remaining -= marker.count
    if not config.faults:
        return None
    # Seeded by the run's seed, the request and the attempt, so a rerun injects the same faults.
    draw = random.Random(f"{config.seed}:{request.key}:{attempt}").random()
    total = 0.0
    for kind in FAULT_KINDS:
        total += config.faults.get(kind, 0.0)
        if draw < total:
            return Fault(kind)
    return None
