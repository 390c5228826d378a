"""What a run (or every run of a job) did and cost, from its Parquet files and JSON.

`build_report(path)` returns a JSON-ready dict; `format_report(report)` renders it for
people. A run dir holds `run.json`; a job dir holds run dirs. The dict's shape:

    run:  {"kind": "run", "run_dir", "run_id", "job", "started_at", "ended_at",
           "state", "exit_code", "reason", "resume_command", "input_rows",
           "prices": {"as_of", "source", "kind", "builtin_as_of", "overrides"},
           **ACCOUNT, "rows_by_stop_reason", "answers", "latency_ms", "ttft_ms",
           "time": {"wall_time_s", "rows_per_s", "sessions", "active_s", "requests_per_s",
                    "output_tokens_per_s", "rate_limit_wait_s", "retry_backoff_s"},
           "errors": [{"error_type", "rows", "example_ids"}]}
    job:  {"kind": "job", "job_dir", "job", "runs": [run, ...], "total": ACCOUNT}
    ACCOUNT: the shape `runner.accounting.account` gives (rows, tokens, cost per model).

`cost_usd` is what the rows' successful attempts cost; `retries.cost_usd` what the
failed attempts cost; `spend_usd` is both, the bill. Percentiles are over ok rows.
`state` and the time figures (wall time over the sessions, gaps left out) are defined in
runner.outcome, as summary.json has them; `answers` in runner.answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from runner.accounting import (
    ACCOUNT_COLUMNS,
    RunReader,
    account,
    batch_account,
    batch_text,
    cost_text,
    usd,
)
from runner.answers import answer_counts, answers_text
from runner.errors import UsageError
from runner.lifecycle import stale_prices_warning
from runner.models import Status
from runner.outcome import count, per_second, rate, read_state, run_time, seconds, sessions_of
from runner.pricing import describe
from runner.store import RunStore
from runner.summary import ANSWER_COLUMNS, stop_reason_counts

PRICE_SOURCE_KEYS = ("as_of", "source", "kind", "builtin_as_of", "overrides")
PERCENTILES = (50, 90, 99)
EXAMPLE_IDS = 3
TOP_ERRORS = 10


def find_runs(path: Path) -> tuple[str, list[Path]]:
    """("run", [path]) for a run dir, ("job", its run dirs) for a job dir, else UsageError."""
    if (path / "run.json").is_file():
        return "run", [path]
    if path.is_dir():
        runs = sorted(p for p in path.iterdir() if (p / "run.json").is_file())
        if runs:
            return "job", runs
    what = "does not exist" if not path.exists() else "holds no run.json and no runs"
    raise UsageError(f"{path}: {what}: give a run dir (reports/JOB/RUN_ID) or a job dir")


def read_run_json(run_dir: Path, name: str = "run.json") -> dict[str, Any]:
    """A run's JSON file (empty if absent, e.g. summary.json of a run that was killed)."""
    try:
        return json.loads((run_dir / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run_dir / name}: unreadable: {exc}") from None


def build_report(path: Path) -> dict[str, Any]:
    """The report of a run dir, or of every run of a job dir with their sum."""
    kind, runs = find_runs(path)
    if kind == "run":
        return _run_report(RunReader(runs[0]))
    readers = [RunReader(run_dir) for run_dir in runs]
    total = account(
        pl.concat([r.results() for r in readers], how="diagonal_relaxed"),
        pl.concat([r.attempts() for r in readers], how="diagonal_relaxed"),
    )
    reports = [_run_report(reader) for reader in readers]
    return {"kind": "job", "job_dir": str(path), "job": path.name, "runs": reports, "total": total}


def _run_report(reader: RunReader) -> dict[str, Any]:
    run_dir = reader.run_dir
    info = read_run_json(run_dir)
    summary = read_run_json(run_dir, "summary.json")
    prices = info.get("prices") or {}
    results = reader.results(
        (*ACCOUNT_COLUMNS, "latency_ms", "ttft_ms", "error_type", *ANSWER_COLUMNS)
    )
    attempts = reader.attempts()
    ok = results.filter(pl.col("status") == Status.OK.value)
    timing = ok.select("latency_ms", "ttft_ms").collect()
    report: dict[str, Any] = {
        "kind": "run",
        "run_dir": str(run_dir),
        "run_id": info.get("run_id", run_dir.name),
        "job": (info.get("job") or {}).get("name", run_dir.parent.name),
        "started_at": info.get("first_started_at") or info.get("started_at"),
        "ended_at": info.get("ended_at"),
        **read_state(info, summary, live=RunStore(run_dir).in_use()),
        "input_rows": info.get("input_rows"),
        "prices": {k: prices.get(k) for k in PRICE_SOURCE_KEYS},
        **account(results, attempts),
        "rows_by_stop_reason": stop_reason_counts(results),
        "answers": answer_counts(results),
        "latency_ms": percentiles(timing["latency_ms"]),
        "ttft_ms": percentiles(timing["ttft_ms"]),
    }
    batch = batch_account(results, attempts, prices.get("batch_multiplier"))
    if batch is not None:
        report["batch"] = batch
    report["time"] = _time(report, attempts, sessions_of(info), summary)
    report["errors"] = _errors(results)
    stale = stale_prices_warning(prices.get("builtin_as_of"))
    report["warnings"] = [stale] if stale else []
    return report


def percentiles(values: pl.Series) -> dict[str, float | None]:
    """p50/p90/p99 (linear interpolation, as numpy's default), None without data."""
    values = values.drop_nulls()
    return {
        f"p{q}": (
            round(float(values.quantile(q / 100, "linear") or 0.0), 3) if values.len() else None
        )
        for q in PERCENTILES
    }


def active_seconds(starts: Iterable[float], ends: Iterable[float]) -> float:
    """Seconds during which at least one attempt was in flight (the union of intervals)."""
    total, current_start = 0.0, 0.0
    current_end: float | None = None
    for start, end in sorted(zip(starts, ends, strict=True)):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def _time(
    report: dict[str, Any], lazy_attempts: pl.LazyFrame, sessions: list[dict], summary: dict
) -> dict[str, Any]:
    """Wall time and throughput as runner.outcome defines them, busy time, and waits."""
    whole = run_time(sessions, lazy_attempts, report["rows"]["total"])
    attempts = lazy_attempts.select("started_at", "latency_ms", "wait_s").collect()
    timed = attempts.drop_nulls(["started_at", "latency_ms"])
    starts = [t.timestamp() for t in timed["started_at"]]
    ends = [s + ms / 1000.0 for s, ms in zip(starts, timed["latency_ms"], strict=True)]
    waiting = (summary.get("limiter") or {}).get("waiting_s") or {}
    return {
        **whole,
        # Seconds with at least one attempt in flight: how much of the wall time was work.
        "active_s": round(active_seconds(starts, ends), 3),
        "requests_per_s": rate(attempts.height, whole["wall_time_s"]),
        "output_tokens_per_s": rate(report["tokens"]["output_tokens"], whole["wall_time_s"]),
        "rate_limit_wait_s": {k: round(float(v), 3) for k, v in waiting.items()},
        "retry_backoff_s": round(float(attempts["wait_s"].sum() or 0.0), 3),
    }


def _errors(results: pl.LazyFrame) -> list[dict[str, Any]]:
    """The most common reasons rows failed, with a few example ids each."""
    failed = results.filter(pl.col("status") != Status.OK.value)
    grouped = (
        failed.group_by("error_type", maintain_order=True)
        .agg(pl.len().alias("rows"), pl.col("id").head(EXAMPLE_IDS).alias("example_ids"))
        .sort("rows", descending=True, maintain_order=True)
        .head(TOP_ERRORS)
        .collect()
    )
    return [
        {"error_type": str(t), "rows": n, "example_ids": list(ids)}
        for t, n, ids in grouped.iter_rows()
    ]


# ---- text ------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """The report for a terminal: a run's full account, or a job's runs one per line."""
    if report["kind"] == "run":
        return "\n".join(_format_run(report))
    lines = [f"job {report['job']}: {len(report['runs'])} runs ({report['job_dir']})", ""]
    header = (
        f"{'run':<22} {'state':<11} {'exit':>4} {'ok':>7} {'error':>6} {'invalid':>7} "
        f"{'tokens':>12} {'cost':>11}"
    )
    lines += [header + f" {'retries':>10} {'wall':>8}", "-" * (len(header) + 20)]
    for run in report["runs"]:
        wall = run["time"]["wall_time_s"]
        exit_code = "-" if run["exit_code"] is None else run["exit_code"]
        lines.append(
            f"{run['run_id']:<22} {run['state']:<11} {exit_code:>4} "
            f"{run['rows']['ok']:>7,} {run['rows']['error']:>6,} "
            f"{run['rows']['invalid']:>7,} {sum(run['tokens'].values()):>12,} "
            f"{usd(run['cost_usd']):>11} {usd(run['retries']['cost_usd']):>10} "
            f"{'-' if wall is None else f'{wall:.1f}s':>8}"
        )
    lines += ["", "total:", *_format_account(report["total"])]
    return "\n".join(lines)


def _format_run(run: dict[str, Any]) -> list[str]:
    time_ = run["time"]
    reason = f": {run['reason']}" if run["reason"] else ""
    exit_code = "" if run["exit_code"] is None else f" (exit {run['exit_code']})"
    lines = [
        f"run {run['run_id']} of job {run['job']} ({run['run_dir']})",
        f"state: {run['state']}{exit_code}{reason}",
        f"started {run['started_at']}, ended {run['ended_at'] or '(not finished)'}",
        *_format_account(run, run["input_rows"]),
        "answers: " + answers_text(run["answers"], run["rows"]["ok"]),
        "stop reasons: "
        + (", ".join(f"{k} {count(v)}" for k, v in run["rows_by_stop_reason"].items()) or "none"),
        "latency ms: " + _format_percentiles(run["latency_ms"]),
        "ttft ms:    " + _format_percentiles(run["ttft_ms"]),
        f"wall time: {seconds(time_['wall_time_s'])} ({per_second(time_['rows_per_s'])}) over "
        f"{time_['sessions']} session{'s' if time_['sessions'] != 1 else ''}, gaps left out; "
        f"busy {seconds(time_['active_s'])}; {per_second(time_['requests_per_s'], 'req')}, "
        f"{per_second(time_['output_tokens_per_s'], 'output tokens')}",
        "waiting: "
        + ", ".join(
            [f"{k} {seconds(v)}" for k, v in time_["rate_limit_wait_s"].items()]
            + [f"retry backoff {seconds(time_['retry_backoff_s'])}"]
        ),
    ]
    if run["errors"]:
        lines.append("errors:")
        for error in run["errors"]:
            ids = ", ".join(error["example_ids"])
            lines.append(f"  {error['rows']:>7,} {error['error_type']}  (e.g. {ids})")
    if run["resume_command"]:
        lines.append(f"resume: {run['resume_command']}")
    lines += describe(run["prices"])
    lines += [f"warning: {warning}" for warning in run.get("warnings", [])]
    return lines


def _format_account(account_: dict[str, Any], input_rows: int | None = None) -> list[str]:
    rows, retries = account_["rows"], account_["retries"]
    of = f"of {count(input_rows)} input rows" if input_rows is not None else "in all"
    lines = [
        f"rows: {rows['ok']:,} ok, {rows['error']:,} error, {rows['invalid']:,} invalid "
        f"{of}; {account_['attempts']:,} attempts",
        f"{'model':<28} {'rows':>7} {'input':>12} {'output':>12} {'cache write':>12} "
        f"{'cache read':>12} {'cost':>11}",
    ]
    entries = [*account_["by_model"].items(), ("total", {**account_, "rows": rows["ok"]})]
    for name, entry in entries:
        t = entry["tokens"]
        lines.append(
            f"{name:<28} {entry['rows']:>7,} {t['input_tokens']:>12,} {t['output_tokens']:>12,} "
            f"{t['cache_creation_input_tokens']:>12,} {t['cache_read_input_tokens']:>12,} "
            f"{usd(entry['cost_usd']):>11}"
        )
    lines.append(f"cost: {cost_text(account_)}")
    lines.append(
        f"retries: {retries['failed_attempts']:,} failed attempts, "
        f"{retries['input_tokens']:,} input + {retries['output_tokens']:,} output tokens, "
        f"{usd(retries['cost_usd'])}"
        + (
            " (" + ", ".join(f"{k} {v:,}" for k, v in retries["by_error_type"].items()) + ")"
            if retries["by_error_type"]
            else ""
        )
    )
    lines.append(f"spend (rows + retries): {usd(account_['spend_usd'])}")
    if account_.get("batch"):
        lines.append(batch_text(account_["batch"]))
    return lines


def _format_percentiles(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {_num(v, '')}" for k, v in values.items())


def _num(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.1f}{unit}"
