"""One run of a job: plan, execute, compact, summarise.

The flow goes one way: input -> render -> skip done rows -> backend -> store ->
summary. The producer streams the input into a bounded queue; the job's backend
(backend.py: stream or batch) drains it and hands every finished row to the store's
journal at once; drive.py runs the two with the signal handling and the display.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from anyio.streams.memory import MemoryObjectSendStream

from runner import __version__
from runner.apikey import check_endpoint
from runner.backend import RunParts, open_backend
from runner.budget import check_budget, open_budget
from runner.cache import AnswerCache
from runner.dedupe import check_dedupe
from runner.drive import drive
from runner.errors import LocalFailureError, RunnerError, UsageError
from runner.heap import release_freed_memory
from runner.inputs import InputReader, InvalidRowLog
from runner.job import Job
from runner.lifecycle import check_model
from runner.limiter import RateLimiter
from runner.logs import bind_run, log_start
from runner.models import InvalidRow, Request, RowResult, Status
from runner.outcome import sessions_of, state_for
from runner.parts import write_json_atomic
from runner.pilot import adopt_pilot
from runner.pool import StopControl, WorkItem
from runner.pricing import PriceTable
from runner.provider import credentials_missing
from runner.render import Renderer
from runner.resume import DoneRows, Triage, batches, rows_key
from runner.runs import existing_run, job_runs, latest_run
from runner.signals import NotedSignals, noting_signals, stop_here_if_asked
from runner.stats import RunStats
from runner.store import RunStore, open_store
from runner.summary import status_counts, summarize

log = logging.getLogger("runner")

EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 3, 130
EXIT_LOCAL, EXIT_BUDGET = 4, 5


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a job, beyond the job itself."""

    output_dir: Path = Path("reports")
    run_id: str | None = None
    resume: bool = False
    limit: int | None = None
    api_key: str | None = None
    # The command line that started this run, to print the exact resume command.
    argv: tuple[str, ...] = ()
    # Shows the run as it goes: `await progress.run(stats, limiter)` runs until cancelled.
    progress: Any = None
    # Send requests to a model the price table says is retired (a reseller may serve it).
    allow_retired: bool = False
    # A pilot of `runner estimate --pilot K` (see runner.pilot): tagged in run.json.
    pilot: bool = False


@dataclass(slots=True)
class RunOutcome:
    """What a run did: its exit code, where it lives, and its summary."""

    exit_code: int
    run_dir: Path
    summary: dict[str, Any]
    message: str | None = None
    stats: RunStats = field(default_factory=RunStats)


def new_run_id() -> str:
    """A run id that sorts by start time (so `--resume` can find the latest)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def resolve_run_dir(job: Job, options: RunOptions) -> Path:
    """reports/<job>/<run-id>/: the given id, the latest started for --resume, or a new one.

    Says which: the run resumed with its state and start, or that a new run begins.
    """
    job_dir = options.output_dir / job.name
    if options.run_id:
        if "/" in options.run_id or options.run_id in (".", ".."):
            raise UsageError(f"run id must be a plain name, not '{options.run_id}'")
        if options.resume:  # resume exactly this run: a mistyped id must not start a new one
            entry = existing_run(job_dir, job.name, options.run_id)
            log.info("resuming run %s", entry.describe())
            return entry.path
        run_dir = job_dir / options.run_id
        known = {entry.run_id: entry for entry in job_runs(job_dir)}
        if options.run_id in known:
            log.info("resuming run %s", known[options.run_id].describe())
        else:
            log.info("starting a new run %s of job '%s' in %s", options.run_id, job.name, job_dir)
        return run_dir
    if options.resume:
        entry = latest_run(job_dir, job.name)
        log.info("resuming the latest started run %s", entry.describe())
        return entry.path
    run_dir = job_dir / new_run_id()
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = job_dir / f"{new_run_id()}-{suffix}"
    return run_dir


def resume_command(argv: tuple[str, ...], run_id: str) -> str:
    """The exact command that resumes this run: the original one, pinned to its run id."""
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg == "--run-id":
            skip_next = True
            continue
        if arg.startswith("--run-id=") or arg == "--resume":
            continue
        kept.append(arg)
    return shlex.join(["runner", *kept, "--run-id", run_id])


def open_input(job: Job) -> tuple[Renderer, InputReader]:
    """The job's renderer and its checked input: a bad template, file or column stops here."""
    reader = InputReader(job.input, fmt=job.input_format, id_column=job.id_column)
    reader.check()
    try:
        base = None if reader.source.is_stdin else job.input.parent
        renderer = Renderer(
            job.request, reader.columns or (), batch_requests=reader.batch_requests, base=base
        )
        reader.require(renderer.columns)
        reader.require(renderer.optional_columns, per_row=False)
        if not (job.request.model or reader.batch_requests or "model" in renderer.row_fields):
            where = f"{job.job_file}: " if job.job_file else ""
            raise UsageError(
                f"{where}no model: set [request] model in the job file or give --model"
            )
    except BaseException:
        reader.close()
        raise
    return renderer, reader


def execute(job: Job, options: RunOptions) -> RunOutcome:
    """Run `job` to completion (or to a stop) and return what happened."""
    bind_run(options.run_id, job.name)  # the run id, if given, until it is resolved
    api_key = options.api_key or os.environ.get("ANTHROPIC_API_KEY")
    if credentials_missing(api_key):
        raise UsageError(
            "no API key: set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN (runner demo needs none)"
        )
    for secret in filter(None, (api_key, os.environ.get("ANTHROPIC_AUTH_TOKEN"))):
        check_endpoint(secret, job.base_url, job.allow_insecure_http)
    renderer, reader = open_input(job)
    try:
        # From here a signal is noted, not fatal: the run ends with its summary (exit 130).
        with noting_signals() as signals:
            prices = PriceTable.load(job.prices, job.price_overrides or None)
            run_dir = resolve_run_dir(job, options)
            bind_run(run_dir.name, job.name)
            if job.request.model:
                check_model(prices, job.request.model, allow_retired=options.allow_retired)
            check_budget(job, prices)
            check_dedupe(job)
            if not options.pilot:
                adopt_pilot(job, options.output_dir, run_dir)
            try:
                try:
                    run_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise LocalFailureError.from_os_error(exc, run_dir) from None
                with open_store(run_dir) as store:
                    session = _Session(job, options, store, reader, renderer, prices, api_key)
                    return session.run(signals)
            except LocalFailureError as exc:  # before the run could start: nothing was sent
                command = resume_command(options.argv, run_dir.name)
                exc.args = (f"{exc}; fix it, then resume with: {command}",)
                raise
    finally:
        reader.close()


@dataclass
class _Session:
    """One session of a run: what the stages share while it lasts."""

    job: Job
    options: RunOptions
    store: RunStore
    reader: InputReader
    renderer: Renderer
    prices: PriceTable
    api_key: str | None
    stats: RunStats = field(default_factory=RunStats)
    control: StopControl = field(default_factory=StopControl)
    # Whether this session read the whole input (no --limit, no stop before its end).
    input_complete: bool = False

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.job.limits)
        self.budget = open_budget(self.job, self.prices, self.store, self.stats)
        self.cache = AnswerCache(self.job.cache) if self.job.cache else None
        self.invalid_log = InvalidRowLog(log, self.reader.name)
        self.earlier_input: dict[str, Any] = {}

    @cached_property
    def done(self) -> DoneRows:
        """The rows earlier sessions finished; read only if the input has to be read too."""
        return DoneRows(self.store)

    def run(self, signals: NotedSignals) -> RunOutcome:
        """Start, drive the pool unless nothing is left, then compact and summarise."""
        run_dir = self.store.run_dir
        run_info, key = self._start_run_json()
        exit_code = self._plan(run_info["settled"])
        resumed = run_info["first_started_at"] != run_info["started_at"]
        rows = (
            self.stats.total_rows if self.stats.total_rows is not None else run_info["input_rows"]
        )
        log_start(self.job, run_dir, rows, resumed=resumed)
        stop_here_if_asked("start-up")
        if signals.arrived:  # during start-up: nothing is sent
            exit_code = EXIT_INTERRUPTED
        elif exit_code is None:
            exit_code = anyio.run(self._drive)
            signals.install()  # the event loop put the default handlers back
            release_freed_memory()
        stop_here_if_asked("compaction")
        exit_code = self._keep_on_disk(exit_code)
        if signals.arrived and exit_code != EXIT_LOCAL:
            exit_code = EXIT_INTERRUPTED  # during compaction: it finished, the run stops
        self.stats.stop_clock()
        if self.stats.total_rows is not None:
            run_info["input_rows"] = self.stats.total_rows  # "of N" in every report
        run_info["ended_at"] = datetime.now(UTC).isoformat()
        run_info["sessions"][-1].update(
            ended_at=run_info["ended_at"], wall_time_s=round(self.stats.elapsed, 3)
        )
        fatal = self.control.fatal
        reason = fatal.message if fatal is not None else None
        if self.control.local_failure is not None:
            reason = str(self.control.local_failure)
        message = f"stopped: {reason}" if reason is not None else None
        budget = None
        if exit_code == EXIT_BUDGET and self.budget is not None:
            message = reason = self.budget.message()
            budget = {"max_cost_usd": self.budget.cap, "spent_usd": self.budget.spent}
        resume = None
        if exit_code != EXIT_OK:
            resume = resume_command(self.options.argv, run_dir.name)
        summary = summarize(
            self.store,
            self.stats,
            exit_code,
            run_info,
            reason=reason,
            resume_command=resume,
            batch_multiplier=self.prices.batch_multiplier,
        )
        if budget is not None:
            summary["budget"] = budget
        if self.cache is not None:
            use = self.cache.use
            summary["cache"] = {
                "reused": use.reused,
                "saved_usd": round(use.saved_usd, 10),
                "stored": use.stored,
            }
        summary["limiter"] = self.limiter.snapshot()
        if self.input_complete:
            run_info["input"] = self._input_read()
        if exit_code in (EXIT_OK, EXIT_SOME_FAILED) and self.options.limit is None and key:
            # Every row was seen and has its outcome on disk.
            run_info["settled"] = {"key": key, "rows": summary["rows"]["total"]}
        run_info["counts"] = summary["rows"]
        exit_code = self._late_signal(signals, exit_code, summary, run_info)
        try:
            write_json_atomic(run_dir / "run.json", run_info)
            write_json_atomic(run_dir / "summary.json", summary)
            if self._late_signal(signals, exit_code, summary, run_info) != exit_code:
                exit_code = EXIT_INTERRUPTED  # while writing them: write them again
                write_json_atomic(run_dir / "run.json", run_info)
                write_json_atomic(run_dir / "summary.json", summary)
        except LocalFailureError as exc:
            # Every row is safe in the parts and the journal; only this record is missing.
            first = self.control.local_failure  # the cause that stopped the run, if one did
            message = f"stopped: {first or exc} (run.json and summary.json not updated)"
            exit_code = summary["exit_code"] = EXIT_LOCAL
            summary["state"], summary["reason"] = state_for(EXIT_LOCAL).value, str(exc)
            summary["resume_command"] = resume_command(self.options.argv, run_dir.name)
        return RunOutcome(exit_code, run_dir, summary, message, self.stats)

    def _late_signal(
        self,
        signals: NotedSignals,
        exit_code: int,
        summary: dict[str, Any],
        run_info: dict[str, Any],
    ) -> int:
        """A signal while the run was summarised: exit 130, as if it came a moment earlier."""
        if not signals.arrived or exit_code in (EXIT_INTERRUPTED, EXIT_LOCAL):
            return exit_code
        summary["exit_code"] = EXIT_INTERRUPTED
        summary["state"] = state_for(EXIT_INTERRUPTED).value
        summary["resume_command"] = resume_command(self.options.argv, self.store.run_dir.name)
        run_info["settled"] = None
        return EXIT_INTERRUPTED

    def _keep_on_disk(self, exit_code: int) -> int:
        """Compact a finished session, else turn the journal into parts; exit 4 if the disk
        (or the file handles) fail: the journal then keeps the rows for the next start."""
        try:
            if exit_code in (EXIT_OK, EXIT_SOME_FAILED):
                self.store.compact(self._current_lines())
            elif exit_code != EXIT_LOCAL:
                self.store.flush()
        except LocalFailureError as exc:
            self.control.local_failure = self.control.local_failure or exc
            return EXIT_LOCAL
        return exit_code

    def _current_lines(self) -> pl.DataFrame | None:
        """Where earlier sessions' rows now sit in the input, if this session read it all."""
        if not self.input_complete or "done" not in self.__dict__ or self.done.empty:
            return None  # nothing read against earlier rows: they stay as they are
        return self.done.current_lines()

    def _start_run_json(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Write run.json for this session; warn if the input changed since the run began.

        Also returns this session's `rows_key`; run.json's `settled` keeps the earlier
        one only while it is the same.
        """
        path = self.store.run_dir / "run.json"
        # The input is read once, as it is sent: its hash is known only at the end.
        # Until then a regular file is known by its size and mtime; a stream not at all.
        identity = self.reader.source.identity()
        key = rows_key(self.job, json.dumps(identity)) if identity else {}
        earlier = _load_json(path)
        self.earlier_input = (earlier or {}).get("input") or {}
        settled = (earlier or {}).get("settled")
        fingerprint = {**self.reader.fingerprint(), "identity": identity}
        if self.earlier_input.get("sha256"):
            fingerprint = {**self.earlier_input, "identity": identity}
        started_at = datetime.now(UTC).isoformat()
        run_info = {
            "run_id": self.store.run_dir.name,
            "job": self.job.to_dict(),
            "input": fingerprint,
            "versions": _versions(),
            "prices": self.prices.to_dict(),
            "pilot": self.options.pilot,
            "first_started_at": (earlier or {}).get("first_started_at", started_at),
            "started_at": started_at,
            "ended_at": None,
            # One entry a session: the reports leave the gaps between sessions out.
            "sessions": [*sessions_of(earlier), {"started_at": started_at, "ended_at": None}],
            # The input's rows, once a session has read it to its end (while it is unchanged).
            "input_rows": (earlier or {}).get("input_rows")
            if identity and self.earlier_input.get("identity") == identity
            else None,
            "counts": None,
            "settled": settled if key and settled and settled.get("key") == key else None,
        }
        write_json_atomic(path, run_info)
        return run_info, key

    def _input_read(self) -> dict[str, Any]:
        """run.json's `input` once the whole input was read; warn if it changed meanwhile."""
        read = {**self.reader.fingerprint(), "identity": self.reader.source.identity()}
        earlier = self.earlier_input.get("sha256")
        if read["sha256"] is None:  # the settled shortcut read nothing
            return {**self.earlier_input, "identity": read["identity"]}
        if earlier and earlier != read["sha256"]:
            log.warning(
                "input %s changed since this run began (size %s -> %s bytes): rows whose "
                "request changed were sent again",
                self.reader.name,
                self.earlier_input.get("size"),
                read["size"],
            )
        return read

    def _plan(self, settled: dict[str, Any] | None) -> int | None:
        """Set the progress total and say what a resume skips and sends.

        Returns the exit code if nothing is left to send, else None.
        """
        limit = self.options.limit
        if settled is not None and limit is None:
            exit_code = self._plan_from_results(settled["rows"])
            if exit_code is not None:
                return exit_code
        # The input is read once, as it is sent; a regular file is also counted up front
        # so that progress and a session stopped early say "of N" (a pipe: "of ?").
        self.stats.total_rows = limit if limit is not None else self.reader.count_rows()
        return None

    def _batches(self) -> Iterator[tuple[list[Request], list[InvalidRow]]]:
        """The input's rows, rendered and keyed, a batch at a time."""
        return batches(
            self.reader,
            self.renderer,
            self.options.limit,
            self.done.batch,
            by_id=self.job.id_column is not None,
        )

    def _plan_from_results(self, settled_rows: int) -> int | None:
        """The exit code if the settled run's results show nothing left to send, else None.

        The input and the request settings are unchanged since a session saw every
        row, so the results alone say what is left: no row needs reading.
        """
        # Rows no longer in the input (a null line) are kept but not counted.
        results = self.store.scan_results(with_state=True).filter(pl.col("line").is_not_null())
        counts = status_counts(results)
        # A part lost since (a damaged file is ignored) shows as missing rows.
        if counts[Status.ERROR.value] or sum(counts.values()) != settled_rows:
            return None
        ok, invalid = counts[Status.OK.value], counts[Status.INVALID.value]
        if invalid:
            self._report_invalid(results)
            self.invalid_log.close()
        self.stats.total_rows, self.stats.skipped = ok + invalid, ok
        log.info(
            "resuming run %s: input and request unchanged since it finished; "
            "%d rows ok, %d invalid: nothing to send",
            self.store.run_dir.name,
            ok,
            invalid,
        )
        return EXIT_SOME_FAILED if invalid else EXIT_OK

    def _report_invalid(self, results: pl.LazyFrame) -> None:
        """Name again the invalid rows an earlier session found: the input is unchanged."""
        rows = (
            results.filter(pl.col("status") == Status.INVALID.value)
            .select("line", "error_message")
            .collect(engine="streaming")
        )
        for line, reason in rows.iter_rows():
            self._warn_invalid(line, reason)

    def _warn_invalid(self, line: int, reason: str) -> None:
        self.invalid_log.warn(line, reason)

    async def _drive(self) -> int:
        """Execute the rows to send through the job's backend; the exit code."""
        job, control = self.job, self.control
        parts = RunParts(
            job,
            self.api_key,
            self.store,
            self.prices,
            self.stats,
            control,
            self.limiter,
            self.budget,
            self.cache,
        )
        try:
            async with open_backend(parts) as backend:
                await drive(
                    backend,
                    self._produce,
                    store=self.store,
                    control=control,
                    stats=self.stats,
                    progress=self.options.progress,
                    grace=job.retry.grace_period,
                    queue_size=job.limits.concurrency * 2,
                    # What earlier sessions left is settled now: read the store again.
                    on_prepared=lambda: self.__dict__.pop("done", None),
                )
        except* LocalFailureError as failures:
            # From any task (a backend's own writes, say): the same clean stop, exit 4.
            first = failures.exceptions[0]
            if isinstance(first, LocalFailureError) and control.local_failure is None:
                control.local_failure = first
        if control.local_failure is not None:
            return EXIT_LOCAL
        if control.fatal is not None:
            return EXIT_FATAL
        if self.budget is not None and self.budget.reached:
            return EXIT_BUDGET
        if control.stopping:
            return EXIT_INTERRUPTED
        statuses = self.stats.statuses
        failed = statuses[Status.ERROR.value] + statuses[Status.INVALID.value]
        return EXIT_SOME_FAILED if failed else EXIT_OK

    async def _produce(self, send: MemoryObjectSendStream[WorkItem]) -> None:
        """Stream the input into the queue: invalid rows to the store, done rows skipped."""
        tally = Triage([])
        invalid = 0
        async with send:
            for requests, invalid_rows in self._batches():
                for item in invalid_rows:
                    self._warn_invalid(item.line, item.reason)
                    result = RowResult(
                        id=item.id,
                        line=item.line,
                        status=Status.INVALID,
                        model=self.renderer.spec.model,
                        attempts=0,
                        error_type="invalid_input",
                        error_message=item.reason,
                        # Judged again every session, never paid: keyed by line, unlike
                        # every other row, and dropped once that line is gone.
                        key=f"\0line {item.line}",
                    )
                    try:
                        self.store.record(result, [])
                    except LocalFailureError as exc:
                        self.control.fail_locally(exc)
                        return
                    self.stats.add_result(result)
                triage = self.done.triage(requests)
                tally.add(triage)
                invalid += len(invalid_rows)
                self.stats.skipped += triage.unchanged
                for work in triage.to_send:
                    if self.control.stopping:
                        return
                    await send.send(work)
            self.input_complete = self.options.limit is None
            self.stats.total_rows = tally.total + invalid
            self.invalid_log.close()
            if not self.done.empty:
                self._log_resumed(tally, invalid)

    def _log_resumed(self, tally: Triage, invalid: int) -> None:
        """Say what this session found against earlier ones: skipped, new, changed, gone."""
        gone = self.done.no_longer_in_input() if self.input_complete else 0
        log.info(
            "resuming run %s: skipped %d rows already ok, sent %d (%d new, %d changed, "
            "%d to retry), %d invalid%s",
            self.store.run_dir.name,
            tally.unchanged,
            tally.total - tally.unchanged,
            tally.new,
            tally.changed,
            tally.retry,
            invalid,
            f"; {gone} paid rows no longer in the input are kept, not counted" if gone else "",
        )


def _versions() -> dict[str, str]:
    """What produced this run, for run.json."""
    libraries = ("anyio", "httpx", "polars", "tenacity")
    return {
        "runner": __version__,
        "python": platform.python_version(),
        **{name: version(name) for name in libraries},
    }


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RunnerError(f"{path}: unreadable run.json: {exc}") from None
