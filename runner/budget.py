"""`--max-cost`: never start a request that could carry the spend past the cap.

Before a row is sent, the pool asks `Budget.reserve`: money already spent (this run id's
earlier sessions included, rows and failed attempts) plus the worst case of every
request in flight plus this one's worst case must stay within the cap. The worst case
prices the request's estimated input (with a margin, the estimate is local) at the
dearest input-side rate (a 1-hour cache write costs more than plain input) and
`max_tokens` of output, in the long-prompt band if the prompt could reach it, at the
highest regional multiplier. Per-request fees (web search) are not bounded. Once a
row cannot fit even when what is in flight has finished, the run stops dispatching,
lets what is in flight finish, and exits 5.
"""

from __future__ import annotations

from typing import Any

import anyio

from runner.accounting import RunReader, account
from runner.errors import UsageError
from runner.job import Job, Mode
from runner.models import Request
from runner.pricing import PriceTable
from runner.store import RunStore

# The local token estimate can be low by about this much (estimate.py's OFFLINE_ERROR).
INPUT_MARGIN = 1.3
_PER_TOKEN = 1_000_000


class Budget:
    """The cap, what is spent, and what the requests in flight could still cost."""

    def __init__(self, cap: float, prices: PriceTable, stats: Any, earlier_spend: float) -> None:
        self.cap = cap
        self.prices = prices
        self.stats = stats
        self.earlier_spend = earlier_spend
        self.reserved = 0.0
        self.reached = False
        self._geo = max(prices.multipliers(), default=1.0)
        self._released = anyio.Event()

    @property
    def spent(self) -> float:
        """Dollars spent by this run id so far: ok rows and failed attempts."""
        return self.earlier_spend + self.stats.cost_usd + self.stats.retry_cost_usd

    def worst_case(self, request: Request) -> float:
        """The most this request can cost (fees aside)."""
        price = self.prices.price_for(request.model)
        if price is None:
            return float("inf")
        prompt = request.estimated_input_tokens * INPUT_MARGIN
        if price.long_prompt is not None and prompt > (price.long_prompt_above or 0):
            price = price.long_prompt
        dearest_input = max(price.input, price.cache_write_5m, price.cache_write_1h)
        tokens = prompt * dearest_input + request.max_tokens * price.output
        return tokens * self._geo / _PER_TOKEN

    async def reserve(self, request: Request) -> float | None:
        """Reserve the request's worst case once it fits; None (and `reached`) if it never will.

        A request that fits only once rows in flight have finished (their actual cost
        is usually below their worst case) waits for them rather than ending the run.
        """
        worst = self.worst_case(request)
        while not self.reached:
            if self.spent + self.reserved + worst <= self.cap:
                self.reserved += worst
                return worst
            if self.reserved <= 0 or self.spent + worst > self.cap:
                break
            if self._released.is_set():
                self._released = anyio.Event()
            await self._released.wait()
        self.reached = True
        return None

    def release(self, reservation: float) -> None:
        """The request finished: its actual cost is in `spent` now."""
        self.reserved = max(0.0, self.reserved - reservation)
        self._released.set()

    def message(self) -> str:
        """Why the run stopped, for the final lines."""
        return (
            f"stopped at the budget: ${self.spent:,.4f} spent of the ${self.cap:,.2f} cap; "
            "resume with a higher --max-cost to send the rest"
        )


def check_budget(job: Job, prices: PriceTable) -> None:
    """Refuse a cap that cannot be kept: an unpriced model, or batch mode (not bounded yet)."""
    if job.limits.max_cost_usd is None:
        return
    if job.mode is Mode.BATCH:
        raise UsageError(
            "--max-cost works with --mode stream only (batch spend is not bounded yet)"
        )
    model = str(job.request.model)
    if prices.price_for(model) is None:
        raise UsageError(f"--max-cost needs a price for model {model}: add it with --prices FILE")


def open_budget(job: Job, prices: PriceTable, store: RunStore, stats: Any) -> Budget | None:
    """The run's budget, counting what earlier sessions of this run id spent; None without a cap."""
    if job.limits.max_cost_usd is None:
        return None
    reader = RunReader(store.run_dir)
    earlier = account(reader.results(), reader.attempts())["spend_usd"] or 0.0
    budget = Budget(job.limits.max_cost_usd, prices, stats, earlier)
    stats.budget = budget
    return budget
