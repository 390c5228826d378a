"""summary.json: a run's state and totals from disk (the account), plus this session's figures.

    {"state", "reason", "exit_code", "resume_command", "input_rows",
     "started_at", "ended_at", **ACCOUNT (rows by status, tokens, cost, retries),
     "rows_by_stop_reason": {stop_reason: rows}, "answers": {"usable", UNUSABLE_KINDS...},
     "time": {"wall_time_s", "rows_per_s", "sessions"},
     "this_session": {"rows_done", "rows_skipped", "requests", "wall_time_s", "rows_per_s"},
     "limiter": ...}

`state` and the time figures are defined in runner.outcome, `answers` in runner.answers.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from runner.accounting import ACCOUNT_COLUMNS, RunReader, account, batch_account
from runner.answers import answer_counts
from runner.models import Status
from runner.outcome import run_time, session_time, state_for
from runner.stats import RunStats
from runner.store import RunStore

# What the answers' breakdown reads beyond the account (tool_calls where the run has it).
ANSWER_COLUMNS = ("stop_reason", "output_text", "tool_calls")


def status_counts(results: pl.LazyFrame) -> dict[str, int]:
    """Rows by status (every status present, zeros included)."""
    by_status = {s.value: 0 for s in Status}
    counts = results.group_by("status").len().collect(engine="streaming")
    for status, count in counts.iter_rows():
        by_status[status] = count
    return by_status


def stop_reason_counts(results: pl.LazyFrame) -> dict[str, int]:
    """Ok rows by the stop reason the API gave, most common first."""
    counts = (
        results.filter(pl.col("status") == Status.OK.value)
        .group_by("stop_reason")
        .len()
        .sort(["len", "stop_reason"], descending=True)
        .collect(engine="streaming")
    )
    return {str(reason): n for reason, n in counts.iter_rows()}


def summarize(
    store: RunStore,
    stats: RunStats,
    exit_code: int,
    run_info: dict[str, Any],
    *,
    reason: str | None = None,
    resume_command: str | None = None,
    batch_multiplier: float | None = None,
) -> dict[str, Any]:
    """summary.json: the whole run id's state and totals from disk, plus this session's."""
    reader = RunReader(store.run_dir)
    results = reader.results((*ACCOUNT_COLUMNS, *ANSWER_COLUMNS))
    attempts = reader.attempts()
    figures = account(results, attempts)
    batch = batch_account(results, attempts, batch_multiplier)
    return {
        "state": state_for(exit_code).value,
        "reason": reason,
        "exit_code": exit_code,
        "resume_command": resume_command,
        "input_rows": run_info.get("input_rows"),
        "started_at": run_info.get("first_started_at"),
        "ended_at": run_info.get("ended_at"),
        **figures,
        **({"batch": batch} if batch is not None else {}),
        "rows_by_stop_reason": stop_reason_counts(results),
        "answers": answer_counts(results),
        "time": run_time(run_info.get("sessions") or [], attempts, figures["rows"]["total"]),
        "this_session": {
            "rows_done": stats.done,
            "rows_skipped": stats.skipped,
            "requests": stats.requests,
            **session_time(stats.elapsed, stats.done),
        },
    }
