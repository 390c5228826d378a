"""How requests are executed: the seam between the run and a backend, and the registry.

A backend takes work items from the run's bounded queue and hands every finished
row to the store's record sink. `stream` sends each request on its own through the
worker pool (rate limiter, SSE, retries); `batch` (batch.py) sends them as Message
Batches at the batch price. A new backend is one module and one line in `BACKENDS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.batch_session import open_batch_backend
from runner.budget import Budget
from runner.cache import AnswerCache
from runner.dedupe import Deduper
from runner.job import Job, Mode
from runner.limiter import RateLimiter
from runner.pool import StopControl, WorkerPool, WorkItem
from runner.pricing import PriceTable
from runner.provider import MESSAGES_PATH, job_headers
from runner.stats import RunStats
from runner.store import RunStore
from runner.transport import Bounds, new_http_client


class Backend(Protocol):
    """Executes work items; the run drives it in two steps."""

    async def prepare(self) -> bool:
        """Settle what earlier sessions left in flight; True if the store changed."""
        ...

    def start(self, tasks: TaskGroup, items: MemoryObjectReceiveStream[WorkItem]) -> None:
        """Start consuming `items` in `tasks` until the queue closes or the run stops."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """What the progress display shows of the backend: `in_flight`, `waiting_on`."""
        ...


@dataclass(frozen=True, slots=True)
class RunParts:
    """What a backend may use of the run: the job, the key, the store and the shared state."""

    job: Job
    api_key: str | None
    store: RunStore
    prices: PriceTable
    stats: RunStats
    control: StopControl
    limiter: RateLimiter
    budget: Budget | None = None
    cache: AnswerCache | None = None


class StreamBackend:
    """Each request streamed on its own, by the worker pool's N workers."""

    def __init__(self, pool: WorkerPool, concurrency: int) -> None:
        self.pool = pool
        self.concurrency = concurrency

    async def prepare(self) -> bool:
        """Nothing is left in flight by a stream session: a request either finished or is lost."""
        return False

    def start(self, tasks: TaskGroup, items: MemoryObjectReceiveStream[WorkItem]) -> None:
        """One worker per slot of concurrency, each with its own handle on the queue."""
        for _ in range(self.concurrency):
            tasks.start_soon(self.pool.worker, items.clone())
        items.close()

    def snapshot(self) -> dict[str, Any]:
        """The rate limiter's view: requests in flight and what the pool waits on."""
        return self.pool.limiter.snapshot()


@contextlib.asynccontextmanager
async def open_stream_backend(run: RunParts) -> AsyncIterator[StreamBackend]:
    """The worker pool over one HTTP client for the run."""
    job = run.job
    async with new_http_client(job.limits.concurrency, Bounds.of(job)) as http:
        yield StreamBackend(
            WorkerPool(
                http,
                job.base_url + MESSAGES_PATH,
                job_headers(job.request, run.api_key),
                run.limiter,
                run.prices,
                run.store.record,
                run.stats,
                run.control,
                max_attempts=job.retry.max_attempts,
                max_retry_after=job.retry.max_retry_after,
                fatal_grace=min(job.retry.grace_period, 3.0),
                budget=run.budget,
                dedupe=Deduper() if job.dedupe else None,
                cache=run.cache,
            ),
            job.limits.concurrency,
        )


def _open_batch_backend(run: RunParts) -> AbstractAsyncContextManager[Backend]:
    """Message Batches (batch.py)."""
    return open_batch_backend(run.job, run.api_key, run.store, run.prices, run.stats, run.control)


BACKENDS: dict[Mode, Callable[[RunParts], AbstractAsyncContextManager[Backend]]] = {
    Mode.STREAM: open_stream_backend,
    Mode.BATCH: _open_batch_backend,
}


def open_backend(run: RunParts) -> AbstractAsyncContextManager[Backend]:
    """The job's backend (`mode`), open while the block lasts."""
    return BACKENDS[run.job.mode](run)
