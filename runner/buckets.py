"""The limiter's pure arithmetic: buckets, a rate learned from 429s, and usage estimates.

Nothing here sleeps or reads a clock: every method takes `now` (seconds, monotonic),
so the maths is tested with a fake clock and the limiter owns all waiting.

The rules follow https://docs.anthropic.com/en/api/rate-limits: each meter (requests,
input tokens, output tokens per minute) is a token bucket refilled continuously at
limit/60 per second; cache reads do not count toward input tokens; "short bursts of
requests at a high volume can surpass the rate limit", so our buckets hold only a few
seconds of refill, not the minute the server may allow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Our buckets hold this many seconds of refill: a burst the server always absorbs.
BURST_S = 2.0
# A run ramps its rates from this fraction of the limit to all of it over RAMP_S, since
# the docs warn that a sharp rise in usage can be refused below the nominal limit.
RAMP_FLOOR = 0.25
RAMP_S = 3.0


def ramp(elapsed: float) -> float:
    """The fraction of every limit a run may use `elapsed` seconds after it started."""
    if elapsed >= RAMP_S:
        return 1.0
    return RAMP_FLOOR + (1.0 - RAMP_FLOOR) * max(0.0, elapsed) / RAMP_S


class Bucket:
    """One meter's continuously refilled bucket; its level may go negative after a correction."""

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.limit: float | None = None  # per minute; None: not enforced
        self.source: str | None = None  # "configured", "headers" or "learned"
        self.level = 0.0
        self.scale = 1.0  # the share of the limit used now (ramp and backoff)
        self._at = now

    @property
    def capacity(self) -> float:
        """The most the bucket holds: BURST_S seconds of refill at the full limit."""
        return 0.0 if self.limit is None else self.limit * BURST_S / 60.0

    def advance(self, now: float, scale: float) -> None:
        """Refill up to `now` at the old scale, then use `scale` from here on."""
        if self.limit is not None and now > self._at:
            refill = (now - self._at) * self.limit / 60.0 * self.scale
            # Refill stops at capacity; a refund (below) may leave the level above it.
            self.level = max(self.level, min(self.capacity, self.level + refill))
        self._at = max(self._at, now)
        self.scale = scale

    def set_limit(self, limit: float, source: str, now: float) -> None:
        """Use a new limit; a first limit starts the bucket at the ramp's floor."""
        self.advance(now, self.scale)
        if self.limit is None:
            self.level = limit * BURST_S / 60.0 * RAMP_FLOOR
        self.limit, self.source = float(limit), source
        self.level = min(self.level, self.capacity)

    def wait_s(self, need: float) -> float:
        """Seconds until `need` fits (a need above capacity fits a full bucket); 0 if it does."""
        if self.limit is None:
            return 0.0
        need = min(need, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / (self.limit / 60.0 * max(self.scale, 1e-6))

    def charge(self, amount: float) -> None:
        """Take `amount`; a negative amount refunds an overestimate, even above capacity."""
        if self.limit is not None:
            self.level -= amount

    def sync(self, remaining: float) -> None:
        """The server says only `remaining` is left: never believe we have more."""
        if self.limit is not None:
            self.level = min(self.level, remaining)


# The learned rate: the multiplicative decrease (a share of the rate the server accepted
# lately); the increase after it, a share of that rate per second that itself grows per
# second without a 429 (so a low first estimate is soon outgrown); the window the accepted
# rate is measured over, the shortest history and fewest successes that measure anything.
LEARN_DECREASE = 0.9
LEARN_INCREASE = 0.02
LEARN_ACCELERATION = 0.01
LEARN_WINDOW_S = 10.0
LEARN_MIN_HISTORY_S = 2.0
# At most one cut this often: 429s that are not about our rate (a proxy's, a fault's) must
# not ratchet the rate down faster than it grows back.
LEARN_MIN_CUT_INTERVAL_S = 5.0
LEARN_MAX_CUT = 0.7
LEARN_MIN_OK = 4
LEARN_FLOOR = 1.0 / 60.0  # one request a minute


class RateLearner:
    """A request rate learned from 429s alone, for servers that send no rate-limit headers.

    A 429 means the server's bucket is empty; while we keep it empty, the requests it
    accepted over the last few seconds are its rate, whichever meter binds. So on a 429
    the rate drops to a little under what was accepted lately (multiplicative decrease),
    then grows linearly until the next 429 (additive increase). What goes unused while
    under the limit stays in the server's bucket and is spent when we go over it.
    """

    def __init__(self) -> None:
        self.rate: float | None = None  # requests per second; None before any 429
        self._base = 0.0  # the rate set at the last 429, the increase's unit
        self._cut_at: float | None = None
        self._accepted: deque[float] = deque()
        self._stalls: deque[tuple[float, float]] = deque()  # pauses not about our rate

    def success(self, now: float) -> None:
        """An attempt the server let through (whatever it answered after)."""
        self._accepted.append(now)
        while self._accepted and self._accepted[0] < now - LEARN_WINDOW_S:
            self._accepted.popleft()

    def stalled(self, since: float, until: float) -> None:
        """The pool pauses for a reason other than our rate (a 529): that time does not count."""
        self._stalls.append((since, until))

    def refused(self) -> None:
        """The attempt just counted was refused (429 or 529): take it back."""
        if self._accepted:
            self._accepted.pop()

    def overloaded(self, now: float, started: float) -> float | None:
        """A 429: go a little under the rate the server accepted lately; returns the new rate.

        A 429's pause counts in the window: the server refilled during it, and what it
        refilled was accepted after; a 529's (the server busy, not our rate) does not.
        With too few successes to measure anything the rate is left as it was (the pause
        and the concurrency cap do the slowing down); one cut at most takes LEARN_MAX_CUT
        of it, so 429s that are not about our rate cannot collapse it.
        """
        if self._cut_at is not None and now - self._cut_at < LEARN_MIN_CUT_INTERVAL_S:
            return self.rate
        start = max(started, now - LEARN_WINDOW_S)
        while self._accepted and self._accepted[0] < start:
            self._accepted.popleft()
        while self._stalls and self._stalls[0][1] < start:
            self._stalls.popleft()
        stalled = sum(max(0.0, min(b, now) - max(a, start)) for a, b in self._stalls)
        window = max(now - start - stalled, 1e-3)
        if len(self._accepted) >= LEARN_MIN_OK and now - started >= LEARN_MIN_HISTORY_S:
            rate = LEARN_DECREASE * len(self._accepted) / window
            if self.rate is not None:
                rate = max(rate, self.rate * LEARN_MAX_CUT)
            self._base = max(LEARN_FLOOR, rate)
            self.rate, self._cut_at = self._base, now
        return self.rate

    def advance(self, now: float) -> None:
        """Increase: probe further above the last cut the longer no 429 comes."""
        if self.rate is not None and self._cut_at is not None:
            t = max(0.0, now - self._cut_at)
            self.rate = self._base * (1 + LEARN_INCREASE * t + LEARN_ACCELERATION * t * t)


class RunningMean:
    """A mean per key (the model) that starts from a prior worth one sample."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[float, int]] = {}

    def add(self, key: str, value: float) -> None:
        """Count one observed value."""
        total, count = self._sums.get(key, (0.0, 0))
        self._sums[key] = (total + value, count + 1)

    def get(self, key: str, prior: float) -> float:
        """The mean of what was seen, `prior` counted once."""
        total, count = self._sums.get(key, (0.0, 0))
        return (total + prior) / (count + 1)

    def as_dict(self) -> dict[str, float]:
        """The plain means, for the snapshot."""
        return {k: round(t / n, 3) for k, (t, n) in self._sums.items() if n}


@dataclass(slots=True)
class Aimd:
    """A share of the known limits: cut on each 429, regained linearly over time."""

    value: float = 1.0
    floor: float = 0.1
    decrease: float = 0.7
    increase_per_s: float = 0.05
    _at: float = 0.0

    def cut(self, now: float) -> None:
        """Multiplicative decrease."""
        self.advance(now)
        self.value = max(self.floor, self.value * self.decrease)

    def advance(self, now: float) -> None:
        """Additive increase up to the whole limit."""
        if now > self._at:
            self.value = min(1.0, self.value + self.increase_per_s * (now - self._at))
        self._at = max(self._at, now)
