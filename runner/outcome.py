"""A run's state and its time figures, defined once for summary.json, the final lines and reports.

State: `finished` (every row has its outcome: exit 0 or 1), `interrupted` (Ctrl-C or
SIGTERM: exit 130), `stopped` (a fatal API answer, exit 3, or a local failure, exit 4;
`reason` says which), `budget` (the `--max-cost` cap: exit 5), `crashed` (the last
session never wrote its end: killed, or the machine went down) and `running` (a live
process holds the run).

Time: a run is one or more sessions, a resume starting a new one. `wall_time_s` is the
time its sessions ran, the gaps between them left out; `rows_per_s` is the rows finished
over that time. A session's figures and the whole run's follow the same definitions; a
crashed session ran until its last attempt ended.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import polars as pl


class RunState(StrEnum):
    """Where a run stands, as summary.json and the reports say it."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"
    BUDGET = "budget"
    CRASHED = "crashed"
    RUNNING = "running"


# What each exit code means: `runner run --help` and docs/reference.md say it from here.
EXIT_CODES = {
    0: "Every row `ok`.",
    1: "Finished, but some rows are `error` or `invalid` (the run prints the command that "
    "sends them again); also an unreadable run folder.",
    2: "Bad usage, job file or input file, or a run folder locked by another process: "
    "nothing was sent.",
    3: "Aborted on a fatal API answer (401, 403, spend cap) or an endpoint that cannot be "
    "reached; resumable once fixed.",
    4: "Stopped by a local failure (disk full, too many open files, permissions); resumable.",
    5: "Stopped at the `--max-cost` budget; resumable with a higher cap.",
    130: "Interrupted (Ctrl-C, SIGTERM); resumable with the command it prints.",
}


def exit_codes_help() -> str:
    """The exit codes for `runner run --help`, one after another."""
    return "Exit codes: " + " ".join(f"{code}: {text}" for code, text in EXIT_CODES.items())


# The exit codes, by the state they leave the run in.
_STATE_BY_EXIT = {
    0: RunState.FINISHED,
    1: RunState.FINISHED,
    3: RunState.STOPPED,
    4: RunState.STOPPED,
    5: RunState.BUDGET,
    130: RunState.INTERRUPTED,
}


def state_for(exit_code: int) -> RunState:
    """The state a session's exit code leaves the run in."""
    return _STATE_BY_EXIT.get(exit_code, RunState.STOPPED)


def rate(count: float, seconds: float | None) -> float | None:
    """`count` per second over `seconds`, to a tenth; None over no time."""
    return round(count / seconds, 1) if seconds else None


def sessions_of(info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The sessions run.json records (one, for a run.json from before sessions)."""
    if not info:
        return []
    if "sessions" in info:
        return list(info["sessions"])
    started = info.get("started_at") or info.get("first_started_at")
    return [{"started_at": started, "ended_at": info.get("ended_at")}] if started else []


def session_spans(
    sessions: list[dict[str, Any]], attempts: pl.LazyFrame
) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each session; a crashed one ends with its last attempt."""
    starts = [_epoch(s["started_at"]) for s in sessions]
    spans = []
    for i, session in enumerate(sessions):
        start = starts[i]
        if session.get("ended_at"):
            spans.append((start, _epoch(session["ended_at"])))
            continue
        following = starts[i + 1] if i + 1 < len(starts) else None
        spans.append((start, _last_attempt_end(attempts, start, following) or start))
    return spans


def _last_attempt_end(attempts: pl.LazyFrame, start: float, before: float | None) -> float | None:
    began = pl.col("started_at").dt.epoch("us") / 1e6
    window = began >= start if before is None else (began >= start) & (began < before)
    end = (
        attempts.filter(window)
        .select((began + pl.col("latency_ms").fill_null(0) / 1000).max())
        .collect()
        .item()
    )
    return float(end) if end is not None else None


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def run_time(sessions: list[dict[str, Any]], attempts: pl.LazyFrame, rows: int) -> dict[str, Any]:
    """The whole run's wall time (its sessions' own, gaps left out) and rows per second.

    A session that ended recorded its wall time on the run's clock; a crashed one counts
    from its start to its last attempt.
    """
    spans = session_spans(sessions, attempts)
    walls = [
        s.get("wall_time_s", end - start) for s, (start, end) in zip(sessions, spans, strict=True)
    ]
    wall = round(sum(walls), 3)
    return {"wall_time_s": wall, "rows_per_s": rate(rows, wall), "sessions": len(sessions)}


def session_time(wall_s: float, rows_done: int) -> dict[str, Any]:
    """This session's wall time and rows per second, as `run_time` gives the whole run's."""
    wall = round(wall_s, 3)
    return {"wall_time_s": wall, "rows_per_s": rate(rows_done, wall)}


def read_state(info: dict[str, Any], summary: dict[str, Any], live: bool) -> dict[str, Any]:
    """A run's state for a report: what its last session wrote, or crashed if it never did."""
    ended = info.get("ended_at") is not None
    if live or not ended:
        state = RunState.RUNNING if live else RunState.CRASHED
        # An earlier session's resume command (same run id) resumes a crashed run too.
        resume = summary.get("resume_command")
        return {"state": state.value, "exit_code": None, "reason": None, "resume_command": resume}
    exit_code = summary.get("exit_code")
    return {
        "state": summary.get("state")
        or (state_for(exit_code).value if exit_code is not None else None),
        "exit_code": exit_code,
        "reason": summary.get("reason"),
        "resume_command": summary.get("resume_command"),
    }


def count(value: int | None) -> str:
    """A count as every output writes it: thousands separated, `?` when unknown."""
    return "?" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    """A duration as every output writes it."""
    return "n/a" if value is None else f"{value:,.1f} s"


def per_second(value: float | None, unit: str = "rows") -> str:
    """A rate as every output writes it."""
    return "n/a" if value is None else f"{value:,.1f} {unit}/s"
