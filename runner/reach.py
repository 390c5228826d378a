"""Whether the endpoint can be reached at all: a wrong URL is the run's fault, not the rows'.

While no request of the run was ever answered, connection failures (refused, DNS, TLS,
no headers) across the pool for UNREACHABLE_AFTER_S mean a wrong URL or a network down,
not bad luck: the run stops with one line, and its rows are left for the next run.
"""

from __future__ import annotations

import random
import time

from runner.errors import ApiError, UnreachableError

UNREACHABLE_AFTER_S = 30.0


class Reachability:
    """Counts the time the endpoint has refused the run since the start; any answer ends it."""

    def __init__(self, url: object) -> None:
        self.url = url
        self.answered = False
        self._failing_since: float | None = None

    def answer(self) -> None:
        """Some response's headers arrived: the endpoint is there."""
        self.answered = True
        self._failing_since = None

    def connect_failed(self, exc: ApiError) -> UnreachableError | None:
        """A connection failure: the run's stop, once they have lasted long enough."""
        if self.answered:
            return None
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        return self.stop(exc) if now - self._failing_since >= UNREACHABLE_AFTER_S else None

    def retry_delay(self, delay: float) -> float:
        """`delay`, or less: the next try comes by the time the run would give up."""
        if self._failing_since is None:
            return delay
        left = self._failing_since + UNREACHABLE_AFTER_S - time.monotonic()
        return min(delay, max(0.5, left + 0.5 * random.random()))

    def stop(self, exc: ApiError) -> UnreachableError:
        """The error that stops the run, naming the URL and the last cause."""
        since = self._failing_since or time.monotonic()
        return UnreachableError(
            f"cannot reach {self.url}: {exc.message} (no answer to any request in "
            f"{time.monotonic() - since:.0f} s); rows left untouched, fix the URL or the "
            "network and run again",
            exc.facts,
        )
