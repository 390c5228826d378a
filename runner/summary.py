"""summary.json: a run's totals from disk (the account), plus this session's figures."""

from __future__ import annotations

from typing import Any

import polars as pl

from runner.accounting import RunReader, account, batch_account
from runner.models import Status
from runner.stats import RunStats
from runner.store import RunStore


def status_counts(results: pl.LazyFrame) -> dict[str, int]:
    """Rows by status (every status present, zeros included)."""
    by_status = {s.value: 0 for s in Status}
    counts = results.group_by("status").len().collect(engine="streaming")
    for status, count in counts.iter_rows():
        by_status[status] = count
    return by_status


def summarize(
    store: RunStore, stats: RunStats, exit_code: int, batch_multiplier: float | None = None
) -> dict[str, Any]:
    """summary.json: the whole run id's totals from disk, plus this session's figures."""
    reader = RunReader(store.run_dir)
    results, attempts = reader.results(), reader.attempts()
    figures = account(results, attempts)
    batch = batch_account(results, attempts, batch_multiplier)
    return {
        "exit_code": exit_code,
        **figures,
        **({"batch": batch} if batch is not None else {}),
        "this_session": {
            "rows_done": stats.done,
            "rows_skipped": stats.skipped,
            "requests": stats.requests,
            "wall_time_s": round(stats.elapsed, 3),
        },
    }
