"""Running totals of a run, read by the progress display and written to summary.json."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from runner.accounting import LiveTotals
from runner.models import Attempt, RowResult, Status


@dataclass(slots=True)
class RunStats:
    """What this run has done so far (rows skipped on resume are counted apart)."""

    total_rows: int | None = None
    skipped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    failed_attempts: int = 0
    # Tokens and cost of ok rows, kept as the accounting module keeps them.
    totals: LiveTotals = field(default_factory=LiveTotals)
    retry_cost_usd: float = 0.0
    # The run's --max-cost budget (runner.budget.Budget), shown by the display; None without one.
    budget: Any = None
    in_flight: int = 0
    # Rows waiting for their next attempt, by why the last one failed.
    retrying: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def add_result(self, result: RowResult) -> None:
        """Count a finished row."""
        self.statuses[result.status.value] += 1
        if result.status is not Status.OK and result.error_type:
            self.error_types[result.error_type] += 1
        self.totals.add(result)

    def add_attempt(self, attempt: Attempt) -> None:
        """Count an HTTP attempt; a failed one's cost is what retries cost."""
        self.requests += 1
        if attempt.outcome.value != "ok":
            self.failed_attempts += 1
            if attempt.cost_usd is not None:
                self.retry_cost_usd += attempt.cost_usd

    @property
    def input_tokens(self) -> int:
        """Input tokens of the ok rows so far."""
        return self.totals.tokens["input_tokens"]

    @property
    def output_tokens(self) -> int:
        """Output tokens of the ok rows so far."""
        return self.totals.tokens["output_tokens"]

    @property
    def cost_usd(self) -> float:
        """Dollars of the priced ok rows so far (unpriced rows are in `totals`, not here)."""
        return self.totals.priced_cost

    @property
    def done(self) -> int:
        """Rows finished in this run."""
        return sum(self.statuses.values())

    def stop_clock(self) -> None:
        """Freeze `elapsed`, so summary.json and the printed summary give the same wall time."""
        self.ended = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the run started, or until it ended."""
        return (self.ended or time.monotonic()) - self.started
