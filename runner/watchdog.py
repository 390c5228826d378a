"""Ends attempts that go quiet or run too long, by a clock that leaves out stopped time.

A per-read timeout cannot tell a silent server from a process that was stopped
(SIGSTOP, a laptop lid, a frozen VM, a debugger): on waking, every read's timer has
expired although the answers wait in the socket buffers, and cancelling the reads
throws them away (issue 13). So one task ticks for the whole pool; a tick that comes
far later than asked means the process was not running, and that gap is added to
`paused_s` instead of to any attempt's idle time. Attempts are then judged by the
awake clock, after their pending bytes had the same wake-up to be read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

# A tick this much later than asked is a pause, not a busy event loop.
_LATE_IS_PAUSED_S = 1.0


class Watch:
    """One attempt under watch: touch it on every byte; `expired` says why it was ended.

    The idle clock starts at the first touch (the request is written): connecting and
    writing have httpx's own timeouts, and a busy server's accept queue is not silence.
    """

    __slots__ = ("_dog", "expired", "last", "scope", "started")

    def __init__(self, dog: Watchdog) -> None:
        self._dog = dog
        self.scope = anyio.CancelScope()
        self.started = dog.now()
        self.last: float | None = None
        self.expired: str | None = None

    def touch(self) -> None:
        """The request went out, or bytes arrived: the idle clock starts again."""
        self.last = time.monotonic() - self._dog.paused_s


class Watchdog:
    """The pool's one idle and deadline timer; `run` must be running for it to act."""

    def __init__(self, idle_s: float, deadline_s: float) -> None:
        self.idle_s = idle_s
        self.deadline_s = deadline_s
        self.paused_s = 0.0
        self._tick_s = min(1.0, max(0.02, min(idle_s, deadline_s) / 5))
        self._watches: set[Watch] = set()

    def now(self) -> float:
        """Monotonic seconds the process has been awake (pauses left out)."""
        return time.monotonic() - self.paused_s

    @contextmanager
    def watch(self) -> Iterator[Watch]:
        """Watch one attempt: its body is cancelled when idle or past the deadline."""
        watch = Watch(self)
        self._watches.add(watch)
        try:
            with watch.scope:
                yield watch
        finally:
            self._watches.discard(watch)

    async def run(self) -> None:
        """Tick until cancelled, ending the attempts that are idle or past their deadline."""
        expected = time.monotonic() + self._tick_s
        while True:
            await anyio.sleep(self._tick_s)
            woke = time.monotonic()
            late = woke - expected
            if late > max(_LATE_IS_PAUSED_S, self._tick_s):
                self.paused_s += late
            expected = woke + self._tick_s
            self.check()

    def check(self) -> None:
        """End every attempt idle for `idle_s`, or running for `deadline_s`, on the awake clock."""
        now = self.now()
        for watch in list(self._watches):
            if watch.expired is not None:
                continue
            if watch.last is not None and now - watch.last >= self.idle_s:
                watch.expired = "idle"
            elif now - watch.started >= self.deadline_s:
                watch.expired = "deadline"
            else:
                continue
            watch.scope.cancel()
