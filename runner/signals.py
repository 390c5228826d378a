"""SIGINT and SIGTERM outside the running phase: noted, never fatal.

While requests are in flight, `drive._watch_signals` handles them (grace period, then
cancel). Before (start-up) and after (compaction, summary) the steps are short local
writes that leave the run consistent only when they finish, so a signal there is noted,
the step finishes, and the run ends with exit 130, its summary and the resume command.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("runner")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# A phase name here makes the process stop itself (SIGSTOP) as it enters that phase, so a
# crash test can deliver a signal exactly there instead of racing the run to it.
STOP_AT_ENV = "RUNNER_STOP_AT"


def stop_here_if_asked(phase: str) -> None:
    """Freeze this process on entering `phase` when RUNNER_STOP_AT names it (tests only)."""
    if os.environ.get(STOP_AT_ENV) == phase:
        os.kill(os.getpid(), signal.SIGSTOP)


class NotedSignals:
    """Remembers the first SIGINT/SIGTERM that arrived while installed."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def arrived(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    def install(self) -> None:
        """Note stop signals from now on (again after an event loop replaced the handlers)."""
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning(
                "%s: stopping once what is being written is on disk (rows already ok are kept)",
                signal.Signals(signum).name,
            )
        self.signum = signum


@contextmanager
def noting_signals() -> Iterator[NotedSignals]:
    """Note stop signals for the block; the handlers before it are put back after it."""
    noted = NotedSignals()
    if threading.current_thread() is not threading.main_thread():
        yield noted  # only the main thread may set handlers; the caller's stay in force
        return
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    noted.install()
    try:
        yield noted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
