"""Every error `runner` raises on purpose.

    RunnerError                      root: the CLI turns it into one line and an exit code
    ├── UsageError                   bad flags or job file (exit 2)
    │   └── JobFileError             unknown key, wrong type, template names a missing column
    ├── InputFileError               the input file as a whole cannot be used (exit 2)
    ├── RunDirError                  run directory locked by another process, or unreadable
    ├── LocalFailureError            disk full, too many open files, permissions (exit 4)
    └── ApiError                     one HTTP attempt failed; carries what the attempt consumed
        ├── RetryableError           worth another attempt
        │   ├── HttpRetryableError   408, 409, 429, 5xx, 529 (or x-should-retry: true)
        │   ├── ConnectError         no answer: refused, reset before headers, connect timeout
        │   └── StreamError          the stream broke after its headers
        │       ├── MidstreamError   an `error` event inside a 200 stream
        │       ├── DroppedError     the connection closed mid-stream
        │       ├── EofWithoutStop   a clean end with no `message_stop`
        │       ├── MalformedError   an answer not shaped as the API's (JSON, UTF-8, types)
        │       ├── StalledError     no byte for the idle timeout
        │       └── DeadlineError    the attempt outlived its total deadline
        ├── RejectedError            400, 404, 413, 422: recorded on the row, never retried
        │   └── ModelNotFoundError   a 404 that names the request's model
        ├── TooLargeError            an event or answer over its cap: recorded, never retried
        └── FatalApiError            401, 403, spend cap: the whole run stops (exit 3)
            └── UnreachableError     no answer ever, only connection failures, for ~30 s

Retry decisions are made on these types, never on message text. httpx errors and
answers of the wrong shape are translated into them in exactly one place (`client.py`).
"""

from __future__ import annotations

import errno
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


# What the operator is told for each errno of a local failure: the cause, in plain words.
_LOCAL_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENFILE: "too many open files in the system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


class LocalFailureError(RunnerError):
    """The machine failed the run (disk full, out of file handles, no permission): it stops
    cleanly and resumes once the cause is fixed."""

    exit_code = 4

    def __init__(self, cause: str, path: object) -> None:
        super().__init__(f"{cause}: {path}")
        self.cause = cause
        self.path = path

    @classmethod
    def from_os_error(cls, exc: OSError, path: object) -> LocalFailureError:
        """The failure an OSError stands for, naming the path it happened on."""
        name = errno.errorcode.get(exc.errno or 0, "")
        cause = _LOCAL_CAUSES.get(exc.errno or 0, exc.strerror or str(exc))
        return cls(f"{cause} ({name})" if name else cause, exc.filename or path)


def out_of_file_handles(exc: BaseException) -> OSError | None:
    """The EMFILE/ENFILE under `exc` (a failed connect, say), if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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


class MalformedError(StreamError):
    """The answer is not shaped as the API's: invalid JSON or UTF-8, a null or mistyped field."""


class StalledError(StreamError):
    """No byte arrived for the idle timeout."""


class DeadlineError(StreamError):
    """The attempt was still running at its total deadline (a server pinging forever)."""


class RejectedError(ApiError):
    """The API refused this request (400, 404, 413, 422): retrying cannot help."""


class ModelNotFoundError(RejectedError):
    """A 404 `not_found_error` that names the request's model: the model id is wrong or retired."""


class TooLargeError(ApiError):
    """One event or the whole answer exceeded its size cap; another attempt would too."""


class FatalApiError(ApiError):
    """The API refused the credentials or the account (401, 403, spend cap): stop the run."""

    exit_code = 3


class UnreachableError(FatalApiError):
    """The endpoint never answered: only connection failures across the pool since the start."""
