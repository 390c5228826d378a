"""Driving a backend: the producer, the backend's tasks, signals, flushes and the display.

The first SIGINT/SIGTERM stops dispatching and gives in-flight rows a grace period;
a second one cancels them. Either way, what finished is on disk: the store's journal
has every finished row, and its segments become Parquet parts as they fill up.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from runner.backend import Backend
from runner.errors import LocalFailureError
from runner.pool import StopControl, WorkItem
from runner.stats import RunStats
from runner.store import RunStore

log = logging.getLogger("runner")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Producer = Callable[[MemoryObjectSendStream[WorkItem]], Coroutine[Any, Any, None]]


async def drive(
    backend: Backend,
    produce: Producer,
    *,
    store: RunStore,
    control: StopControl,
    stats: RunStats,
    progress: Any,
    grace: float,
    queue_size: int,
    on_prepared: Callable[[], None],
) -> None:
    """Run the producer into the backend until the queue is drained or the run stops.

    `on_prepared` is called once the backend has settled what earlier sessions left
    in flight (the store has changed, so what is done must be read again).
    """
    send, receive = anyio.create_memory_object_stream[WorkItem](queue_size)
    async with anyio.create_task_group() as outer:
        workers_scope = control.bind(outer)
        outer.start_soon(_watch_signals, control, grace)
        outer.start_soon(_flush_periodically, store, control)
        if progress is not None:
            outer.start_soon(progress.run, stats, backend)
        with workers_scope:
            if await backend.prepare():
                on_prepared()
            async with anyio.create_task_group() as workers:
                workers.start_soon(produce, send)
                backend.start(workers, receive)
        outer.cancel_scope.cancel()


async def _flush_periodically(store: RunStore, control: StopControl) -> None:
    """Turn journal segments into Parquet parts as they fill up, off the event loop."""
    while True:
        await anyio.sleep(0.2)
        if store.flush_due():
            try:
                write = store.rotate()
                await anyio.to_thread.run_sync(write)
            except LocalFailureError as exc:
                control.fail_locally(exc)  # the journal keeps the rows for the next start
                return


async def _watch_signals(control: StopControl, grace: float) -> None:
    """First SIGINT/SIGTERM: stop dispatching, grace for in-flight rows; second: stop now."""
    # The event loop puts the default handlers back when the receiver closes: a signal
    # in the moment before the run notes signals again would kill the process. Put back
    # the handlers that were there (the run's, signals.py) at once instead.
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    try:
        with anyio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if control.stopping:
                    log.warning("%s again: cancelling in-flight requests now", name)
                    control.stop(0)
                else:
                    log.warning(
                        "%s: no new requests; waiting up to %gs for the ones in flight "
                        "(again to stop now)",
                        name,
                        grace,
                    )
                    control.stop(grace)
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
