"""What a person or a log collector sees of a run while it goes: live progress.

Three shapes of the same figures (rows done of total, ok/error/invalid, requests and
tokens per second, dollars so far and projected, ETA, concurrency, what the pool waits
on): a rich live display on a terminal, one plain log line every N seconds elsewhere
(cron, CI, a pipe; JSON fields with `--log-format json`), and nothing with `--quiet`.
The display only reads `RunStats` and `limiter.snapshot()` and redraws a few times a
second, so it costs the run next to nothing. What a run says when it ends is in
runner.final_summary.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TextIO

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.accounting import cost_text
from runner.stats import RunStats

log = logging.getLogger("runner")

# Rates are measured over the last RATE_WINDOW_S seconds, so they follow slow-downs.
RATE_WINDOW_S = 10.0
LIVE_INTERVAL_S = 0.25
DEFAULT_PLAIN_INTERVAL_S = 30.0


class Limiter(Protocol):
    """What the display reads of the rate limiter."""

    def snapshot(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters at one moment; two of them make a rate."""

    at: float
    rows: int
    requests: int
    input_tokens: int
    output_tokens: int

    @classmethod
    def of(cls, stats: RunStats, at: float) -> Sample:
        """Read the counters off `stats`."""
        return cls(at, stats.done, stats.requests, stats.input_tokens, stats.output_tokens)


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything one progress line shows (None where it is not known yet)."""

    rows_done: int
    total_rows: int | None
    # Rows already ok in earlier sessions: counted in rows and ok, not in the dollars.
    skipped: int
    ok: int
    error: int
    invalid: int
    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    cost: dict[str, Any]
    projected_cost_usd: float | None
    # " · $X spent of the $Y cap" under --max-cost (this run id's spend), else "".
    budget: str
    eta_s: float | None
    in_flight: int
    concurrency: int | None
    waiting_on: str
    elapsed_s: float
    # Rows waiting for another attempt, by why the last one failed: "12 (connect_error 12)".
    retrying: str = "none"


def _waiting_on(snapshot: dict[str, Any]) -> str:
    """The limiter's `waiting_on` as words, whatever shape it has (name, list, or nothing)."""
    value = snapshot.get("waiting_on")
    if not value:
        return "nothing"
    if isinstance(value, dict):
        value = [k for k, v in value.items() if v]
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value) or "nothing"
    return str(value)


def figures(stats: RunStats, snapshot: dict[str, Any], first: Sample, last: Sample) -> Figures:
    """The progress figures from the run's totals and the rates between two samples."""
    span = last.at - first.at
    rate = lambda a, b: (b - a) / span if span > 0 else 0.0  # noqa: E731
    rows_per_s = rate(first.rows, last.rows)
    done = stats.done
    rows_done = done + stats.skipped
    total = stats.total_rows
    remaining = max(total - rows_done, 0) if total is not None else None
    eta = None
    projected = None
    if remaining is not None:
        eta = 0.0 if remaining == 0 else (remaining / rows_per_s if rows_per_s > 0 else None)
        priced = stats.totals.priced_rows
        if priced:
            # Priced rows only: an unpriced row adds no dollars, now or later.
            spent = stats.totals.priced_cost
            projected = spent + spent / done * remaining
    concurrency = snapshot.get("concurrency")
    return Figures(
        rows_done=rows_done,
        total_rows=total,
        skipped=stats.skipped,
        ok=stats.statuses["ok"] + stats.skipped,
        error=stats.statuses["error"],
        invalid=stats.statuses["invalid"],
        requests_per_s=rate(first.requests, last.requests),
        input_tokens_per_s=rate(first.input_tokens, last.input_tokens),
        output_tokens_per_s=rate(first.output_tokens, last.output_tokens),
        cost=stats.totals.figures(),
        projected_cost_usd=projected,
        budget=_budget(stats.budget),
        eta_s=eta,
        in_flight=int(snapshot.get("in_flight", stats.in_flight) or 0),
        concurrency=int(concurrency) if isinstance(concurrency, int | float) else None,
        waiting_on=_waiting_on(snapshot),
        elapsed_s=stats.elapsed,
        retrying=_retrying(stats),
    )


def _budget(budget: Any) -> str:
    if budget is None:
        return ""
    return f" · ${budget.spent:,.4f} spent of the ${budget.cap:,.2f} cap"


def _retrying(stats: RunStats) -> str:
    reasons = [(why, n) for why, n in stats.retrying.most_common() if n > 0]
    if not reasons:
        return "none"
    detail = ", ".join(f"{why} {n}" for why, n in reasons[:3])
    return f"{sum(n for _, n in reasons)} ({detail})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _count(f: Figures) -> str:
    if f.total_rows is None:
        return f"{f.rows_done:,}/? rows"
    share = 100.0 * f.rows_done / f.total_rows if f.total_rows else 100.0
    return f"{f.rows_done:,}/{f.total_rows:,} rows ({share:.0f}%)"


def _parts(f: Figures) -> list[str]:
    """The line's pieces, shared by the plain line and the live display.

    Rows count the whole run (rows ok in earlier sessions included); rates and dollars
    are this session's, and say so once earlier sessions exist.
    """
    projected = f" of ~${f.projected_cost_usd:.4f}" if f.projected_cost_usd is not None else ""
    if f.skipped:
        projected += " this session"
    limit = f"/{f.concurrency}" if f.concurrency is not None else ""
    earlier = f" ({f.skipped:,} from earlier sessions)" if f.skipped else ""
    return [
        f"{_count(f)}, ETA {_duration(f.eta_s)}",
        f"ok {f.ok:,}{earlier} · error {f.error:,} · invalid {f.invalid:,}",
        f"{f.requests_per_s:.1f} req/s · in {f.input_tokens_per_s:,.0f} tok/s · "
        f"out {f.output_tokens_per_s:,.0f} tok/s",
        f"{cost_text(f.cost)}{projected}{f.budget}",
        f"in flight {f.in_flight}{limit} · waiting on {f.waiting_on} · retrying {f.retrying}",
    ]


def progress_line(f: Figures) -> str:
    """One plain line for logs: no colour, no control characters."""
    return "progress: " + " | ".join(_parts(f))


def _fields(f: Figures) -> dict[str, Any]:
    """The figures for JSON log lines, rounded so a collector stores them compactly."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(f).items()}


class _Sampler:
    """Keeps the samples of the last RATE_WINDOW_S seconds (at least two) for the rates."""

    def __init__(self, stats: RunStats) -> None:
        self.samples = deque([Sample.of(stats, time.monotonic())])

    def figures(self, stats: RunStats, limiter: Limiter) -> Figures:
        now = time.monotonic()
        self.samples.append(Sample.of(stats, now))
        while len(self.samples) > 2 and self.samples[1].at <= now - RATE_WINDOW_S:
            self.samples.popleft()
        return figures(stats, limiter.snapshot(), self.samples[0], self.samples[-1])


class PlainProgress:
    """Not a terminal: one log line every `interval` seconds, through the run's log handler."""

    def __init__(self, interval: float = DEFAULT_PLAIN_INTERVAL_S) -> None:
        self.interval = interval

    async def run(self, stats: RunStats, limiter: Limiter) -> None:
        """Log the figures every interval until the run cancels this task."""
        sampler = _Sampler(stats)
        while True:
            await anyio.sleep(self.interval)
            f = sampler.figures(stats, limiter)
            log.info(progress_line(f), extra={"fields": {"event": "progress", **_fields(f)}})


class LiveProgress:
    """A terminal: a live display on stderr, redrawn a few times a second; logs print above it."""

    def __init__(self, console: Console | None = None, interval: float = LIVE_INTERVAL_S) -> None:
        self.console = console or Console(stderr=True)
        self.interval = interval
        # CPU seconds spent drawing, so a benchmark can show what the display costs.
        self.cpu_s = 0.0

    def _render(self, f: Figures) -> Group:
        bar = ProgressBar(total=f.total_rows, completed=f.rows_done, width=30)
        count, statuses, rates, cost, pool = _parts(f)
        head = Table.grid(padding=(0, 1))
        head.add_row(bar, Text(count, style="bold"))
        return Group(head, Text(f"{statuses}   {rates}"), Text(f"cost {cost}   {pool}"))

    def _draw(self, live: Live, sampler: _Sampler, stats: RunStats, limiter: Limiter) -> None:
        started = time.process_time()
        live.update(self._render(sampler.figures(stats, limiter)), refresh=True)
        self.cpu_s += time.process_time() - started

    async def run(self, stats: RunStats, limiter: Limiter) -> None:
        """Redraw until the run cancels this task, then leave the last frame on screen."""
        sampler = _Sampler(stats)
        live = Live(console=self.console, auto_refresh=False, transient=False)
        stderr = sys.stderr
        live.start()
        handlers = _log_to(stderr, sys.stderr)
        try:
            while True:
                self._draw(live, sampler, stats, limiter)
                await anyio.sleep(self.interval)
        finally:
            self._draw(live, sampler, stats, limiter)
            live.stop()
            for handler, stream in handlers:
                handler.setStream(stream)


def _log_to(old: TextIO, new: TextIO) -> list[tuple[logging.StreamHandler, Any]]:
    """Move the run's log handlers from `old` to `new`: rich's proxy prints above the display."""
    if new is old:
        return []
    swapped = []
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            swapped.append((handler, handler.setStream(new)))
    return swapped


def make_progress(
    *,
    quiet: bool = False,
    log_format: str = "text",
    interval: float = DEFAULT_PLAIN_INTERVAL_S,
    stream: TextIO | None = None,
) -> LiveProgress | PlainProgress | None:
    """The display this invocation wants: live on a terminal, plain lines elsewhere, or none."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if log_format == "text" and stream.isatty():
        return LiveProgress(Console(file=stream))
    return PlainProgress(interval)
