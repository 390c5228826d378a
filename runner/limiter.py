"""Admission control shared by the whole pool: one cooldown after a 429 or 529."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import httpx

from runner.job import Limits
from runner.models import Request, Usage


@dataclass(slots=True)
class Ticket:
    """What one admitted attempt was charged, so it can be corrected later."""

    input_tokens: int
    output_tokens: int


class RateLimiter:
    """Decides when the next attempt may start; every worker asks before each attempt."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._cooldown_until = 0.0
        self.waiting_s: dict[str, float] = {"cooldown": 0.0}

    async def admit(self, request: Request) -> Ticket:
        """Wait until the pool may send `request`; every ticket is settled exactly once."""
        while (delay := self._cooldown_until - time.monotonic()) > 0:
            self.waiting_s["cooldown"] += delay
            await anyio.sleep(delay)
        return Ticket(request.estimated_input_tokens, 0)

    def on_overloaded(self, status: int | None, retry_after_s: float | None) -> None:
        """A 429 or 529: hold every worker until the server's retry-after has passed."""
        seconds = retry_after_s if retry_after_s is not None else 1.0
        self._cooldown_until = max(self._cooldown_until, time.monotonic() + seconds)

    def observe(self, response: httpx.Response) -> None:
        """Learn from a response's headers (rate-limit headers, when the server sends them)."""

    def settle(self, ticket: Ticket, usage: Usage | None) -> None:
        """The attempt ended: correct the estimate with the usage the stream reported (if any)."""

    def snapshot(self) -> dict[str, object]:
        """The limiter's state for progress and summary.json."""
        return {"waiting_s": dict(self.waiting_s)}
