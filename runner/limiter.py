"""Admission control shared by the whole pool: three rate meters, a concurrency cap, cooldowns.

Follows https://docs.anthropic.com/en/api/rate-limits. Every attempt is admitted only
when the requests, input-token and output-token buckets all have room. Input tokens are
charged from the request's estimate (through a factor learned per model) and corrected
with the usage the stream reports; cache reads do not count, as on the real API. Output
tokens are charged at the mean output seen so far and corrected with what was generated.

The limits come from `[limits]`/flags, and are replaced by the server's
`anthropic-ratelimit-*` headers whenever it sends them (also behind a gateway that
prefixes them, as LiteLLM's `llm_provider-anthropic-ratelimit-*`). Without either, a
request rate is learned from 429s alone (see RateLearner). A 429 or 529 with a
`retry-after` pauses every worker for it (at most `max_retry_after`); any 429 or 529
lowers the admitted rate and the concurrency cap, which grow back gradually. A run
starts with one request in flight and opens one more slot per successful response's
headers (slow start), so long streams do not hold back the start; from the first
success until the first 429 or 529 the cap also doubles on a clock, so thousands of
slots fill in seconds even when answers take seconds to begin.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from runner.buckets import Aimd, Bucket, RateLearner, RunningMean, ramp
from runner.job import Limits
from runner.models import Request, Usage
from runner.provider import rate_limits

METERS = ("rpm", "itpm", "otpm")
# A run starts with one request in flight (its answer may bring the limits in headers)
# and adds one per successful response's headers (slow start: doubling each round
# trip, however long the streams then take).
START_CONCURRENCY = 1
# Once a response succeeded, and until the first 429 or 529, the cap also doubles every
# this many seconds: with 2 s to the first byte, 2,000 slots are open within 5 s
# (bench/streams.py's 2000 profile), where doubling per round trip took 22 s.
START_DOUBLING_S = 0.1
CONCURRENCY_DECREASE = 0.7
# Without a pause to group them, 429s and 529s this close together are one event: the
# answers of requests already in flight. One concurrency cut per event.
CUT_INTERVAL_S = 1.0


@dataclass(slots=True)
class Ticket:
    """What one admitted attempt was charged, so it can be corrected later."""

    input_tokens: int
    output_tokens: int
    model: str = ""
    estimated_input_tokens: int = 0
    settled: bool = False


class RateLimiter:
    """Decides when the next attempt may start; every worker asks before each attempt."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        now = clock()
        self._started: float | None = None  # the first admission: the ramp starts there
        self.buckets = {name: Bucket(name, now) for name in METERS}
        told = (
            limits.requests_per_minute,
            limits.input_tokens_per_minute,
            limits.output_tokens_per_minute,
        )
        for name, limit in zip(METERS, told, strict=True):
            if limit:
                self.buckets[name].set_limit(limit, "configured", now)
        self.backoff = Aimd(_at=now)
        self.learner = RateLearner()
        self.max_concurrency = limits.concurrency
        self.concurrency = min(limits.concurrency, START_CONCURRENCY)
        self.in_flight = 0
        self._output_in_flight = 0
        self._cooldown_until = now
        self._last_cut = -math.inf
        self._filling_since: float | None = None  # the first success, while the cap doubles
        self._output = RunningMean()
        self._input_factor = RunningMean()
        self.waiting_on: str | None = None
        self._wait_started = 0.0
        self.waiting_s: dict[str, float] = dict.fromkeys((*METERS, "cooldown", "concurrency"), 0.0)
        self.overloaded: Counter[int] = Counter()
        self._gate = anyio.Lock()
        self._changed = anyio.Event()

    async def admit(self, request: Request) -> Ticket:
        """Wait until the pool may send `request`; every ticket is settled exactly once."""
        # One waiter at a time, in arrival order, so waiting time is wall time, not per worker.
        async with self._gate:
            if self._started is None:
                self._started = self._clock()
            while True:
                now = self._tick()
                reason, delay = self._blocked(request, now)
                if reason is None:
                    break
                self.waiting_on, self._wait_started = reason, now
                try:
                    with anyio.move_on_after(delay):
                        await self._changed.wait()
                finally:
                    self.waiting_s[reason] += self._clock() - now
                    self.waiting_on = None
            ticket = Ticket(
                input_tokens=math.ceil(self._input_estimate(request)),
                output_tokens=math.ceil(self._output_estimate(request)),
                model=request.model,
                estimated_input_tokens=request.estimated_input_tokens,
            )
            self.buckets["rpm"].charge(1)
            self.buckets["itpm"].charge(ticket.input_tokens)
            self.buckets["otpm"].charge(ticket.output_tokens)
            self.in_flight += 1
            self._output_in_flight += ticket.output_tokens
            return ticket

    def observe(self, response: httpx.Response) -> None:
        """Response headers arrived: open a slot if it succeeded, adopt its rate limits."""
        now = self._tick()
        if response.status_code < 300:
            self.concurrency = min(self.max_concurrency, self.concurrency + 1)
            if self._filling_since is None and not self.overloaded:
                self._filling_since = now
        for name, (limit, remaining) in rate_limits(response.headers).items():
            bucket = self.buckets[name]
            if bucket.source != "headers" or bucket.limit != limit:
                bucket.set_limit(limit, "headers", now)
                bucket.advance(now, self._scale(bucket, now))
            if remaining is None:
                continue
            if name == "otpm":
                # The server charges output as it is generated; ours is charged in advance.
                remaining -= self._output_in_flight
            bucket.sync(remaining)
        self._wake()

    def settle(self, ticket: Ticket, usage: Usage | None) -> None:
        """The attempt ended: correct the estimates with the usage the stream reported (if any)."""
        if ticket.settled:
            return
        ticket.settled = True
        now = self._tick()
        # Whatever the outcome, the server let it through; a 429 or 529 takes it back below.
        self.learner.success(now)
        self.in_flight -= 1
        self._output_in_flight -= ticket.output_tokens
        if usage is None:
            # Nothing was reported as generated; the input charge stays, to be safe.
            self.buckets["otpm"].charge(-ticket.output_tokens)
        else:
            # Cache reads do not count toward the input tokens per minute; creation does.
            counted = usage.input_tokens + usage.cache_creation_input_tokens
            self.buckets["itpm"].charge(counted - ticket.input_tokens)
            self.buckets["otpm"].charge(usage.output_tokens - ticket.output_tokens)
            if ticket.estimated_input_tokens > 0:
                self._input_factor.add(ticket.model, counted / ticket.estimated_input_tokens)
            self._output.add(ticket.model, usage.output_tokens)
        self._wake()

    def on_overloaded(self, status: int | None, retry_after_s: float | None) -> None:
        """A 429 or 529: hold every worker for its retry-after (if any), then go slower.

        `retry_after_s` is already capped by `max_retry_after`. Without one there is no
        pool-wide pause: each row backs off on its own, and the concurrency cut slows the
        pool. Measured on tests/test_faults.py::test_mixed_faults_lose_no_row (2,200 rows,
        50 of each fault kind): with a 1 s pool pause per 429/529 lacking a retry-after
        it took 61.7 s, without 23.9 s, with the same 550 failed attempts (one per fault).
        A 529 is the server's overload, not a quota; the API sends retry-after with 429s.
        """
        now = self._tick()
        seconds = retry_after_s or 0.0
        new_event = now >= self._cooldown_until and now - self._last_cut >= CUT_INTERVAL_S
        if status != 429 and seconds:
            self.learner.stalled(max(now, self._cooldown_until), now + seconds)
        self._cooldown_until = max(self._cooldown_until, now + seconds)
        self.overloaded[status or 0] += 1
        self.learner.refused()
        if new_event:
            # One decrease per event: the 429s of requests already in flight are the same one.
            self._last_cut = now
            self.concurrency = max(1, int(self.concurrency * CONCURRENCY_DECREASE))
            if status == 429:
                self._slow_down(now)
        self._wake()

    def snapshot(self) -> dict[str, object]:
        """The limiter's state, JSON-ready, for the progress display and summary.json."""
        now = self._tick()
        waiting = dict(self.waiting_s)
        if self.waiting_on is not None:
            waiting[self.waiting_on] += now - self._wait_started
        meters = {}
        for name, bucket in self.buckets.items():
            meters[name] = {
                "limit": bucket.limit,
                "source": bucket.source,
                "fill": round(bucket.level, 3),
                "capacity": round(bucket.capacity, 3),
                "share": round(bucket.scale, 3),
                "waiting_s": round(waiting[name], 3),
            }
        return {
            "meters": meters,
            "waiting_s": {k: round(v, 3) for k, v in waiting.items()},
            "waiting_on": self.waiting_on,
            "concurrency": self.concurrency,
            "max_concurrency": self.max_concurrency,
            "in_flight": self.in_flight,
            "cooldown_s": round(max(0.0, self._cooldown_until - now), 3),
            "overloaded": {str(k): v for k, v in sorted(self.overloaded.items())},
            "expected_output_tokens": self._output.as_dict(),
            "input_token_factor": self._input_factor.as_dict(),
        }

    def _slow_down(self, now: float) -> None:
        rpm = self.buckets["rpm"]
        if rpm.source in (None, "learned"):
            # No limit known for requests: learn the server's rate from its 429s.
            before = self.learner.rate
            rate = self.learner.overloaded(now, self._started or now)
            if rate is not None and rate != before:
                rpm.set_limit(rate * 60.0, "learned", now)
        else:
            self.backoff.cut(now)
        self._tick()

    def _tick(self) -> float:
        """Bring every bucket, the backoff, the learned rate and the start-up cap up to now."""
        now = self._clock()
        self._fill(now)
        self.backoff.advance(now)
        self.learner.advance(now)
        rpm = self.buckets["rpm"]
        if rpm.source == "learned" and self.learner.rate is not None:
            rpm.advance(now, 1.0)
            rpm.limit = self.learner.rate * 60.0
        for bucket in self.buckets.values():
            bucket.advance(now, self._scale(bucket, now))
        return now

    def _fill(self, now: float) -> None:
        """Double the cap on schedule from the first success, until full or pushed back."""
        if self._filling_since is None:
            return
        if self.overloaded or self.concurrency >= self.max_concurrency:
            self._filling_since = None
            return
        doublings = min(32.0, (now - self._filling_since) / START_DOUBLING_S)
        scheduled = int(START_CONCURRENCY * 2.0**doublings + 1e-6)
        self.concurrency = min(self.max_concurrency, max(self.concurrency, scheduled))

    def _until_next_slot(self, now: float) -> float | None:
        """Seconds until the schedule opens one more slot (None: only an answer opens one)."""
        if self._filling_since is None:
            return None
        at = self._filling_since + START_DOUBLING_S * math.log2(
            (self.concurrency + 1) / START_CONCURRENCY
        )
        return max(0.001, at - now)

    def _scale(self, bucket: Bucket, now: float) -> float:
        """The share of a known limit used now: the start-up ramp times the 429 backoff."""
        if bucket.source == "learned":
            return 1.0
        return ramp(now - (self._started or now)) * self.backoff.value

    def _blocked(self, request: Request, now: float) -> tuple[str | None, float | None]:
        """What stops `request` now and for how long (None: until something changes)."""
        if now < self._cooldown_until:
            return "cooldown", self._cooldown_until - now
        if self.in_flight >= self.concurrency:
            return "concurrency", self._until_next_slot(now)
        needs = {
            "rpm": 1.0,
            "itpm": self._input_estimate(request),
            "otpm": self._output_estimate(request),
        }
        waits = {name: self.buckets[name].wait_s(need) for name, need in needs.items()}
        meter = max(waits, key=lambda name: waits[name])
        if waits[meter] <= 0:
            return None, None
        return meter, waits[meter]

    def _input_estimate(self, request: Request) -> float:
        factor = self._input_factor.get(request.model, 1.0)
        return request.estimated_input_tokens * factor

    def _output_estimate(self, request: Request) -> float:
        # Until replies are seen, a request may generate all of max_tokens.
        return min(request.max_tokens, self._output.get(request.model, request.max_tokens))

    def _wake(self) -> None:
        """Let the waiting worker look again: something it waits on may have changed."""
        self._changed.set()
        self._changed = anyio.Event()
