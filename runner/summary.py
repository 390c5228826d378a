"""summary.json: a run's totals from disk (the account), plus this session's figures."""

from __future__ import annotations

from typing import Any

import polars as pl

from runner.accounting import RunReader, account
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


def summarize(store: RunStore, stats: RunStats, exit_code: int) -> dict[str, Any]:
    """summary.json: the whole run id's totals from disk, plus this session's figures."""
    reader = RunReader(store.run_dir)
    figures = account(reader.results(), reader.attempts())
    return {
        "exit_code": exit_code,
        **figures,
        "this_session": {
            "rows_done": stats.done,
            "rows_skipped": stats.skipped,
            "requests": stats.requests,
            "wall_time_s": round(stats.elapsed, 3),
        },
    }
