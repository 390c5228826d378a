"""What a batch run has asked the API for, kept on disk so no row is ever paid twice.

    RUN_DIR/batches/
      ledger.jsonl        one fsynced JSON line per step: intent, created, collected, abandoned
      NNNNNN.parquet      batch NNNNNN's items: row id and key, line, fingerprint, model, earlier
                          attempts and params, in custom_id order
      retry-N.jsonl       items to send again in this session's next round (scratch)

A batch is written in this order: its items, then the intent (how many requests,
when), then the create call, then `created` with the batch id, and once every result
is in the journal, `collected`. A crash between the create call and `created` leaves
an intent without a batch id: the next session lists the batches created since the
intent and adopts the single one holding as many requests (see batch.py). Every
custom_id is `<run tag>-<batch number>-<item index>`, so results (in any order) find
their row, and a batch of another run is told apart by its tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from runner.parts import write_parquet_atomic

_MANIFEST = re.compile(r"^(\d{6})\.parquet$")
MANIFEST_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "key": pl.String,
    "line": pl.Int64,
    "fingerprint": pl.String,
    "model": pl.String,
    "prior": pl.Int64,
    "params": pl.Binary,
}


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One row as a batch item: what to send (`params`) and what its result belongs to."""

    row_id: str
    key: str  # the row's identity (Request.identity): what a resume matches it by
    line: int
    fingerprint: str
    model: str
    prior: int  # attempts (items) earlier sessions and rounds made for this row
    params: bytes  # the Messages API body, without `stream`


@dataclass(slots=True)
class BatchEntry:
    """One batch as the ledger knows it."""

    number: int
    requests: int
    intent_at: float
    batch_id: str | None = None
    collected: bool = False
    abandoned: bool = False

    @property
    def open(self) -> bool:
        """Created (or maybe created) and its results not all in the journal yet."""
        return not (self.collected or self.abandoned)


class BatchLedger:
    """The `batches/` folder of one run."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "batches"
        self.dir.mkdir(exist_ok=True)
        self.path = self.dir / "ledger.jsonl"
        # Particular to the run (job name and run id), stable if the folder moves.
        digest = hashlib.sha256(f"{run_dir.parent.name}/{run_dir.name}".encode()).hexdigest()
        self.tag = "rn" + digest[:10]
        self.entries = self._replay()

    def custom_id(self, number: int, index: int) -> str:
        """The custom_id of item `index` of batch `number` (matches ^[a-zA-Z0-9_-]{1,64}$)."""
        return f"{self.tag}-{number}-{index}"

    def parse_custom_id(self, custom_id: str) -> tuple[int, int] | None:
        """(batch number, item index) of one of this run's custom_ids, else None."""
        tag, _, rest = custom_id.partition("-")
        number, _, index = rest.partition("-")
        if tag != self.tag or not number.isdigit() or not index.isdigit():
            return None
        return int(number), int(index)

    def next_number(self) -> int:
        """The number the next batch gets."""
        numbers = [int(m.group(1)) for p in self.dir.iterdir() if (m := _MANIFEST.match(p.name))]
        return max([*numbers, *self.entries], default=0) + 1

    def open_entries(self) -> list[BatchEntry]:
        """Batches whose results are not all recorded yet, oldest first."""
        return [entry for _, entry in sorted(self.entries.items()) if entry.open]

    def known_batch_ids(self) -> set[str]:
        """Every batch id this run has recorded."""
        return {e.batch_id for e in self.entries.values() if e.batch_id is not None}

    # ---- the steps, in order ------------------------------------------------

    def write_items(self, number: int, items: list[BatchItem]) -> None:
        """Keep batch `number`'s items (atomic Parquet), before anything is sent."""
        frame = pl.DataFrame(
            {
                "id": [i.row_id for i in items],
                "key": [i.key for i in items],
                "line": [i.line for i in items],
                "fingerprint": [i.fingerprint for i in items],
                "model": [i.model for i in items],
                "prior": [i.prior for i in items],
                "params": [i.params for i in items],
            },
            schema=MANIFEST_SCHEMA,
        )
        write_parquet_atomic(frame, self.dir / f"{number:06d}.parquet")

    def read_items(self, number: int) -> list[BatchItem]:
        """Batch `number`'s items, in custom_id index order."""
        frame = pl.read_parquet(self.dir / f"{number:06d}.parquet")
        return [BatchItem(*row) for row in frame.iter_rows()]

    def intent(self, number: int, requests: int) -> BatchEntry:
        """Record that batch `number` is about to be created, and when."""
        entry = BatchEntry(number, requests, time.time())
        self._append({"intent": number, "requests": requests, "at": entry.intent_at})
        self.entries[number] = entry
        return entry

    def created(self, entry: BatchEntry, batch_id: str) -> None:
        """Record the batch id the API gave (or that listing found) for `entry`."""
        self._append({"created": entry.number, "batch_id": batch_id})
        entry.batch_id = batch_id

    def collected(self, entry: BatchEntry) -> None:
        """Record that every result of `entry` is in the journal."""
        self._append({"collected": entry.number})
        entry.collected = True
        (self.dir / f"{entry.number:06d}.parquet").unlink(missing_ok=True)

    def abandoned(self, entry: BatchEntry) -> None:
        """Record that `entry`'s create call made no batch: its rows are sent again."""
        self._append({"abandoned": entry.number})
        entry.abandoned = True
        (self.dir / f"{entry.number:06d}.parquet").unlink(missing_ok=True)

    # ---- the file -------------------------------------------------------------

    def _append(self, step: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(step) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _replay(self) -> dict[int, BatchEntry]:
        entries: dict[int, BatchEntry] = {}
        for step in _read_steps(self.path):
            if "intent" in step:
                number = step["intent"]
                entries[number] = BatchEntry(number, step["requests"], step["at"])
            elif "created" in step and step["created"] in entries:
                entries[step["created"]].batch_id = step["batch_id"]
            elif "collected" in step and step["collected"] in entries:
                entries[step["collected"]].collected = True
            elif "abandoned" in step and step["abandoned"] in entries:
                entries[step["abandoned"]].abandoned = True
        return entries


class RetrySpool:
    """Items to send again in the next round, on disk so memory stays flat."""

    def __init__(self, directory: Path, round_number: int) -> None:
        self.path = directory / f"retry-{round_number}.jsonl"
        self.count = 0
        self._fh = self.path.open("w", encoding="utf-8")

    def add(self, item: BatchItem) -> None:
        """Keep `item` for the next round."""
        fields = [item.row_id, item.key, item.line, item.fingerprint, item.model, item.prior]
        self._fh.write(json.dumps([*fields, item.params.decode()], ensure_ascii=False) + "\n")
        self.count += 1

    def discard(self) -> None:
        """Nothing to send again: close and delete the file."""
        self._fh.close()
        self.path.unlink(missing_ok=True)

    def drain(self) -> Iterator[BatchItem]:
        """The kept items, once; the file is deleted after."""
        self._fh.close()
        try:
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    *fields, params = json.loads(line)
                    row_id, key, row_line, fingerprint, model, prior = fields
                    yield BatchItem(
                        row_id, key, row_line, fingerprint, model, prior, params.encode()
                    )
        finally:
            self.path.unlink(missing_ok=True)


def remove_stale_spools(directory: Path) -> None:
    """A crashed session's retry files: the resume's own triage finds those rows again."""
    for path in directory.glob("retry-*.jsonl"):
        path.unlink(missing_ok=True)


def _read_steps(path: Path) -> Iterable[dict[str, Any]]:
    """The ledger's steps; a torn last line (killed mid-write) is skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    steps = []
    for line in raw.splitlines():
        try:
            steps.append(json.loads(line))
        except ValueError:
            continue
    return steps
