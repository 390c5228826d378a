"""One run of a job: input -> render -> skip done rows -> pool -> store -> summary.

The flow goes one way. The producer streams the input into a bounded queue, the
workers drain it, and every finished row goes to the store's journal at once.
The first SIGINT/SIGTERM stops dispatching and gives in-flight rows a grace
period; a second one cancels them. Either way, what finished is on disk.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl

from runner import __version__
from runner.client import api_headers, new_http_client
from runner.errors import RunnerError, UsageError
from runner.inputs import InputReader, count_records, input_fingerprint
from runner.job import Job
from runner.limiter import RateLimiter
from runner.models import InputRow, InvalidRow, Request, RowResult, Status
from runner.pool import StopControl, WorkerPool, WorkItem
from runner.pricing import PriceTable
from runner.render import Renderer
from runner.stats import RunStats
from runner.store import RunStore, open_store, write_json_atomic

log = logging.getLogger("runner")

EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 3, 130


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
    """reports/<job>/<run-id>/: the given id, the latest for --resume, or a new one."""
    job_dir = options.output_dir / job.name
    if options.run_id:
        if "/" in options.run_id or options.run_id in (".", ".."):
            raise UsageError(f"run id must be a plain name, not '{options.run_id}'")
        return job_dir / options.run_id
    if options.resume:
        runs = sorted(p for p in job_dir.glob("*") if (p / "run.json").exists())
        if not runs:
            raise UsageError(f"nothing to resume: no run of job '{job.name}' in {job_dir}")
        return runs[-1]
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


@dataclass(slots=True)
class InputSeen:
    """How far the producer read the input: compaction drops rows past its end."""

    last_line: int = 0
    complete: bool = False


class _Previous:
    """What earlier runs of this run id left on disk: the rows to skip, attempts so far.

    Kept as Arrow tables and checked a batch at a time with a join, so resuming a
    large run needs no per-row Python objects.
    """

    def __init__(self, store: RunStore) -> None:
        results = store.read_results(with_state=True, columns=["id", "status"])
        self.done = results.filter(pl.col("status") == Status.OK.value).select("id", "fingerprint")
        self.attempts = store.read_attempts(columns=["id"]).group_by("id").len("prior")
        self.empty = self.done.is_empty() and self.attempts.is_empty()
        # Each join hashes the whole done table: few large batches when resuming, small
        # ones for a fresh run so the first requests go out at once.
        self.batch = 256 if self.empty else 8192

    def triage(self, batch: list[Request]) -> tuple[list[WorkItem], int]:
        """The batch's rows still to send (with their earlier attempts), and how many are done."""
        if self.empty:
            return [WorkItem(request) for request in batch], 0
        frame = pl.DataFrame(
            {
                "id": [r.row_id for r in batch],
                "fingerprint": [r.fingerprint for r in batch],
                "i": range(len(batch)),
            },
            schema={"id": pl.String, "fingerprint": pl.String, "i": pl.Int64},
        )
        done = set(frame.join(self.done, on=["id", "fingerprint"], how="semi")["i"])
        prior = dict(frame.join(self.attempts, on="id").select("i", "prior").iter_rows())
        to_send = [
            WorkItem(request, prior.get(i, 0)) for i, request in enumerate(batch) if i not in done
        ]
        return to_send, len(done)


def _batches(
    reader: InputReader, renderer: Renderer, limit: int | None, size: int = 256
) -> Iterator[tuple[list[Request], list[InvalidRow]]]:
    """Rendered requests and invalid rows, in input order, a batch at a time (`limit` rows)."""
    requests: list[Request] = []
    invalid: list[InvalidRow] = []
    for count, row in enumerate(reader):
        if limit is not None and count >= limit:
            break
        item = renderer.render(row) if isinstance(row, InputRow) else row
        (invalid if isinstance(item, InvalidRow) else requests).append(item)
        if len(requests) + len(invalid) >= size:
            yield requests, invalid
            requests, invalid = [], []
    if requests or invalid:
        yield requests, invalid


def execute(job: Job, options: RunOptions) -> RunOutcome:
    """Run `job` to completion (or to a stop) and return what happened."""
    api_key = options.api_key or os.environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        raise UsageError("no API key: set ANTHROPIC_API_KEY (runner demo needs none)")
    renderer = Renderer(job.request)
    reader = InputReader(
        job.input, fmt=job.input_format, id_column=job.id_column, columns_needed=renderer.columns
    )
    reader.check()
    prices = PriceTable.load(job.prices, job.price_overrides or None)
    run_dir = resolve_run_dir(job, options)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_store(run_dir) as store:
        return _execute_in(job, options, store, reader, renderer, prices, api_key)


def _execute_in(
    job: Job,
    options: RunOptions,
    store: RunStore,
    reader: InputReader,
    renderer: Renderer,
    prices: PriceTable,
    api_key: str,
) -> RunOutcome:
    run_dir = store.run_dir
    previous = _Previous(store)
    fingerprint = input_fingerprint(job.input)
    run_json_path = run_dir / "run.json"
    run_info = _load_json(run_json_path)
    if run_info and run_info.get("input", {}).get("sha256") != fingerprint["sha256"]:
        log.warning(
            "input %s changed since this run began (size %s -> %s bytes): rows whose request "
            "changed are sent again",
            job.input,
            run_info["input"].get("size"),
            fingerprint["size"],
        )
    started_at = datetime.now(UTC).isoformat()
    run_info = {
        "run_id": run_dir.name,
        "job": job.to_dict(),
        "input": fingerprint,
        "versions": _versions(),
        "prices": prices.to_dict(),
        "first_started_at": (run_info or {}).get("first_started_at", started_at),
        "started_at": started_at,
        "ended_at": None,
        "counts": None,
    }
    write_json_atomic(run_json_path, run_info)

    stats = RunStats()
    nothing_left = False
    if not previous.empty:
        to_send = skip = invalid = 0
        for requests, invalid_rows in _batches(reader, renderer, options.limit, previous.batch):
            items, done = previous.triage(requests)
            to_send, skip, invalid = to_send + len(items), skip + done, invalid + len(invalid_rows)
        stats.total_rows = to_send + skip + invalid
        nothing_left = to_send == 0 and invalid == 0
        log.info(
            "resuming run %s: skipping %d rows already ok, sending %d, %d invalid",
            run_dir.name,
            skip,
            to_send,
            invalid,
        )
    elif options.limit is None:
        stats.total_rows = count_records(job.input, job.input_format)
    else:
        stats.total_rows = options.limit

    control = StopControl()
    limiter = RateLimiter(job.limits)
    seen = InputSeen()
    if nothing_left:
        # Every row is already ok with an unchanged request: no client, no pool.
        stats.skipped = stats.total_rows or 0
        exit_code = EXIT_OK
    else:
        exit_code = anyio.run(
            _drive,
            limiter,
            job,
            options,
            store,
            reader,
            renderer,
            prices,
            api_key,
            previous,
            stats,
            control,
            seen,
        )
        if exit_code in (EXIT_OK, EXIT_SOME_FAILED):
            store.compact(seen.last_line if seen.complete else None)
        else:
            store.flush()
    summary = summarize(store, stats, exit_code)
    summary["limiter"] = limiter.snapshot()
    run_info["ended_at"] = datetime.now(UTC).isoformat()
    run_info["counts"] = summary["rows"]
    write_json_atomic(run_json_path, run_info)
    write_json_atomic(run_dir / "summary.json", summary)
    message = None
    if control.fatal is not None:
        message = f"stopped: {control.fatal.message}"
    if exit_code in (EXIT_SOME_FAILED, EXIT_FATAL, EXIT_INTERRUPTED):
        summary["resume_command"] = resume_command(options.argv, run_dir.name)
    return RunOutcome(exit_code, run_dir, summary, message, stats)


async def _drive(
    limiter: RateLimiter,
    job: Job,
    options: RunOptions,
    store: RunStore,
    reader: InputReader,
    renderer: Renderer,
    prices: PriceTable,
    api_key: str,
    previous: _Previous,
    stats: RunStats,
    control: StopControl,
    seen: InputSeen,
) -> int:
    concurrency = job.limits.concurrency
    send, receive = anyio.create_memory_object_stream[WorkItem](concurrency * 2)

    def record(result: RowResult | None, attempts: list) -> None:
        store.record(result, attempts)

    async with new_http_client(concurrency, job.retry.idle_timeout) as http:
        pool = WorkerPool(
            http,
            f"{job.base_url}/v1/messages",
            api_headers(api_key),
            limiter,
            prices,
            record,
            stats,
            control,
            max_attempts=job.retry.max_attempts,
            max_retry_after=job.retry.max_retry_after,
            fatal_grace=min(job.retry.grace_period, 3.0),
        )
        async with anyio.create_task_group() as outer:
            workers_scope = control.bind(outer)
            outer.start_soon(_watch_signals, control, job.retry.grace_period)
            outer.start_soon(_flush_periodically, store)
            if options.progress is not None:
                outer.start_soon(options.progress.run, stats, limiter)
            with workers_scope:
                async with anyio.create_task_group() as workers:
                    workers.start_soon(
                        _produce,
                        send,
                        reader,
                        renderer,
                        options.limit,
                        previous,
                        store,
                        stats,
                        control,
                        seen,
                    )
                    for _ in range(concurrency):
                        workers.start_soon(pool.worker, receive.clone())
                    receive.close()
            outer.cancel_scope.cancel()
    if control.fatal is not None:
        return EXIT_FATAL
    if control.stopping:
        return EXIT_INTERRUPTED
    failed = stats.statuses[Status.ERROR.value] + stats.statuses[Status.INVALID.value]
    return EXIT_SOME_FAILED if failed else EXIT_OK


async def _produce(
    send: anyio.abc.ObjectSendStream[WorkItem],
    reader: InputReader,
    renderer: Renderer,
    limit: int | None,
    previous: _Previous,
    store: RunStore,
    stats: RunStats,
    control: StopControl,
    seen: InputSeen,
) -> None:
    async with send:
        for requests, invalid_rows in _batches(reader, renderer, limit, previous.batch):
            seen.last_line = max(seen.last_line, *(r.line for r in (*requests, *invalid_rows)))
            for item in invalid_rows:
                log.warning("%s:%d: %s", reader.path, item.line, item.reason)
                result = RowResult(
                    id=item.id,
                    line=item.line,
                    status=Status.INVALID,
                    model=renderer.spec.model,
                    attempts=0,
                    error_type="invalid_input",
                    error_message=item.reason,
                )
                store.record(result, [])
                stats.add_result(result)
            items, done = previous.triage(requests)
            stats.skipped += done
            for work in items:
                if control.stopping:
                    return
                await send.send(work)
        seen.complete = limit is None


async def _flush_periodically(store: RunStore) -> None:
    """Turn journal segments into Parquet parts as they fill up, off the event loop."""
    while True:
        await anyio.sleep(0.2)
        if store.flush_due():
            write = store.rotate()
            await anyio.to_thread.run_sync(write)


async def _watch_signals(control: StopControl, grace: float) -> None:
    """First SIGINT/SIGTERM: stop dispatching, grace for in-flight rows; second: stop now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if control.stopping:
                log.warning("%s again: cancelling in-flight requests now", name)
                control.stop(name, 0)
            else:
                log.warning(
                    "%s: no new requests; waiting up to %gs for the ones in flight "
                    "(again to stop now)",
                    name,
                    grace,
                )
                control.stop(name, grace)


def summarize(store: RunStore, stats: RunStats, exit_code: int) -> dict[str, Any]:
    """summary.json: the whole run id's totals from disk, plus this session's figures."""
    usage = [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    # Aggregated lazily, so a compacted million-row run is summed without being loaded.
    by_status = {s.value: 0 for s in Status}
    results = store.scan_results()
    counts = results.group_by("status").len().collect(engine="streaming")
    for status, count in counts.iter_rows():
        by_status[status] = count
    ok = (
        results.filter(pl.col("status") == Status.OK.value)
        .select(pl.col("cost_usd").sum(), *(pl.col(name).sum() for name in usage))
        .collect(engine="streaming")
        .row(0, named=True)
    )
    attempts = (
        store.scan_attempts()
        .select(
            pl.len().alias("attempts"),
            (pl.col("outcome") != "ok").sum().alias("failed"),
            *(
                pl.col(name).filter(pl.col("outcome") != "ok").sum().alias(name)
                for name in ("cost_usd", "input_tokens", "output_tokens")
            ),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    return {
        "exit_code": exit_code,
        "rows": {**by_status, "total": sum(by_status.values())},
        "tokens": {name: int(ok[name] or 0) for name in usage},
        "cost_usd": round(float(ok["cost_usd"] or 0.0), 6),
        "retries": {
            "failed_attempts": int(attempts["failed"] or 0),
            "cost_usd": round(float(attempts["cost_usd"] or 0.0), 6),
            "input_tokens": int(attempts["input_tokens"] or 0),
            "output_tokens": int(attempts["output_tokens"] or 0),
        },
        "attempts": int(attempts["attempts"] or 0),
        "this_session": {
            "rows_done": stats.done,
            "rows_skipped": stats.skipped,
            "requests": stats.requests,
            "wall_time_s": round(stats.elapsed, 3),
        },
    }


def _versions() -> dict[str, str]:
    return {
        "runner": __version__,
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "polars": pl.__version__,
        "anyio": anyio.__version__ if hasattr(anyio, "__version__") else "",
    }


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RunnerError(f"{path}: unreadable run.json: {exc}") from None
