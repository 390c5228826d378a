"""The batch backend: rows go out as Message Batches at the batch price, results come back.

Rounds: every work item goes into a batch (at most `size` requests and under
`max_bytes`), the batches are polled until they end, and their results are streamed
into the store in whatever order they come. Items that may succeed another time
(`api_error`, `overloaded_error`, `rate_limit_error`, `timeout_error`, `expired`)
go out again in the next round, up to `max_attempts` items per row.

Never paying twice rests on the ledger (batch_ledger.py): the items and the intent
are on disk before the create call, which is never retried blindly; a session first
settles what earlier ones left (adopting a batch whose create answer was lost), and
only then reads the input, so a row in a batch still running is never sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import polars as pl
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.batch_api import BatchApi, CreateUnconfirmed, retried
from runner.batch_ledger import (
    BatchEntry,
    BatchItem,
    BatchLedger,
    RetrySpool,
    remove_stale_spools,
)
from runner.batch_results import ItemSettler
from runner.errors import ApiError, AttemptFacts, FatalApiError, RejectedError, RunnerError
from runner.job import BatchSpec
from runner.models import Outcome
from runner.pool import StopControl, WorkItem
from runner.stats import RunStats
from runner.store import RunStore

log = logging.getLogger("runner")

# The create body's bytes around the items: {"requests":[ ... ]}
_BODY_OVERHEAD = len(b'{"requests":[]}')
# A create whose answer was lost is looked for among batches created from this long
# before its intent (clocks differ), after waiting this long for it to show.
CLOCK_SKEW_S = 60.0
LIST_SETTLE_S = 2.0
# How often a lost create is looked for, then tried again, before the run stops.
CREATE_TRIES = 3
# How often the wait between polls checks for a stop.
STOP_CHECK_S = 0.1


class BatchConflictError(RunnerError):
    """Several batches could be the one a lost create made: a person has to decide."""

    exit_code = 3


@dataclass
class BatchProgress:
    """What the run shows while it waits: batches by state, rows settled, cost so far."""

    submitted: int = 0
    ended: int = 0
    started: float = field(default_factory=time.monotonic)

    def batches(self, in_progress: int) -> str:
        """The batches by state."""
        return f"batches: {self.submitted} submitted, {in_progress} in progress, {self.ended} ended"

    def line(self, in_progress: int, stats: RunStats) -> str:
        """One progress line (the same for a terminal and for cron)."""
        total = f" of {stats.total_rows:,}" if stats.total_rows is not None else ""
        elapsed = int(time.monotonic() - self.started)
        return (
            f"{self.batches(in_progress)} · rows settled {stats.done + stats.skipped:,}{total} · "
            f"{elapsed // 60}m{elapsed % 60:02d}s · ${stats.cost_usd:.4f} so far"
        )


class BatchBackend:
    """Executes work items through the Message Batches API and records every finished row."""

    def __init__(
        self,
        api: BatchApi,
        store: RunStore,
        settler: ItemSettler,
        stats: RunStats,
        control: StopControl,
        spec: BatchSpec,
    ) -> None:
        self.api = api
        self.store = store
        self.ledger = BatchLedger(store.run_dir)
        remove_stale_spools(self.ledger.dir)
        self.settler = settler
        self.stats = stats
        self.control = control
        self.spec = spec
        self.progress = BatchProgress()
        self.running: dict[int, BatchEntry] = {}
        self._round = 0

    # ---- the Backend protocol (backend.py) -------------------------------------------

    async def prepare(self) -> bool:
        """Settle the batches earlier sessions left; True if there were any."""
        had_open = bool(self.ledger.open_entries())
        await self._stopping_on_error(self.settle_earlier())
        return had_open

    def start(self, tasks: TaskGroup, items: MemoryObjectReceiveStream[WorkItem]) -> None:
        """Consume the queue in one task: batches are built one after another."""
        if self.control.stopping:
            items.close()
            return
        tasks.start_soon(self._execute_from, items)

    def snapshot(self) -> dict[str, Any]:
        """For the live display: items in running batches, and the batches by state."""
        return {
            "in_flight": sum(entry.requests for entry in self.running.values()),
            "waiting_on": self.progress.batches(len(self.running)),
        }

    async def _execute_from(self, items: MemoryObjectReceiveStream[WorkItem]) -> None:
        async with items:
            await self._stopping_on_error(self.execute(items))

    async def _stopping_on_error(self, work: Awaitable[None]) -> None:
        """Run `work`; a RunnerError stops the run as a fatal answer does (exit 3)."""
        try:
            await work
        except ApiError as exc:
            self._fatal(exc)
        except RunnerError as exc:
            self._fatal(ApiError(str(exc), AttemptFacts(outcome=Outcome.HTTP_ERROR)))

    # ---- what earlier sessions left ---------------------------------------------

    async def settle_earlier(self) -> None:
        """Find every batch an earlier session created (or may have), wait for it, collect it."""
        await self._adopt_open_batches()
        if self.running:
            log.info(
                "waiting for %d batches an earlier session left running: %s",
                len(self.running),
                ", ".join(str(e.batch_id) for e in self.running.values()),
            )
            await self.wait_and_collect()
        self.store.flush()  # the input's triage reads what is done from the parts

    async def _resolve_lost_create(self, entry: BatchEntry) -> bool:
        """Adopt the batch a lost create made; False (and abandoned) if it made none."""
        cutoff = datetime.fromtimestamp(entry.intent_at, UTC) - timedelta(seconds=CLOCK_SKEW_S)
        known = self.ledger.known_batch_ids()
        candidates = [
            b
            for b in await self.api.created_since(cutoff)
            if b["id"] not in known and _size(b) == entry.requests
        ]
        if len(candidates) > 1:
            ids = ", ".join(b["id"] for b in candidates)
            raise BatchConflictError(
                f"batch {entry.number} of this run ({entry.requests} requests) was being created "
                f"when the run stopped, and {len(candidates)} batches of that size were created "
                f"since: {ids}. Cancel the ones that are not this run's and resume"
            )
        if not candidates:
            log.info("batch %d was never created: its rows are sent again", entry.number)
            self.ledger.abandoned(entry)
            return False
        log.info("adopting batch %s for batch %d of this run", candidates[0]["id"], entry.number)
        self.ledger.created(entry, candidates[0]["id"])
        return True

    # ---- this session ------------------------------------------------------------

    async def execute(self, items: AsyncIterator[WorkItem]) -> None:
        """Send `items` in batches, wait, collect, and send again what may succeed next time."""
        source: AsyncIterator[BatchItem] | Iterable[BatchItem] = _as_batch_items(items)
        while not self.control.stopping:
            self._round += 1
            spool = RetrySpool(self.ledger.dir, self._round)
            self.settler.spool = spool
            await self._submit_all(source)
            await self.wait_and_collect()
            if spool.count == 0 or self.control.stopping:
                spool.discard()
                break
            log.info("round %d: sending %d items again", self._round + 1, spool.count)
            source = spool.drain()
        if self.running:
            log.warning(
                "batches left running: %s; resuming the run picks them up without sending "
                "anything again",
                ", ".join(str(e.batch_id) for e in self.running.values()),
            )

    async def _submit_all(self, source: AsyncIterator[BatchItem] | Iterable[BatchItem]) -> None:
        pending: list[BatchItem] = []
        size = _BODY_OVERHEAD
        async for item in _aiter(source):
            if self.control.stopping:
                return
            cost = len(item.params) + 64  # the item's custom_id and keys around its params
            if cost + _BODY_OVERHEAD > self.spec.max_bytes:
                self.settler.too_large(item, self.spec.max_bytes)
                continue
            if pending and (len(pending) >= self.spec.size or size + cost > self.spec.max_bytes):
                await self._submit(pending)
                pending, size = [], _BODY_OVERHEAD
            pending.append(item)
            size += cost
        if pending and not self.control.stopping:
            await self._submit(pending)

    async def _submit(self, items: list[BatchItem]) -> None:
        number = self.ledger.next_number()
        self.ledger.write_items(number, items)
        body = self._body(number, items)
        entry = self.ledger.intent(number, len(items))
        # Shielded: once the body may be out, the answer must be recorded, even on Ctrl-C.
        with anyio.CancelScope(shield=True):
            try:
                batch_id = await self._create(entry, body)
            except RejectedError as exc:
                log.error("the API refused batch %d: %s", number, exc.message)
                self.settler.refused(self.ledger.read_items(number), exc)
                self.ledger.abandoned(entry)
                return
            except FatalApiError as exc:
                self.ledger.abandoned(entry)
                self._fatal(exc)
                return
        self.running[number] = entry
        self.progress.submitted += 1
        log.info("submitted batch %s: %d requests", batch_id, len(items))

    def _body(self, number: int, items: list[BatchItem]) -> bytes:
        parts = [
            b'{"custom_id":"%s","params":%s}'
            % (self.ledger.custom_id(number, i).encode(), item.params)
            for i, item in enumerate(items)
        ]
        return b'{"requests":[' + b",".join(parts) + b"]}"

    async def _create(self, entry: BatchEntry, body: bytes) -> str:
        """The new batch's id; a lost answer is looked for before anything is sent again."""
        for _ in range(CREATE_TRIES):
            try:
                batch = await retried(lambda: self.api.create(body))
            except CreateUnconfirmed as exc:
                log.warning("%s; looking for it among the batches created since", exc)
                await anyio.sleep(LIST_SETTLE_S)
                if await self._resolve_lost_create(entry):
                    assert entry.batch_id is not None
                    return entry.batch_id
                entry = self.ledger.intent(entry.number, entry.requests)
                continue
            self.ledger.created(entry, batch["id"])
            return str(batch["id"])
        raise CreateUnconfirmed(
            f"creating batch {entry.number}: no answer {CREATE_TRIES} times; resume to try again"
        )

    async def wait_and_collect(self) -> None:
        """Poll the running batches until each ends (or the run stops), collecting each."""
        while self.running and not self.control.stopping:
            for number, entry in list(self.running.items()):
                assert entry.batch_id is not None
                try:
                    batch = await self.api.retrieve(entry.batch_id)
                except FatalApiError as exc:
                    self._fatal(exc)
                    return
                if batch.get("processing_status") == "ended":
                    await self._collect(entry, batch)
                    del self.running[number]
                    self.progress.ended += 1
                if self.control.stopping:
                    return
            log.info("%s", self.progress.line(len(self.running), self.stats))
            if self.running:
                await self._sleep(self.spec.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.control.stopping and time.monotonic() < deadline:
            await anyio.sleep(min(STOP_CHECK_S, deadline - time.monotonic()))

    async def _collect(self, entry: BatchEntry, batch: dict[str, Any]) -> None:
        """Stream an ended batch's results into the store, each item once."""
        assert entry.batch_id is not None
        items = self.ledger.read_items(entry.number)
        done = self._recorded_custom_ids(entry.batch_id)
        url = batch.get("results_url")
        if not url:
            raise RunnerError(f"batch {entry.batch_id} ended without a results_url")
        # Shielded: a result half recorded would be recorded again by the next session.
        with anyio.CancelScope(shield=True):
            await retried(lambda: self._read_results(entry, items, url, done))
            missing = [
                i for i in range(len(items)) if self.ledger.custom_id(entry.number, i) not in done
            ]
            for index in missing:
                self.settler.missing(
                    items[index], entry.batch_id, self.ledger.custom_id(entry.number, index)
                )
            self.ledger.collected(entry)
        if self.settler.fatal is not None:
            self._fatal(self.settler.fatal)

    async def _read_results(
        self, entry: BatchEntry, items: list[BatchItem], url: str, done: set[str]
    ) -> None:
        assert entry.batch_id is not None
        async for line in self.api.results(url):
            custom_id = str(line.get("custom_id"))
            if custom_id in done:
                continue
            where = self.ledger.parse_custom_id(custom_id)
            if where is None or where[0] != entry.number or where[1] >= len(items):
                raise BatchConflictError(
                    f"batch {entry.batch_id} holds custom_id {custom_id!r}, not one of batch "
                    f"{entry.number} of this run: it is not this run's batch"
                )
            self.settler.settle(
                items[where[1]], entry.batch_id, custom_id, line.get("result") or {}
            )
            done.add(custom_id)

    def _recorded_custom_ids(self, batch_id: str) -> set[str]:
        """custom_ids of this batch already in the attempts (an interrupted collection)."""
        frame = (
            self.store.scan_attempts()
            .filter(pl.col("request_id") == batch_id)
            .select("custom_id")
            .collect()
        )
        return {c for c in frame["custom_id"] if c is not None}

    def _fatal(self, exc: ApiError) -> None:
        self.control.fatal = self.control.fatal or (
            exc if isinstance(exc, FatalApiError) else FatalApiError(exc.message, exc.facts)
        )
        self.control.stop(0)

    async def cancel_all(self) -> int:
        """`runner cancel`: cancel every batch still running, wait for each to end, collect it."""
        await self._adopt_open_batches()
        for entry in self.running.values():
            assert entry.batch_id is not None
            await self.api.cancel(entry.batch_id)
            log.info("canceling batch %s", entry.batch_id)
        canceled = len(self.running)
        await self.wait_and_collect()
        return canceled

    async def _adopt_open_batches(self) -> None:
        """Every open batch of the ledger into `running`, lost creates resolved first."""
        for entry in self.ledger.open_entries():
            if entry.batch_id is None and not await self._resolve_lost_create(entry):
                continue
            self.running[entry.number] = entry
            self.progress.submitted += 1


async def _as_batch_items(items: AsyncIterator[WorkItem]) -> AsyncIterator[BatchItem]:
    async for work in items:
        request = work.request
        yield BatchItem(
            request.row_id,
            request.identity,
            request.line,
            request.fingerprint,
            request.model,
            work.prior_attempts,
            request.body,
        )


async def _aiter(
    source: AsyncIterator[BatchItem] | Iterable[BatchItem],
) -> AsyncIterator[BatchItem]:
    if isinstance(source, AsyncIterator):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


def _size(batch: dict[str, Any]) -> int:
    return sum(int(v) for v in (batch.get("request_counts") or {}).values())
