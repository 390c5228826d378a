"""summary.json: a run's totals, aggregated from what is on disk."""

from __future__ import annotations

from typing import Any

import polars as pl

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
    usage = [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    # Aggregated lazily, so a compacted million-row run is summed without being loaded.
    results = store.scan_results()
    by_status = status_counts(results)
    ok = (
        results.filter(pl.col("status") == Status.OK.value)
        .select(pl.col("cost_usd").sum(), *(pl.col(name).sum() for name in usage))
        .collect(engine="streaming")
        .row(0, named=True)
    )
    attempts = (
        store.scan_attempts()
        .select(
            pl.len().alias("attempts"),
            (pl.col("outcome") != "ok").sum().alias("failed"),
            *(
                pl.col(name).filter(pl.col("outcome") != "ok").sum().alias(name)
                for name in ("cost_usd", "input_tokens", "output_tokens")
            ),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    return {
        "exit_code": exit_code,
        "rows": {**by_status, "total": sum(by_status.values())},
        "tokens": {name: int(ok[name] or 0) for name in usage},
        "cost_usd": round(float(ok["cost_usd"] or 0.0), 6),
        "retries": {
            "failed_attempts": int(attempts["failed"] or 0),
            "cost_usd": round(float(attempts["cost_usd"] or 0.0), 6),
            "input_tokens": int(attempts["input_tokens"] or 0),
            "output_tokens": int(attempts["output_tokens"] or 0),
        },
        "attempts": int(attempts["attempts"] or 0),
        "this_session": {
            "rows_done": stats.done,
            "rows_skipped": stats.skipped,
            "requests": stats.requests,
            "wall_time_s": round(stats.elapsed, 3),
        },
    }
