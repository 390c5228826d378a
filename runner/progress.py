"""What a person or a log collector sees of a run: live progress and the final summary.

Three shapes of the same figures (rows done of total, ok/error/invalid, requests and
tokens per second, dollars so far and projected, ETA, concurrency, what the pool waits
on): a rich live display on a terminal, one plain log line every N seconds elsewhere
(cron, CI, a pipe; JSON fields with `--log-format json`), and nothing until the final
line with `--quiet`. The display only reads `RunStats` and `limiter.snapshot()` and
redraws a few times a second, so it costs the run next to nothing.
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

from runner.accounting import batch_text, cost_text, usd
from runner.answers import answers_text
from runner.logs import emit, iso_time
from runner.outcome import count, per_second, seconds
from runner.stats import RunStats

log = logging.getLogger("runner")

# Rates are measured over the last RATE_WINDOW_S seconds, so they follow slow-downs.
RATE_WINDOW_S = 10.0
LIVE_INTERVAL_S = 0.25
DEFAULT_PLAIN_INTERVAL_S = 30.0

# What to do after each exit code, before the resume command.
_NEXT_STEP = {
    1: "some rows failed; once the cause is fixed, send them again with",
    3: "the run stopped (the API refused it, or the endpoint cannot be reached); "
    "fix the cause above, then resume with",
    4: "a local failure stopped the run; fix it (disk space, open files, permissions), "
    "then resume with",
    5: "the --max-cost budget is spent; to go on, raise it and resume with",
    130: "interrupted; rows already ok are kept, resume with",
}


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


def _log_to(old: TextIO, new: TextIO) -> list[tuple[logging.StreamHandler, TextIO]]:
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


# ---- the final summary -------------------------------------------------------


def most_common_error(stats: RunStats) -> str | None:
    """The error type that failed most rows in this session, with its count."""
    top = stats.error_types.most_common(1)
    return f"{top[0][0]} ({top[0][1]} rows)" if top else None


def summary_fields(outcome: Any) -> dict[str, Any]:
    """The final figures of a run (a `runner.run.RunOutcome`), for lines and JSON alike."""
    summary, stats = outcome.summary, outcome.stats
    session, whole = summary["this_session"], summary["time"]
    fields: dict[str, Any] = {
        "event": "summary",
        "state": summary["state"],
        "reason": summary["reason"],
        "exit_code": outcome.exit_code,
        "input_rows": summary["input_rows"],
        "rows": summary["rows"],
        "answers": summary["answers"],
        "rows_by_stop_reason": summary["rows_by_stop_reason"],
        "tokens": summary["tokens"],
        "cost_usd": summary["cost_usd"],
        "cost": cost_text(summary),
        "priced_rows": summary["priced_rows"],
        "unpriced_rows": summary["unpriced_rows"],
        "unpriced_models": summary["unpriced_models"],
        "retry_cost_usd": summary["retries"]["cost_usd"],
        "wall_time_s": session["wall_time_s"],
        "rows_per_s": session["rows_per_s"],
        "run_wall_time_s": whole["wall_time_s"],
        "run_rows_per_s": whole["rows_per_s"],
        "sessions": whole["sessions"],
        "rows_done": session["rows_done"],
        "rows_skipped": session["rows_skipped"],
        "session_cost_usd": round(stats.cost_usd, 6),
        "report": str(outcome.run_dir),
    }
    if summary.get("batch"):
        fields["batch"] = summary["batch"]
    if summary.get("cache"):
        fields["cache"] = summary["cache"]
    if outcome.exit_code != 0:
        fields["most_common_error"] = most_common_error(stats)
        fields["resume_command"] = summary.get("resume_command")
    return fields


def _state(f: dict[str, Any]) -> str:
    reason = f": {f['reason']}" if f["reason"] else ""
    return f"{f['state']} (exit {f['exit_code']}){reason}"


def _of_input(f: dict[str, Any]) -> str:
    """`of N input rows`: the input's rows, which is what "of" means in every output."""
    if f["input_rows"] is None:
        return "of ? input rows (the input was not read to its end)"
    return f"of {count(f['input_rows'])} input rows"


def _cache_text(cache: dict[str, Any]) -> str:
    return (
        f"cache: reused {count(cache['reused'])} answers (saved {usd(cache['saved_usd'])}), "
        f"stored {count(cache['stored'])}"
    )


def summary_lines(outcome: Any) -> list[str]:
    """The final lines: state, rows, answers, tokens, cost, wall time, the report, what next."""
    f = summary_fields(outcome)
    rows, tokens = f["rows"], f["tokens"]
    wall = f"wall time: {seconds(f['wall_time_s'])} ({per_second(f['rows_per_s'])})"
    if f["sessions"] > 1:
        wall += (
            f" this session; the whole run, {f['sessions']} sessions: "
            f"{seconds(f['run_wall_time_s'])} ({per_second(f['run_rows_per_s'])})"
        )
    lines = [
        f"state: {_state(f)}",
        f"rows: {count(rows['ok'])} ok, {count(rows['error'])} error, "
        f"{count(rows['invalid'])} invalid {_of_input(f)}; {count(f['rows_done'])} done in "
        f"this session, {count(f['rows_skipped'])} skipped as already ok",
        f"answers: {answers_text(f['answers'], f['rows']['ok'])}",
        f"tokens: {count(tokens['input_tokens'])} input, {count(tokens['output_tokens'])} output, "
        f"{count(tokens['cache_creation_input_tokens'])} cache write, "
        f"{count(tokens['cache_read_input_tokens'])} cache read",
        f"cost: {f['cost']} (retries: {usd(f['retry_cost_usd'])})"
        + (f"; this session {usd(f['session_cost_usd'])}" if f["sessions"] > 1 else ""),
        *([batch_text(f["batch"])] if f.get("batch") else []),
        *([_cache_text(f["cache"])] if f.get("cache") else []),
        wall,
        f"report: {f['report']}",
    ]
    if rows.get("not_in_input"):
        lines.insert(2, f"{count(rows['not_in_input'])} paid rows not in the current input (kept)")
    if f.get("most_common_error"):
        lines.append(f"most common error: {f['most_common_error']}")
    if f.get("resume_command"):
        step = _NEXT_STEP.get(f["exit_code"], "resume with")
        lines.append(f"next: {step}: {f['resume_command']}")
    return lines


def final_line(outcome: Any) -> str:
    """The whole summary on one line, for `--quiet`."""
    f = summary_fields(outcome)
    rows = f["rows"]
    answers = answers_text(f["answers"], rows["ok"])
    line = (
        f"runner: {_state(f)}: {count(rows['ok'])} ok, {count(rows['error'])} error, "
        f"{count(rows['invalid'])} invalid {_of_input(f)}; {answers}; "
        f"{count(f['tokens']['input_tokens'])} in / {count(f['tokens']['output_tokens'])} out "
        f"tokens; {f['cost']}; {seconds(f['wall_time_s'])}; report {f['report']}"
    )
    if f.get("most_common_error"):
        line += f"; most common error {f['most_common_error']}"
    if f.get("resume_command"):
        line += f"; resume: {f['resume_command']}"
    return line


def print_summary(outcome: Any, *, quiet: bool = False, log_format: str = "text") -> None:
    """Print the final summary where this invocation's user looks for it.

    Off a terminal (cron, a pipe) each line starts with the time, as the log lines do,
    so a log file that takes both stdout and stderr reads in one order with one clock.
    """
    if log_format == "json":
        emit(logging.INFO, final_line(outcome), summary_fields(outcome))
        return
    lines = [final_line(outcome)] if quiet else summary_lines(outcome)
    if not sys.stdout.isatty():
        stamp = iso_time(time.time())
        lines = [f"{stamp} {line}" for line in lines]
    print("\n".join(lines), flush=True)


def print_failure(
    message: str, exit_code: int, *, log_format: str = "text", sends: bool = True
) -> None:
    """The error and a final line for a command that stopped before it began.

    `sends` says the command would have sent requests (run, demo, estimate): its exit 2
    tells the user nothing was; `report` and `export` never send, so they do not say it.
    """
    nothing_sent = "nothing was sent; " if sends and exit_code == 2 else ""
    final = f"exit {exit_code}: {nothing_sent}fix the above"
    if log_format == "json":
        log.error("error: %s", message)
        emit(logging.INFO, final, {"event": "summary", "exit_code": exit_code, "error": message})
    else:
        # Through the handler, even under --quiet: a cron log gets its timestamps.
        emit(logging.ERROR, f"error: {message}", {})
        emit(logging.ERROR, final, {})
