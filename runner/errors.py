"""Every error `runner` raises on purpose.

    RunnerError                      root: the CLI turns it into one line and an exit code
    ├── UsageError                   bad flags or job file (exit 2)
    │   └── JobFileError             unknown key, wrong type, template names a missing column
    ├── InputFileError               the input file as a whole cannot be used (exit 2)
    ├── RunDirError                  run directory locked by another process, or unreadable
    └── ApiError                     one HTTP attempt failed; carries what the attempt consumed
        ├── RetryableError           worth another attempt
        │   ├── HttpRetryableError   408, 409, 429, 5xx, 529 (or x-should-retry: true)
        │   ├── ConnectError         no answer: refused, reset before headers, connect timeout
        │   └── StreamError          the stream broke after its headers
        │       ├── MidstreamError   an `error` event inside a 200 stream
        │       ├── DroppedError     the connection closed mid-stream
        │       ├── EofWithoutStop   a clean end with no `message_stop`
        │       └── StalledError     no event for the idle timeout
        ├── RejectedError            400, 404, 413, 422: recorded on the row, never retried
        └── FatalApiError            401, 403, spend cap: the whole run stops (exit 3)

Retry decisions are made on these types, never on message text. httpx and
httpx-sse errors are translated into them in exactly one place (`client.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.models import Outcome, Usage


class RunnerError(Exception):
    """Root of every error `runner` raises on purpose."""

    exit_code = 1


class UsageError(RunnerError):
    """Bad command line or job file."""

    exit_code = 2


class JobFileError(UsageError):
    """The job file has an unknown key, a wrong type or an unusable template."""


class InputFileError(RunnerError):
    """The input file as a whole cannot be used: nothing is sent."""

    exit_code = 2


class RunDirError(RunnerError):
    """The run directory cannot be used (locked by a live run, unreadable)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What a failed attempt told us before it failed."""

    outcome: Outcome
    http_status: int | None = None
    error_type: str | None = None
    request_id: str | None = None
    retry_after_s: float | None = None
    usage: Usage | None = None
    output_text: str = ""
    ttft_ms: float | None = None


class ApiError(RunnerError):
    """One HTTP attempt failed; `facts` holds what it consumed and why."""

    def __init__(self, message: str, facts: AttemptFacts) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts


class RetryableError(ApiError):
    """A failure that another attempt may cure."""


class HttpRetryableError(RetryableError):
    """408, 409, 429, 5xx or 529 before the stream started."""


class ConnectError(RetryableError):
    """No HTTP answer at all: refused, reset, or timed out before the headers."""


class StreamError(RetryableError):
    """The stream broke after a 200."""


class MidstreamError(StreamError):
    """An `error` event arrived inside the stream (e.g. overloaded_error)."""


class DroppedError(StreamError):
    """The connection closed before the stream ended."""


class EofWithoutStop(StreamError):
    """The stream ended cleanly but never sent `message_stop`."""


class StalledError(StreamError):
    """No event arrived for the idle timeout."""


class RejectedError(ApiError):
    """The API refused this request (400, 404, 413, 422): retrying cannot help."""


class FatalApiError(ApiError):
    """The API refused the credentials or the account (401, 403, spend cap): stop the run."""

    exit_code = 3
