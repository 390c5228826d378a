"""`runner report --html`: one self-contained HTML page with the charts of a run or a job.

The figures come from `runner.report.build_report`; the charts are drawn from the
run's own Parquet files with matplotlib and inlined as SVG, so the page needs no
script, no font and no network to open (text falls back to the browser's sans-serif).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from runner.accounting import (
    ACCOUNT_COLUMNS,
    RunReader,
    account,
    billed_model,
    cost_text,
    usd,
)
from runner.ledger import build_ledger, is_ledger
from runner.models import TOKEN_FIELDS, Status
from runner.report import build_report, find_runs

# Matplotlib's SVG backend: text as <text> (small, selectable), no date in the metadata,
# and a fixed salt so the same run gives the same page.
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "runner",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_OK, _FAIL, _INK = "#3b7dd8", "#d8613b", "#555555"
_TOKEN_COLOURS = ("#6c5ba7", "#b7a9e0", "#6a9f4b", "#b6d69f")
CHART_COLUMNS = (*ACCOUNT_COLUMNS, "latency_ms", "ttft_ms", "error_type")
TIME_BINS = 60
MIN_BIN_S = 0.25
HIST_BINS = 40


def _frames(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Results and attempts of every run under `path` (no output text), attempts with a model."""
    _, runs = find_runs(path)
    results, attempts = [], []
    for run_dir in runs:
        reader = RunReader(run_dir)
        lazy = reader.results(CHART_COLUMNS)
        # Charts name a row by the model it is billed as, as the account does.
        run_results = lazy.with_columns(billed_model(lazy).alias("model")).collect()
        results.append(run_results)
        model = run_results.select("id", pl.col("model")).unique("id")
        attempts.append(reader.attempts().collect().join(model, on="id", how="left"))
    return pl.concat(results, how="diagonal_relaxed"), pl.concat(attempts, how="diagonal_relaxed")


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", color=_INK, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _busy_integral(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sum of max(0, t - time) over `times`, at each t of `at` (sorting, not a full grid).

    Attempts in flight at t = started by t minus ended by t, so its integral up to t is
    this sum over the starts minus the same sum over the ends: the mean per time bin
    follows without sampling (a sampled count would miss short bursts).
    """
    ordered = np.sort(times)
    before = np.searchsorted(ordered, at, "right")
    prefix = np.concatenate(([0.0], np.cumsum(ordered)))
    return before * at - prefix[before]


def _throughput(fig: Figure, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
    """Attempts finished per second (ok / failed) and attempts in flight, over time."""
    top, bottom = fig.subplots(2, 1, sharex=True)
    timed = attempts.drop_nulls(["started_at", "latency_ms"])
    if timed.is_empty():
        _no_data(top, "attempts")
        _no_data(bottom, "attempts")
        return
    starts = np.array([t.timestamp() for t in timed["started_at"]])
    ends = starts + timed["latency_ms"].to_numpy() / 1000.0
    origin = starts.min()
    starts, ends = starts - origin, ends - origin
    # At most TIME_BINS bars, none narrower than MIN_BIN_S (a short run would look like noise).
    span = max(ends.max(), MIN_BIN_S)
    bins = max(1, min(TIME_BINS, int(span / MIN_BIN_S)))
    edges = np.linspace(0.0, span, bins + 1)
    width = edges[1] - edges[0]
    ok = (timed["outcome"] == "ok").to_numpy()
    ok_counts, _ = np.histogram(ends[ok], edges)
    fail_counts, _ = np.histogram(ends[~ok], edges)
    top.bar(edges[:-1], ok_counts / width, width, align="edge", color=_OK, label="ok")
    top.bar(
        edges[:-1],
        fail_counts / width,
        width,
        bottom=ok_counts / width,
        align="edge",
        color=_FAIL,
        label="failed",
    )
    top.set_ylabel("attempts / s")
    top.legend(frameon=False, loc="upper right")
    in_flight = np.diff(_busy_integral(starts, edges) - _busy_integral(ends, edges)) / width
    bottom.stairs(in_flight, edges, fill=True, color=_INK, alpha=0.35)
    bottom.set_ylabel("in flight (mean)")
    bottom.set_xlabel("seconds since the first attempt")


def _distributions(fig: Figure, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
    """Latency and time to first text of ok rows, with their median and p95."""
    ok = results.filter(pl.col("status") == Status.OK.value)
    for ax, column, title in zip(
        fig.subplots(1, 2),
        ("latency_ms", "ttft_ms"),
        ("latency", "time to first text"),
        strict=True,
    ):
        values = ok[column].drop_nulls().to_numpy()
        if values.size == 0:
            _no_data(ax, f"{title} data")
            continue
        ax.hist(values, bins=HIST_BINS, color=_OK)
        for q, style in ((50, "-"), (95, "--")):
            value = np.percentile(values, q)
            ax.axvline(value, color=_FAIL, linestyle=style, label=f"p{q} {value:,.0f} ms")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("rows")
        ax.legend(frameon=False)


def _per_model(fig: Figure, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
    """Cost (rows and retries) and tokens by kind, per model."""
    cost_ax, token_ax = fig.subplots(1, 2)
    ok = results.filter(pl.col("status") == Status.OK.value)
    models = sorted(set(ok["model"].drop_nulls()) | set(attempts["model"].drop_nulls()))
    if not models:
        _no_data(cost_ax, "model")
        _no_data(token_ax, "model")
        return
    failed = attempts.filter(pl.col("outcome") != "ok")

    def by_model(frame: pl.DataFrame, column: str) -> np.ndarray:
        sums = dict(frame.group_by("model").agg(pl.col(column).sum()).iter_rows())
        return np.array([float(sums.get(m) or 0.0) for m in models])

    y = np.arange(len(models))
    # Dollars from the account (the one owner of totals); tokens drawn from the rows.
    account = account_of(results, failed)
    rows_cost = np.array(
        [float(account["by_model"].get(m, {}).get("cost_usd") or 0.0) for m in models]
    )
    retry_cost = np.array(
        [float(account["by_model"].get(m, {}).get("retry_cost_usd") or 0.0) for m in models]
    )
    cost_ax.barh(y, rows_cost, color=_OK, label="rows")
    cost_ax.barh(y, retry_cost, left=rows_cost, color=_FAIL, label="retries")
    cost_ax.set_yticks(y, models)
    cost_ax.set_ylim(-1, len(models))
    cost_ax.set_xlabel("USD")
    cost_ax.set_title("cost")
    left = np.zeros(len(models))
    kinds = zip(
        TOKEN_FIELDS, ("input", "output", "cache write", "cache read"), _TOKEN_COLOURS, strict=True
    )
    for column, label, colour in kinds:
        values = by_model(ok, column)
        token_ax.barh(y, values, left=left, color=colour, label=label)
        left += values
    token_ax.set_yticks(y, [""] * len(models))
    token_ax.set_ylim(-1, len(models))
    token_ax.set_xlabel("tokens")
    token_ax.set_title("tokens")
    fig.legend(loc="outside lower center", ncols=6, frameon=False)


def _errors(fig: Figure, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
    """Failed attempts (retried or not) and failed rows, by error type."""
    ax = fig.subplots()
    failed = attempts.filter(pl.col("outcome") != "ok")
    bad_rows = results.filter(pl.col("status") != Status.OK.value)
    by_attempt = dict(failed.group_by("error_type").len().iter_rows())
    by_row = dict(bad_rows.group_by("error_type").len().iter_rows())
    types = sorted(set(by_attempt) | set(by_row), key=lambda t: -(by_attempt.get(t, 0)))
    if not types:
        _no_data(ax, "errors")
        return
    y = np.arange(len(types))
    ax.barh(y - 0.2, [by_attempt.get(t, 0) for t in types], 0.4, color=_FAIL, label="attempts")
    ax.barh(y + 0.2, [by_row.get(t, 0) for t in types], 0.4, color=_INK, label="rows")
    ax.set_yticks(y, [str(t) for t in types])
    ax.invert_yaxis()
    ax.set_xlabel("count")
    ax.legend(frameon=False)


def _retry_share(fig: Figure, results: pl.DataFrame, attempts: pl.DataFrame) -> None:
    """How much of the spend went to attempts that failed and were retried."""
    ax = fig.subplots()
    account = account_of(results, attempts)
    rows = float(account["cost_usd"] or 0.0)
    retries = float(account["retries"]["cost_usd"] or 0.0)
    if rows + retries <= 0:
        _no_data(ax, "priced spend")
        return
    ax.pie(
        [rows, retries],
        labels=[f"rows ${rows:,.4f}", f"retries ${retries:,.4f}"],
        colors=[_OK, _FAIL],
        autopct=lambda share: f"{share:.1f}%" if share > 0 else "",
        startangle=90,
        wedgeprops={"width": 0.45},
    )
    ax.set_aspect("equal")


Chart = Callable[[Figure, pl.DataFrame, pl.DataFrame], None]
CHARTS: tuple[tuple[str, str, Chart, tuple[float, float]], ...] = (
    ("throughput", "Throughput and concurrency over time", _throughput, (9, 4.5)),
    ("latency", "Latency and TTFT distributions (ok rows)", _distributions, (9, 3.2)),
    ("per-model", "Cost and tokens per model", _per_model, (9, 3)),
    ("errors", "Errors by type", _errors, (6, 3)),
    ("retry-share", "Retries' share of the spend", _retry_share, (4.5, 3)),
)


def _svg(
    draw: Chart, size: tuple[float, float], results: pl.DataFrame, attempts: pl.DataFrame
) -> str:
    """One chart as inline SVG (no XML prolog, so it can sit inside HTML)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig, results, attempts)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def account_of(results: pl.DataFrame, attempts: pl.DataFrame) -> dict[str, Any]:
    """The account of frames already read (the charts' own copy of the run)."""
    return account(results.lazy(), attempts.lazy())


def _headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The totals shown above the charts, from the report's account."""
    account = report if report["kind"] == "run" else report["total"]
    rows, tokens, retries = account["rows"], account["tokens"], account["retries"]
    cells = [
        ("rows", f"{rows['ok']:,} ok · {rows['error']:,} error · {rows['invalid']:,} invalid"),
        ("tokens", f"{tokens['input_tokens']:,} in · {tokens['output_tokens']:,} out"),
        (
            "cache",
            f"{tokens['cache_creation_input_tokens']:,} write · "
            f"{tokens['cache_read_input_tokens']:,} read",
        ),
        ("cost", f"{cost_text(account)} rows + {usd(retries['cost_usd'])} retries"),
        ("attempts", f"{account['attempts']:,} ({retries['failed_attempts']:,} failed)"),
    ]
    if report["kind"] == "run":
        time_ = report["time"]
        wall = time_["wall_time_s"]
        cells.append(("wall time", "n/a" if wall is None else f"{wall:,.1f} s"))
        cells.append(
            (
                "latency p50/p90/p99",
                " / ".join(
                    "n/a" if v is None else f"{v:,.0f}" for v in report["latency_ms"].values()
                )
                + " ms",
            )
        )
    else:
        cells.append(("runs", f"{len(report['runs'])}"))
    return cells


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem} .sub{color:#666;margin-top:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem}
dt{color:#666} dd{margin:0;font-variant-numeric:tabular-nums}
figure{margin:2rem 0} figcaption{font-weight:600;margin-bottom:.4rem}
figure svg{max-width:100%;height:auto}
table{border-collapse:collapse;margin:1.5rem 0} td,th{padding:.2rem .6rem;text-align:right}
"""


def _spend_per_day(fig: Figure, ledger: dict[str, Any]) -> None:
    """Spend per day (rows and retries), the ledger's view over time."""
    ax = fig.subplots()
    days = list(ledger["by_day"])
    rows = np.array([float(v["cost_usd"] or 0.0) for v in ledger["by_day"].values()])
    retries = np.array([float(v["retry_cost_usd"] or 0.0) for v in ledger["by_day"].values()])
    x = np.arange(len(days))
    ax.bar(x, rows, color=_OK, label="rows")
    ax.bar(x, retries, bottom=rows, color=_FAIL, label="retries")
    ax.set_xticks(x, days, rotation=60, ha="right")
    ax.set_ylabel("USD")
    ax.legend(frameon=False)


def render_ledger_html(ledger: dict[str, Any]) -> str:
    """The ledger's page: spend per day as a chart, then per day, per job and per model."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        _spend_per_day(fig, ledger)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    columns = ("runs", "rows", "input_tokens", "output_tokens", "cost_usd", "retry_cost_usd")
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


def render_html(report: dict[str, Any], results: pl.DataFrame, attempts: pl.DataFrame) -> str:
    """The whole page: title, headline figures and every chart inline."""
    name = report["run_id"] if report["kind"] == "run" else report["job"]
    where = report["run_dir"] if report["kind"] == "run" else report["job_dir"]
    cells = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _headline(report)
    )
    figures = "".join(
        f'<figure class="chart" id="chart-{key}"><figcaption>{html.escape(title)}</figcaption>'
        f"{_svg(draw, size, results, attempts)}</figure>"
        for key, title, draw, size in CHARTS
    )
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>runner report: {html.escape(name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>runner report: {html.escape(report['kind'])} {html.escape(name)}</h1>"
        f'<p class="sub">{html.escape(where)} · made {made}</p>'
        f'<dl id="headline">{cells}</dl>{figures}</body></html>\n'
    )


def write_html_report(path: Path, out: Path, since: date | None = None) -> None:
    """Write the HTML report of a run dir, a job dir or a ledger folder to `out` (atomically)."""
    if is_ledger(path):
        page = render_ledger_html(build_ledger(path, since))
    else:
        report = build_report(path)
        results, attempts = _frames(path)
        page = render_html(report, results, attempts)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
