"""The charts of `runner report --html`, drawn with matplotlib and inlined as SVG.

Each chart reads the run's (or job's) results and attempts, already loaded by
`load_frames`. Time runs over the sessions only: the gap between a crash and its resume
is drawn as a hatched band of fixed width, so it shows without stretching the axis.
Axes count in thousands (`12k`, `3.4M`), never in `1e6` offsets; the percentiles are the
report's own (p50/p90/p99).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from runner.accounting import ACCOUNT_COLUMNS, RunReader, account, billed_model
from runner.models import TOKEN_FIELDS, Status
from runner.outcome import session_spans, sessions_of
from runner.report import PERCENTILES, find_runs, read_run_json

# Matplotlib's SVG backend: text as <text> (small, selectable), no date in the metadata,
# and a fixed salt so the same run gives the same page.
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "runner",
    # Dollar amounts are text, not mathtext between two `$`.
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
OK_COLOUR, FAIL_COLOUR, INK = "#3b7dd8", "#d8613b", "#555555"
_TOKEN_COLOURS = ("#6c5ba7", "#b7a9e0", "#6a9f4b", "#b6d69f")
CHART_COLUMNS: tuple[str, ...] = (
    *ACCOUNT_COLUMNS,
    "latency_ms",
    "ttft_ms",
    "error_type",
    "error_message",
)
CHART_COLUMNS += ("attempts",)
TIME_BINS = 60
MIN_BIN_S = 0.25
HIST_BINS = 40
# A gap between sessions takes this share of the time axis, whatever its length.
GAP_SHARE = 0.04


@dataclass(frozen=True, slots=True)
class Frames:
    """What the charts and tables read: results (with `run_id`), attempts, session spans."""

    results: pl.DataFrame
    attempts: pl.DataFrame
    spans: list[tuple[float, float]]


def load_frames(path: Path) -> Frames:
    """Results and attempts of every run under `path` (no output text), and their sessions."""
    _, runs = find_runs(path)
    results, attempts, spans = [], [], []
    for run_dir in runs:
        reader = RunReader(run_dir)
        lazy = reader.results(CHART_COLUMNS)
        # Charts name a row by the model it is billed as, as the account does.
        run_results = lazy.with_columns(
            billed_model(lazy).alias("model"), pl.lit(run_dir.name).alias("run_id")
        ).collect()
        results.append(run_results)
        model = run_results.select("id", pl.col("model")).unique("id")
        run_attempts = reader.attempts()
        attempts.append(run_attempts.collect().join(model, on="id", how="left"))
        spans += session_spans(sessions_of(read_run_json(run_dir)), run_attempts)
    return Frames(
        pl.concat(results, how="diagonal_relaxed"),
        pl.concat(attempts, how="diagonal_relaxed"),
        sorted(spans),
    )


def compact(value: float, _position: object = None) -> str:
    """An axis label: 950, 12k, 3.4M (never a `1e6` offset)."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def dollars(value: float, _position: object = None) -> str:
    """A dollar axis label: to the cent, and to two figures below a cent."""
    return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${value:.2g}"


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", color=INK, transform=ax.transAxes)
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


class Timeline:
    """Maps epoch seconds onto an axis of running time, each gap a band of fixed width."""

    def __init__(self, spans: list[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = np.array([s for s, _ in merged])
        durations = np.array([e - s for s, e in merged])
        self.gap = GAP_SHARE * max(durations.sum(), MIN_BIN_S)
        self.offsets = np.concatenate(([0.0], np.cumsum(durations)[:-1])) + self.gap * np.arange(
            len(merged)
        )
        self.gaps = [(merged[i - 1][1], merged[i][0]) for i in range(1, len(merged))]
        self.end = float(self.offsets[-1] + durations[-1]) if merged else 0.0

    def __call__(self, epoch: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(self.starts, epoch, "right") - 1, 0, None)
        return self.offsets[index] + (epoch - self.starts[index])

    def draw_gaps(self, ax: Axes, label: bool) -> None:
        """Hatch each gap between sessions, and say how long it was."""
        for i, (ended, resumed) in enumerate(self.gaps, start=1):
            right = self.offsets[i]
            ax.axvspan(right - self.gap, right, color="#dddddd", hatch="//", linewidth=0)
            if label:
                ax.text(
                    right - self.gap / 2, 0.98, f"not running {_clock(resumed - ended)}",
                    rotation=90, ha="center", va="top", fontsize=7, color=INK,
                    transform=ax.get_xaxis_transform(),
                )  # fmt: skip


def _clock(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _throughput(fig: Figure, frames: Frames) -> None:
    """Attempts finished per second (ok / failed) and attempts in flight, over running time."""
    top, bottom = fig.subplots(2, 1, sharex=True)
    timed = frames.attempts.drop_nulls(["started_at", "latency_ms"])
    if timed.is_empty():
        _no_data(top, "attempts")
        _no_data(bottom, "attempts")
        return
    starts = np.array([t.timestamp() for t in timed["started_at"]])
    ends = starts + timed["latency_ms"].to_numpy() / 1000.0
    spans = frames.spans or [(float(starts.min()), float(ends.max()))]
    timeline = Timeline(spans)
    starts, ends = timeline(starts), timeline(ends)
    # At most TIME_BINS bars, none narrower than MIN_BIN_S (a short run would look like noise).
    span = max(float(ends.max()), timeline.end, MIN_BIN_S)
    bins = max(1, min(TIME_BINS, int(span / MIN_BIN_S)))
    edges = np.linspace(0.0, span, bins + 1)
    width = edges[1] - edges[0]
    ok = (timed["outcome"] == "ok").to_numpy()
    ok_rate = np.histogram(ends[ok], edges)[0] / width
    fail_rate = np.histogram(ends[~ok], edges)[0] / width
    top.bar(edges[:-1], ok_rate, width, align="edge", color=OK_COLOUR, label="ok")
    top.bar(
        edges[:-1], fail_rate, width, bottom=ok_rate, align="edge", color=FAIL_COLOUR,
        label="failed",
    )  # fmt: skip
    top.set_ylabel("attempts / s")
    top.legend(frameon=False, loc="upper right")
    in_flight = np.diff(_busy_integral(starts, edges) - _busy_integral(ends, edges)) / width
    bottom.stairs(in_flight, edges, fill=True, color=INK, alpha=0.35)
    bottom.set_ylabel("in flight (mean)")
    bottom.set_xlabel("seconds of running time (hatched: not running, between sessions)")
    for ax in (top, bottom):
        timeline.draw_gaps(ax, label=ax is top)
        ax.yaxis.set_major_formatter(FuncFormatter(compact))


def _distributions(fig: Figure, frames: Frames) -> None:
    """Latency and time to first text of ok rows, with the report's percentiles."""
    ok = frames.results.filter(pl.col("status") == Status.OK.value)
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
        ax.hist(values, bins=HIST_BINS, color=OK_COLOUR)
        for q, style in zip(PERCENTILES, ("-", "--", ":"), strict=True):
            value = np.percentile(values, q)
            ax.axvline(value, color=FAIL_COLOUR, linestyle=style, label=f"p{q} {value:,.0f} ms")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("rows")
        ax.xaxis.set_major_formatter(FuncFormatter(compact))
        ax.legend(frameon=False)


def _per_model(fig: Figure, frames: Frames) -> None:
    """Cost (rows and retries) and tokens by kind, per model."""
    cost_ax, token_ax = fig.subplots(1, 2)
    results, attempts = frames.results, frames.attempts
    ok = results.filter(pl.col("status") == Status.OK.value)
    models = sorted(set(ok["model"].drop_nulls()) | set(attempts["model"].drop_nulls()))
    if not models:
        _no_data(cost_ax, "model")
        _no_data(token_ax, "model")
        return
    y = np.arange(len(models))
    # Dollars from the account (the one owner of totals); tokens drawn from the rows.
    by_model = account(results.lazy(), attempts.lazy())["by_model"]
    rows_cost = np.array([float(by_model.get(m, {}).get("cost_usd") or 0.0) for m in models])
    retry_cost = np.array([float(by_model.get(m, {}).get("retry_cost_usd") or 0.0) for m in models])
    cost_ax.barh(y, rows_cost, color=OK_COLOUR, label="rows")
    cost_ax.barh(y, retry_cost, left=rows_cost, color=FAIL_COLOUR, label="retries")
    cost_ax.set_yticks(y, models)
    cost_ax.set_ylim(-1, len(models))
    cost_ax.set_title("cost")
    cost_ax.xaxis.set_major_formatter(FuncFormatter(dollars))
    left = np.zeros(len(models))
    kinds = zip(
        TOKEN_FIELDS, ("input", "output", "cache write", "cache read"), _TOKEN_COLOURS, strict=True
    )
    for column, label, colour in kinds:
        sums = dict(ok.group_by("model").agg(pl.col(column).sum()).iter_rows())
        values = np.array([float(sums.get(m) or 0.0) for m in models])
        token_ax.barh(y, values, left=left, color=colour, label=label)
        left += values
    token_ax.set_yticks(y, [""] * len(models))
    token_ax.set_ylim(-1, len(models))
    token_ax.set_title("tokens")
    token_ax.xaxis.set_major_formatter(FuncFormatter(compact))
    fig.legend(loc="outside lower center", ncols=6, frameon=False)


def _errors(fig: Figure, frames: Frames) -> None:
    """Failed attempts (retried or not) and failed rows, by error type."""
    ax = fig.subplots()
    failed = frames.attempts.filter(pl.col("outcome") != "ok")
    bad_rows = frames.results.filter(pl.col("status") != Status.OK.value)
    by_attempt = dict(failed.group_by("error_type").len().iter_rows())
    by_row = dict(bad_rows.group_by("error_type").len().iter_rows())
    types = sorted(set(by_attempt) | set(by_row), key=lambda t: -(by_attempt.get(t, 0)))
    if not types:
        _no_data(ax, "errors")
        return
    y = np.arange(len(types))
    ax.barh(
        y - 0.2, [by_attempt.get(t, 0) for t in types], 0.4, color=FAIL_COLOUR, label="attempts"
    )
    ax.barh(y + 0.2, [by_row.get(t, 0) for t in types], 0.4, color=INK, label="rows")
    ax.set_yticks(y, [str(t) for t in types])
    ax.invert_yaxis()
    ax.set_xlabel("count")
    ax.xaxis.set_major_formatter(FuncFormatter(compact))
    ax.legend(frameon=False)


def _retry_share(fig: Figure, frames: Frames) -> None:
    """The spend split into rows and retries: one thin bar, readable at 99.4 / 0.6 %."""
    ax = fig.subplots()
    totals = account(frames.results.lazy(), frames.attempts.lazy())
    rows = float(totals["cost_usd"] or 0.0)
    if totals["retries"]["cost_usd"] is None:
        _no_data(ax, "price for the retries")
        return
    retries = float(totals["retries"]["cost_usd"])
    if rows + retries <= 0:
        _no_data(ax, "priced spend")
        return
    whole = rows + retries
    ax.barh([0], [rows / whole * 100], color=OK_COLOUR, height=0.5)
    ax.barh([0], [retries / whole * 100], left=[rows / whole * 100], color=FAIL_COLOUR, height=0.5)
    ax.set_xlim(0, 100)
    ax.set_yticks([])
    ax.set_xlabel("% of the spend")
    ax.spines["left"].set_visible(False)
    ax.set_title(
        f"rows ${rows:,.4f} ({rows / whole:.1%})  ·  retries ${retries:,.4f} "
        f"({retries / whole:.1%})",
        fontsize=9,
    )


Chart = Callable[[Figure, Frames], None]
CHARTS: tuple[tuple[str, str, Chart, tuple[float, float]], ...] = (
    ("throughput", "Throughput and concurrency over running time", _throughput, (9, 4.5)),
    ("latency", "Latency and time to first text (ok rows)", _distributions, (9, 3.2)),
    ("per-model", "Cost and tokens per model", _per_model, (9, 3)),
    ("errors", "Errors by type", _errors, (6, 3)),
    ("retry-share", "Rows and retries in the spend", _retry_share, (6, 1.3)),
)


def svg(draw: Chart, size: tuple[float, float], frames: Frames) -> str:
    """One chart as inline SVG (no XML prolog, so it can sit inside HTML)."""
    with matplotlib.rc_context(cast(Any, _RC)):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig, frames)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def figure_svg(draw: Callable[[Figure], None], size: tuple[float, float]) -> str:
    """A chart that needs no frames (the ledger's), as inline SVG."""
    return svg(lambda fig, _frames: draw(fig), size, Frames(pl.DataFrame(), pl.DataFrame(), []))
