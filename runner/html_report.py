"""`runner report --html`: one self-contained page that answers "how did last night go?".

At the top, what the morning needs first: the run's state and exit code, start and end,
model, settings, rows by status and how many answers are usable, and the cost with what
retries cost (for a job folder, one line per run). Then the charts (runner.html_charts),
then the failed rows with their messages. Every figure comes from `build_report`, so the
page says what `runner report` and summary.json say. No script, no font, no network.
"""

from __future__ import annotations

import html
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from runner.accounting import cost_text, usd
from runner.answers import answers_text
from runner.errors import UsageError
from runner.html_charts import (
    CHARTS,
    FAIL_COLOUR,
    OK_COLOUR,
    Frames,
    dollars,
    figure_svg,
    load_frames,
    svg,
)
from runner.ledger import build_ledger, is_ledger
from runner.models import Status
from runner.outcome import count, per_second, seconds
from runner.report import build_report, read_run_json

FAILED_ROWS_SHOWN = 100
MESSAGE_CHARS = 300


def _when(iso: str | None) -> str:
    """An ISO time as the page shows it: UTC to the second."""
    if not iso:
        return "n/a"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(run: dict[str, Any]) -> str:
    code = "" if run["exit_code"] is None else f", exit {run['exit_code']}"
    reason = f": {run['reason']}" if run["reason"] else ""
    return f"{run['state']}{code}{reason}"


def _rows(account: dict[str, Any], input_rows: int | None) -> str:
    rows = account["rows"]
    of = f" of {count(input_rows)} input rows" if input_rows is not None else ""
    return f"{rows['ok']:,} ok · {rows['error']:,} error · {rows['invalid']:,} invalid{of}"


def _cost(account: dict[str, Any]) -> str:
    retries = account["retries"]["cost_usd"]
    return f"{cost_text(account)} rows + {usd(retries)} retries = {usd(account['spend_usd'])}"


def _settings(run_dir: str) -> str:
    """The settings a morning reader checks first, from run.json's job."""
    job = read_run_json(Path(run_dir)).get("job") or {}
    limits, request, retry = job.get("limits", {}), job.get("request", {}), job.get("retry", {})
    meters = ", ".join(
        f"{name} {limits[key]:,}"
        for name, key in (
            ("rpm", "requests_per_minute"),
            ("itpm", "input_tokens_per_minute"),
            ("otpm", "output_tokens_per_minute"),
        )
        if limits.get(key)
    )
    return (
        f"mode {job.get('mode') or 'stream'} · concurrency {limits.get('concurrency', '?')} · "
        f"{meters or 'no rate limits given'} · max_tokens {request.get('max_tokens', '?')} · "
        f"max attempts {retry.get('max_attempts', '?')} · {job.get('base_url', '?')}"
    )


def _headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The morning question first: state, when, what ran, rows, usable answers, cost."""
    if report["kind"] == "job":
        total = report["total"]
        states: dict[str, int] = {}
        for run in report["runs"]:
            states[run["state"]] = states.get(run["state"], 0) + 1
        return [
            ("runs", ", ".join(f"{n} {state}" for state, n in states.items())),
            ("rows", _rows(total, None)),
            ("cost", _cost(total)),
            ("models", ", ".join(total["by_model"]) or "none"),
            ("tokens", f"{total['tokens']['input_tokens']:,} in · "
                       f"{total['tokens']['output_tokens']:,} out"),
        ]  # fmt: skip
    time_, tokens, retries = report["time"], report["tokens"], report["retries"]
    cells = [
        ("state", _state(report)),
        ("started", _when(report["started_at"])),
        ("ended", _when(report["ended_at"]) if report["ended_at"] else "not ended"),
        (
            "wall time",
            f"{seconds(time_['wall_time_s'])} ({per_second(time_['rows_per_s'])}) over "
            f"{time_['sessions']} session{'s' if time_['sessions'] != 1 else ''}",
        ),
        ("model", ", ".join(report["by_model"]) or "none"),
        ("settings", _settings(report["run_dir"])),
        ("rows", _rows(report, report["input_rows"])),
        ("answers", answers_text(report["answers"], report["rows"]["ok"])),
        ("cost", _cost(report)),
        ("tokens", f"{tokens['input_tokens']:,} in · {tokens['output_tokens']:,} out · "
                   f"{tokens['cache_creation_input_tokens']:,} cache write · "
                   f"{tokens['cache_read_input_tokens']:,} cache read"),
        ("attempts", f"{report['attempts']:,} ({retries['failed_attempts']:,} failed)"),
        ("latency", _percentiles(report["latency_ms"])),
        ("time to first text", _percentiles(report["ttft_ms"])),
    ]  # fmt: skip
    if report["resume_command"]:
        cells.append(("resume", report["resume_command"]))
    return cells


def _percentiles(values: dict[str, float | None]) -> str:
    return " · ".join(f"{k} {'n/a' if v is None else f'{v:,.0f}'}" for k, v in values.items())


def _table(table_id: str, head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><tr>{cells}</tr>{body}</table>'


def _runs_table(report: dict[str, Any]) -> str:
    """A job folder: one line per run, the morning question for each."""
    head: tuple[str, ...] = (
        "run",
        "state",
        "exit",
        "started",
        "rows ok",
        "error",
        "invalid",
        "usable",
    )
    head += ("cost", "retries", "wall time", "rows/s")
    rows = [
        (
            run["run_id"], run["state"], "-" if run["exit_code"] is None else run["exit_code"],
            _when(run["started_at"]), f"{run['rows']['ok']:,}", f"{run['rows']['error']:,}",
            f"{run['rows']['invalid']:,}", f"{run['answers']['usable']:,}",
            usd(run["cost_usd"]), usd(run["retries"]["cost_usd"]),
            seconds(run["time"]["wall_time_s"]), _number(run["time"]["rows_per_s"]),
        )
        for run in report["runs"]
    ]  # fmt: skip
    return "<h2>Runs</h2>" + _table("runs", head, rows)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _failed_rows(frames: Frames, per_run: bool) -> str:
    """The rows that did not end ok, with their messages: the first FAILED_ROWS_SHOWN."""
    failed = frames.results.filter(pl.col("status") != Status.OK.value)
    if failed.is_empty():
        return '<h2>Failed rows</h2><p id="failed-count">No failed rows.</p>'
    shown = failed.head(FAILED_ROWS_SHOWN)
    head: tuple[str, ...] = ("run",) if per_run else ()
    head += ("id", "status", "error", "attempts", "message")
    rows = []
    for row in shown.iter_rows(named=True):
        message = row["error_message"] or ""
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "…"
        cells = (row["run_id"],) if per_run else ()
        rows.append((*cells, row["id"], row["status"], row["error_type"], row["attempts"], message))
    more = f"; the first {shown.height:,} below" if failed.height > shown.height else ""
    note = f'<p id="failed-count">{failed.height:,} failed rows{more}.</p>'
    return "<h2>Failed rows</h2>" + note + _table("failed-rows", head, rows)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:62rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:2rem}
.sub{color:#666;margin-top:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem}
dt{color:#666} dd{margin:0;font-variant-numeric:tabular-nums}
figure{margin:2rem 0} figcaption{font-weight:600;margin-bottom:.4rem}
figure svg{max-width:100%;height:auto}
table{border-collapse:collapse;margin:1rem 0;font-variant-numeric:tabular-nums}
td,th{padding:.2rem .6rem;text-align:right;border-bottom:1px solid #eee;vertical-align:top}
#failed-rows td:last-child{text-align:left;max-width:28rem}
"""


def _spend_per_day(fig: Figure, ledger: dict[str, Any]) -> None:
    """Spend per day (rows and retries), the ledger's view over time."""
    ax = fig.subplots()
    days = list(ledger["by_day"])
    rows = np.array([float(v["cost_usd"] or 0.0) for v in ledger["by_day"].values()])
    retries = np.array([float(v["retry_cost_usd"] or 0.0) for v in ledger["by_day"].values()])
    x = np.arange(len(days))
    ax.bar(x, rows, color=OK_COLOUR, label="rows")
    ax.bar(x, retries, bottom=rows, color=FAIL_COLOUR, label="retries")
    ax.set_xticks(x, days, rotation=60, ha="right")
    ax.set_ylabel("USD")
    ax.yaxis.set_major_formatter(FuncFormatter(dollars))
    ax.legend(frameon=False)


def render_ledger_html(ledger: dict[str, Any]) -> str:
    """The ledger's page: spend per day as a chart, then per day, per job and per model."""
    svg = figure_svg(lambda fig: _spend_per_day(fig, ledger), (9, 3.5))
    columns: tuple[str, ...] = (
        "runs",
        "rows",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "retry_cost_usd",
    )
    columns += ("spend_usd", "unpriced_rows")
    tables = []
    for title, key in (("day", "by_day"), ("job", "by_job"), ("model", "by_model")):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in (title, *columns))
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{html.escape(_cell(c, line[c]))}</td>" for c in columns)
            + "</tr>"
            for name, line in ledger[key].items()
        )
        tables.append(f'<table id="ledger-{title}"><tr>{head}</tr>{body}</table>')
    total = ledger["total"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>runner ledger</title><style>{_CSS}</style></head><body>"
        f"<h1>runner ledger: {html.escape(ledger['root'])}</h1>"
        f'<p class="sub">{ledger["runs"]:,} runs · spend {usd(total["spend_usd"])}</p>'
        f'<figure class="chart" id="chart-spend-per-day"><figcaption>Spend per day'
        f"</figcaption>{svg}</figure>{''.join(tables)}</body></html>\n"
    )


def _cell(column: str, value: Any) -> str:
    return usd(value) if column.endswith("_usd") else f"{value:,}"


def render_html(report: dict[str, Any], frames: Frames) -> str:
    """The whole page: the morning's answers, the charts, then the failed rows."""
    is_run = report["kind"] == "run"
    name = report["run_id"] if is_run else report["job"]
    where = report["run_dir"] if is_run else report["job_dir"]
    cells = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _headline(report)
    )
    figures = "".join(
        f'<figure class="chart" id="chart-{key}"><figcaption>{html.escape(title)}</figcaption>'
        f"{svg(draw, size, frames)}</figure>"
        for key, title, draw, size in CHARTS
    )
    runs = "" if is_run else _runs_table(report)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>runner report: {html.escape(name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>runner report: {html.escape(report['kind'])} {html.escape(name)}</h1>"
        f'<p class="sub">{html.escape(where)} · made {made}</p>'
        f'<dl id="headline">{cells}</dl>{runs}{figures}{_failed_rows(frames, not is_run)}'
        "</body></html>\n"
    )


def write_html_report(path: Path, out: Path, since: date | None = None) -> None:
    """Write the HTML report of a run dir, a job dir or a ledger folder to `out` (atomically)."""
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no directory {out.parent} to write the report in")
    if is_ledger(path):
        page = render_ledger_html(build_ledger(path, since))
    else:
        page = render_html(build_report(path), load_frames(path))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{out}: cannot write the report: {exc.strerror or exc}") from None
