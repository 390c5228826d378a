"""How requests are executed: the seam between the run and a backend.

A backend takes work items from the run's bounded queue and hands every finished
row to the store's record sink. `stream` sends each request on its own through the
worker pool (rate limiter, SSE, retries); `batch` (batch.py) sends them as Message
Batches at the batch price.
"""

from __future__ import annotations

from typing import Any, Protocol

from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.pool import WorkerPool, WorkItem


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
