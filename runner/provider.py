"""The Anthropic wire, in one place: paths, request params, and what an answer's errors mean.

Backends (backend.py) decide how requests are executed; what the API expects and
answers is said here once, for all of them:

- paths: the Message Batches endpoints
  (https://docs.anthropic.com/en/api/creating-message-batches);
- a batch item's `errored` result: whether another item may succeed, whether the whole
  run must stop (as a 401/403 does), or the row fails for good.
"""

from __future__ import annotations

from enum import StrEnum

BATCHES_PATH = "/v1/messages/batches"


class ItemVerdict(StrEnum):
    """What an `errored` batch item means for its row."""

    AGAIN = "again"  # another item may succeed: sent in a later batch
    FATAL = "fatal"  # the credentials or the account: the run stops (exit 3)
    FINAL = "final"  # the request itself: the row is `error`, not sent again


# https://docs.anthropic.com/en/api/errors: the error types, by what another try can do.
_AGAIN = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
_FATAL = frozenset({"authentication_error", "permission_error", "billing_error"})


def item_verdict(error_type: str) -> ItemVerdict:
    """The verdict on an `errored` item by its error type (invalid_request_error is final)."""
    if error_type in _AGAIN:
        return ItemVerdict.AGAIN
    if error_type in _FATAL:
        return ItemVerdict.FATAL
    return ItemVerdict.FINAL
