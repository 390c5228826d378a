"""The ledger across runs: spend per day, per job and per model of a folder of jobs.

`runner report reports/` sums every run under the folder (any depth of jobs and runs).
Each run contributes its `summary.json` (the account written when it ended); a run
with no summary (killed, or still going) is accounted from its files, journal included.
A run's spend counts on the day it started (UTC). The dict's shape:

    {"kind": "ledger", "root", "since", "runs", "total": LINE,
     "by_day": {day: LINE}, "by_job": {job: LINE}, "by_model": {model: LINE}}
    LINE = {"runs", "rows", "input_tokens", "output_tokens", "cost_usd", "retry_cost_usd",
            "spend_usd", "priced_rows", "unpriced_rows"}

Per model, `retry_cost_usd` is what the failed attempts of that model's rows cost.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from runner.accounting import RunReader, account, usd
from runner.errors import UsageError

_NUMBERS = ("rows", "input_tokens", "output_tokens", "priced_rows", "unpriced_rows")
_MONEY = ("cost_usd", "retry_cost_usd", "spend_usd")


def is_ledger(path: Path) -> bool:
    """Whether `path` is a folder of jobs (not a run dir, not a job dir of runs)."""
    if not path.is_dir() or (path / "run.json").is_file():
        return False
    children = [p for p in path.iterdir() if p.is_dir()]
    if any((child / "run.json").is_file() for child in children):
        return False
    return any((grandchild / "run.json").is_file() for grandchild in path.glob("*/*"))


def build_ledger(root: Path, since: date | None = None) -> dict[str, Any]:
    """Spend per day, per job and per model of every run under `root` (started since `since`)."""
    runs, models = [], []
    for run_json in sorted(root.glob("**/run.json")):
        line = _run_line(run_json.parent, since)
        if line is not None:
            run, per_model = line
            runs.append(run)
            models += per_model
    if not runs:
        after = f" started on or after {since}" if since else ""
        raise UsageError(f"{root}: no runs{after}")
    run_frame = pl.DataFrame(runs)
    model_frame = pl.DataFrame(models, schema=_model_schema())
    return {
        "kind": "ledger",
        "root": str(root),
        "since": since.isoformat() if since else None,
        "runs": run_frame.height,
        "total": _lines(run_frame.with_columns(pl.lit("all").alias("key")))["all"],
        "by_day": _lines(run_frame.rename({"day": "key"})),
        "by_job": _lines(run_frame.rename({"job": "key"})),
        "by_model": _lines(model_frame.rename({"model": "key"})),
    }


def _run_line(run_dir: Path, since: date | None) -> tuple[dict, list[dict]] | None:
    """One run's ledger line and its per-model lines, or None if it started before `since`."""
    info = _json(run_dir / "run.json")
    started = str(info.get("first_started_at") or info.get("started_at") or "")
    day = started[:10] or "unknown"
    if since is not None and (day == "unknown" or date.fromisoformat(day) < since):
        return None
    summary = _json(run_dir / "summary.json") if info.get("ended_at") else {}
    if "by_model" not in summary:
        reader = RunReader(run_dir)
        summary = account(reader.results(), reader.attempts())
    job = (info.get("job") or {}).get("name") or run_dir.parent.name
    keys = {"day": day, "job": job, "run": run_dir.name}
    run = {**keys, **_figures(summary, summary["retries"]["cost_usd"]), "runs": 1}
    per_model = [
        {**keys, "model": name, **_figures(entry, entry.get("retry_cost_usd")), "runs": 1}
        for name, entry in summary["by_model"].items()
    ]
    return run, per_model


def _figures(entry: dict[str, Any], retry_cost: float | None) -> dict[str, Any]:
    tokens = entry["tokens"]
    rows = entry["rows"]["ok"] if isinstance(entry["rows"], dict) else entry["rows"]
    unpriced = entry["unpriced_rows"]
    cost = entry["cost_usd"]
    return {
        "rows": rows,
        "input_tokens": tokens["input_tokens"],
        "output_tokens": tokens["output_tokens"],
        "cost_usd": cost,
        "retry_cost_usd": retry_cost,
        # No price and no priced retry: no dollar figure, never $0.
        "spend_usd": None if cost is None and not retry_cost else (cost or 0) + (retry_cost or 0),
        "priced_rows": rows - unpriced,
        "unpriced_rows": unpriced,
    }


def _model_schema() -> dict[str, Any]:
    keys = {"day": pl.String, "job": pl.String, "run": pl.String, "model": pl.String}
    return {**keys, **dict.fromkeys(_NUMBERS, pl.Int64), **dict.fromkeys(_MONEY, pl.Float64)} | {
        "runs": pl.Int64
    }


def _lines(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Sum by `key`; a money column stays None where no run had a price."""
    grouped = (
        frame.group_by("key")
        .agg(
            pl.col("run").n_unique().alias("runs"),
            *(pl.col(name).sum() for name in _NUMBERS),
            *(
                pl.when(pl.col(name).is_not_null().any()).then(pl.col(name).sum()).alias(name)
                for name in _MONEY
            ),
        )
        .sort("key")
    )
    return {
        str(row.pop("key")): {
            **row,
            **{m: None if row[m] is None else round(row[m], 10) for m in _MONEY},
        }
        for row in grouped.iter_rows(named=True)
    }


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable: {exc}") from None


def format_ledger(ledger: dict[str, Any]) -> str:
    """The ledger for a terminal: one table per day, per job and per model, then the total."""
    since = f" since {ledger['since']}" if ledger["since"] else ""
    lines = [f"ledger of {ledger['root']}: {ledger['runs']:,} runs{since}"]
    for title, key in (("day", "by_day"), ("job", "by_job"), ("model", "by_model")):
        lines += ["", _header(title)]
        lines += [_row(name, line) for name, line in ledger[key].items()]
    lines += ["", _row("total", ledger["total"])]
    total = ledger["total"]
    if total["unpriced_rows"]:
        lines.append(f"({total['unpriced_rows']:,} rows unpriced: not in the dollars)")
    return "\n".join(lines)


def _header(title: str) -> str:
    return (
        f"{title:<28} {'runs':>5} {'rows':>9} {'input':>13} {'output':>12} "
        f"{'cost':>12} {'retries':>10} {'spend':>12} {'unpriced':>8}"
    )


def _row(name: str, line: dict[str, Any]) -> str:
    return (
        f"{name:<28} {line['runs']:>5,} {line['rows']:>9,} {line['input_tokens']:>13,} "
        f"{line['output_tokens']:>12,} {usd(line['cost_usd']):>12} "
        f"{usd(line['retry_cost_usd']):>10} {usd(line['spend_usd']):>12} "
        f"{line['unpriced_rows']:>8,}"
    )
