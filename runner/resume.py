"""Skipping rows already done: what earlier sessions of a run left on disk, batch by batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from runner import __version__
from runner.inputs import InputReader, SeenIds
from runner.job import Job
from runner.models import InputRow, InvalidRow, Request, Status
from runner.pool import WorkItem
from runner.render import Renderer
from runner.store import RunStore


@dataclass(slots=True)
class Triage:
    """What a batch of requests holds, against what earlier sessions left on disk."""

    to_send: list[WorkItem]
    unchanged: int = 0  # ok with the same request: skipped
    new: int = 0  # no earlier outcome for its key
    changed: int = 0  # an earlier outcome for another request (the row was edited)
    retry: int = 0  # same request, but not ok yet (error, or abandoned mid-retry)

    @property
    def total(self) -> int:
        """Every row the tally counted."""
        return self.unchanged + self.new + self.changed + self.retry

    def add(self, other: Triage) -> None:
        """Count `other`'s rows in this tally (its rows to send are not kept)."""
        self.unchanged += other.unchanged
        self.new += other.new
        self.changed += other.changed
        self.retry += other.retry


class DoneRows:
    """What earlier sessions of this run left on disk: the rows to skip, attempts so far.

    A row is its key (`Request.identity`, never its line): it is done if the latest
    outcome of its key is `ok` for the same request fingerprint. Each stored key is
    kept as hashes of key and fingerprint, its attempt count and status flags (about
    35 bytes), sorted by key hash, so a batch is matched by binary search wherever
    its rows now sit in the input. Matching also notes each key's current line, so
    compaction can put the rows in the input's order and tell which are no longer in it.
    """

    def __init__(self, store: RunStore) -> None:
        self.empty = True
        # A fresh run has nothing to read: polars' query code then stays out of memory
        # while the streams are open (about 20 MB of a 500-stream run's peak, issue 17).
        if store.holds_rows():
            self._read(store)
        # Few large batches when resuming, small ones for a fresh run so the first
        # requests go out at once.
        self.batch = 256 if self.empty else 8192

    def _read(self, store: RunStore) -> None:
        """Load the key table and the failed attempts of the rows on disk."""
        index = store.index(
            ("status", "attempts"),
            (
                pl.col("fingerprint").hash().alias("fingerprint_hash"),
                (pl.col("status") == Status.OK.value).alias("ok"),
                (pl.col("status") != Status.INVALID.value).alias("paid"),
                pl.col("attempts").fill_null(0),
            ),
        )
        table = (
            index.unique(subset=["key_hash"], keep="last")
            .select("key_hash", "fingerprint_hash", "ok", "paid", "attempts")
            .sort("key_hash")
        )
        self._keys = table["key_hash"]
        self._fingerprints = table["fingerprint_hash"]
        self._ok = table["ok"]
        self._paid = table["paid"]
        self._attempts = table["attempts"]
        self._lines = pl.Series("line", [None] * table.height, dtype=pl.Int64)
        # Attempts are numbered on across sessions, so the highest number is the count.
        # Only failed ones are needed: a row abandoned mid-retry has no results row.
        failed = (
            store.scan_attempts()
            .filter(pl.col("outcome") != "ok")
            .group_by(pl.coalesce("key", "id").hash().alias("key_hash"))
            .agg(pl.col("attempt").max().alias("failed_prior"))
            .sort("key_hash")
            .collect(engine="streaming")
        )
        self._failed_keys = failed["key_hash"]
        self._failed_prior = failed["failed_prior"]
        self.empty = table.is_empty() and failed.is_empty()

    def triage(self, batch: list[Request]) -> Triage:
        """The batch's rows still to send (with their earlier attempts), and what it holds."""
        if self.empty or not batch:  # a batch may hold only invalid rows
            return Triage([WorkItem(request) for request in batch], new=len(batch))
        keys = pl.Series([r.identity for r in batch], dtype=pl.String).hash()
        at, found = _lookup(self._keys, keys)
        if self._keys.is_empty():  # only attempts of rows abandoned mid-retry
            same = done = found
        else:
            fingerprints = pl.Series([r.fingerprint for r in batch], dtype=pl.String).hash()
            same = found & (self._fingerprints.gather(at) == fingerprints)
            done = same & self._ok.gather(at)
        self._lines.scatter(
            at.filter(found), pl.Series([r.line for r in batch], dtype=pl.Int64).filter(found)
        )
        failed_at, failed_found = _lookup(self._failed_keys, keys)
        stored = _gathered(self._attempts, at, found)
        failed = _gathered(self._failed_prior, failed_at, failed_found)
        prior = stored.zip_with(stored >= failed, failed)
        to_send = [
            WorkItem(request, earlier)
            for request, skip, earlier in zip(batch, done, prior, strict=True)
            if not skip
        ]
        unchanged, matched, unchanged_requests = (
            int(done.sum()),
            int(found.sum()),
            int(same.sum()),
        )
        return Triage(
            to_send,
            unchanged=unchanged,
            new=len(batch) - matched,
            changed=matched - unchanged_requests,
            retry=unchanged_requests - unchanged,
        )

    def no_longer_in_input(self) -> int:
        """Paid rows of earlier sessions that no batch matched: gone from the input."""
        if self.empty:
            return 0
        return int((self._lines.is_null() & self._paid).sum())

    def current_lines(self) -> pl.DataFrame:
        """Each earlier key's line in the input read to the end (null: no longer there)."""
        return pl.DataFrame({"key_hash": self._keys, "line": self._lines})


def _lookup(sorted_keys: pl.Series, keys: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Where each of `keys` sits in `sorted_keys`, and whether it is there at all."""
    if sorted_keys.is_empty():
        return pl.Series([0] * len(keys), dtype=pl.UInt32), pl.Series([False] * len(keys))
    at = sorted_keys.search_sorted(keys, side="left").clip(0, len(sorted_keys) - 1)
    return at, sorted_keys.gather(at) == keys


def _gathered(values: pl.Series, at: pl.Series, found: pl.Series) -> pl.Series:
    """`values` at `at` where `found`, else 0."""
    zeros = pl.Series([0] * len(at), dtype=pl.Int64)
    if values.is_empty():
        return zeros
    return values.gather(at).cast(pl.Int64).zip_with(found, zeros)


def _with_keys(requests: list[Request], seen: SeenIds, repeats: dict[str, int]) -> list[Request]:
    """Requests keyed by fingerprint and occurrence number (an input without an id column)."""
    keyed = []
    for request in requests:
        fingerprint = request.fingerprint
        if seen.first_line(fingerprint, request.line) == request.line:
            occurrence = 1
        else:
            occurrence = repeats[fingerprint] = repeats.get(fingerprint, 1) + 1
        keyed.append(replace(request, key=f"{fingerprint}#{occurrence}"))
    return keyed


def rows_key(job: Job, input_sha256: str) -> dict[str, str]:
    """What decides every row's request: the input's bytes and the settings that render it.

    A session that ends having seen every row records this key in run.json as
    `settled`. While the key stays the same, every stored outcome still matches its
    row's request, so a resume can tell what is left from the results alone,
    without reading and rendering the whole input again.
    """
    settings: dict[str, Any] = {
        "runner": __version__,
        "input_format": job.input_format,
        "id_column": job.id_column,
        "request": job.to_dict()["request"],
    }
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return {"input_sha256": input_sha256, "request_sha256": hashlib.sha256(encoded).hexdigest()}


def batches(
    reader: InputReader, renderer: Renderer, limit: int | None, size: int = 256, by_id: bool = True
) -> Iterator[tuple[list[Request], list[InvalidRow]]]:
    """Rendered requests and invalid rows, in input order, a batch at a time (`limit` rows).

    Without ids (`by_id` false) each request is keyed by its fingerprint and occurrence
    number: the n-th identical row is the same row in every session.
    """
    requests: list[Request] = []
    invalid: list[InvalidRow] = []
    seen, repeats = SeenIds(), dict[str, int]()
    for count, row in enumerate(reader):
        if limit is not None and count >= limit:
            break
        item = renderer.render(row) if isinstance(row, InputRow) else row
        if isinstance(item, InvalidRow):
            invalid.append(item)
        else:
            requests.append(item)
        if len(requests) + len(invalid) >= size:
            yield requests if by_id else _with_keys(requests, seen, repeats), invalid
            requests, invalid = [], []
    if requests or invalid:
        yield requests if by_id else _with_keys(requests, seen, repeats), invalid
