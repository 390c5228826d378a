"""Opening the batch backend for a run, and `runner cancel RUN_DIR`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from runner.batch import BatchBackend
from runner.batch_api import BatchApi
from runner.batch_results import ItemSettler
from runner.errors import RunDirError, UsageError
from runner.job import BatchSpec, Job, RequestSpec, RetrySpec
from runner.pool import StopControl
from runner.pricing import PriceTable
from runner.provider import credentials_missing, job_headers
from runner.stats import RunStats
from runner.store import RunStore, open_store

log = logging.getLogger("runner")


@contextlib.asynccontextmanager
async def open_batch_backend(
    job: Job,
    api_key: str | None,
    store: RunStore,
    prices: PriceTable,
    stats: RunStats,
    control: StopControl,
) -> AsyncIterator[BatchBackend]:
    """The batch backend of a run, with its HTTP client open while it lasts."""
    timeout = httpx.Timeout(connect=30.0, read=job.retry.idle_timeout, write=300.0, pool=None)
    async with httpx.AsyncClient(timeout=timeout) as http:
        api = BatchApi(http, job.base_url, job_headers(job.request, api_key))
        settler = ItemSettler(store.record, prices, stats, job.retry.max_attempts)
        yield BatchBackend(api, store, settler, stats, control, job.batch)


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What `runner cancel` did: batches it canceled, and the rows their ends settled."""

    canceled: int
    stats: RunStats
    message: str | None


def cancel_run(
    run_dir: Path, api_key: str | None = None, base_url: str | None = None
) -> CancelOutcome:
    """Cancel the run's batches still in progress, wait for them to end, record what ended."""
    api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
    if credentials_missing(api_key):
        raise UsageError("no API key: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN)")
    job = _recorded_job(run_dir, base_url)
    prices = PriceTable.load(job.prices)
    stats, control = RunStats(), StopControl()
    with open_store(run_dir) as store:

        async def cancel() -> int:
            # Without a round to send them in, items that could go again end as `error`:
            # the next resume sends those rows again.
            async with open_batch_backend(job, api_key, store, prices, stats, control) as backend:
                return await backend.cancel_all()

        canceled = anyio.run(cancel)
    fatal = control.fatal
    return CancelOutcome(canceled, stats, fatal.message if fatal is not None else None)


def _recorded_job(run_dir: Path, base_url: str | None) -> Job:
    """The job as run.json recorded it (what cancel needs: where, retries, prices)."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        job = info["job"]
        return Job(
            name=job["name"],
            input=Path(job["input"]),
            base_url=(base_url or job["base_url"]).rstrip("/"),
            prices=Path(job["prices"]) if job.get("prices") else None,
            request=RequestSpec(**job["request"]),
            retry=RetrySpec(**job["retry"]),
            batch=BatchSpec(**job.get("batch", {})),
        )
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: not a run directory (no run.json)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{run_dir}/run.json: unreadable ({exc})") from None
