"""Rate limits as the real API applies them: three continuously refilled token buckets.

Follows https://docs.anthropic.com/en/api/rate-limits: requests per minute, input
tokens per minute (input plus cache creation; cache reads do not count) and output
tokens per minute. Each bucket holds up to its per-minute limit and refills at
limit/60 per second. Output tokens are charged as they are generated, so a request
is refused on output only once that bucket is empty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from runner.mock.config import MockConfig


class _Bucket:
    """One continuously refilled bucket; its level may go negative after a large charge."""

    def __init__(self, name: str, limit: int, clock: Callable[[], float]):
        self.name = name
        self.limit = limit
        self.rate = limit / 60.0
        self._clock = clock
        self._level = float(limit)
        self._at = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(self.limit, self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level

    def charge(self, amount: float) -> None:
        self._level = self.level() - amount

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level()) / self.rate)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: how long to wait and which limit it hit."""

    retry_after: int
    message: str


class RateLimiter:
    """The buckets of one mock server; a limit left as None is not enforced."""

    def __init__(self, config: MockConfig, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Refill every bucket."""
        config, clock = self._config, self._clock
        self._requests = _Bucket("requests", config.rpm, clock) if config.rpm else None
        self._input = _Bucket("input-tokens", config.itpm, clock) if config.itpm else None
        self._output = _Bucket("output-tokens", config.otpm, clock) if config.otpm else None

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return bool(self._requests or self._input or self._output)

    def admit(self, input_cost: int) -> Refusal | None:
        """Charge a request and its input tokens, or say why it must wait."""
        needs = []
        if self._requests:
            needs.append((self._requests, 1.0, "requests"))
        if self._input:
            # A prompt larger than the whole bucket is let through once the bucket is full.
            needs.append((self._input, min(input_cost, self._input.limit), "input tokens"))
        if self._output:
            needs.append((self._output, 1.0, "output tokens"))
        for bucket, need, unit in needs:
            if bucket.level() < need:
                wait = max(1, math.ceil(bucket.seconds_until(need)))
                return Refusal(
                    wait,
                    f"This request would exceed your organization's rate limit of "
                    f"{bucket.limit:,} {unit} per minute (mock API). Please wait {wait}s.",
                )
        if self._requests:
            self._requests.charge(1)
        if self._input:
            self._input.charge(input_cost)
        return None

    def charge_output(self, tokens: int) -> None:
        """Charge the output tokens a request actually generated."""
        if self._output and tokens:
            self._output.charge(tokens)

    def headers(self) -> dict[str, str]:
        """The `anthropic-ratelimit-*` headers describing the buckets now."""
        headers: dict[str, str] = {}
        now = time.time()
        token_buckets = []
        for bucket in (self._requests, self._input, self._output):
            if bucket is None:
                continue
            remaining = _describe(bucket, now)
            prefix = f"anthropic-ratelimit-{bucket.name}"
            headers[f"{prefix}-limit"] = str(bucket.limit)
            headers[f"{prefix}-remaining"] = str(remaining[0])
            headers[f"{prefix}-reset"] = remaining[1]
            if bucket is not self._requests:
                token_buckets.append((remaining[0], bucket.limit, remaining[1]))
        if token_buckets:
            # The docs: the tokens-* headers show the most restrictive token limit in effect.
            least, limit, reset = min(token_buckets)
            headers["anthropic-ratelimit-tokens-limit"] = str(limit)
            headers["anthropic-ratelimit-tokens-remaining"] = str(least)
            headers["anthropic-ratelimit-tokens-reset"] = reset
        return headers


def _describe(bucket: _Bucket, now: float) -> tuple[int, str]:
    """Tokens remaining now, and the RFC 3339 time at which the bucket is full again."""
    full_at = now + bucket.seconds_until(bucket.limit)
    stamp = datetime.fromtimestamp(math.ceil(full_at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return max(0, math.floor(bucket.level())), stamp
