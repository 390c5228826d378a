"""A run directory on disk: journal, atomic Parquet parts, resume state and compaction.

    RUN_DIR/
      run.json, summary.json     written whole to a temporary name, then renamed
      results/part-N.parquet     the report contract's columns, exactly
      state/part-N.parquet       (key, line, fingerprint) for the same rows, in the same order
      attempts/part-N.parquet    one row per HTTP attempt
      journal/segment-N.jsonl    rows finished since part N-1, one JSON line each
      .lock                      flock'd by the live run; the kernel drops it if the run dies

Why a journal: a finished row is appended to the journal at once (one write, no
fsync; a `kill -9` cannot lose what the kernel already has), so a crash loses only
the requests in flight. Every `PART_ROWS` rows or `PART_SECONDS` the segment becomes
Parquet part N (temporary name, fsync, rename) and is deleted; a segment left by a
crash is turned into its part at the next start. Part N is written for segment N
only, so doing it twice is harmless. Readers keep, per row key, the highest part's
version (part_index.py): compaction writes new parts (`COMPACT_LINES` rows each, in
input order) and only then deletes the old ones, so a crash between the two steps
changes nothing a reader sees. Every write is whole or not at all; a local failure
(disk full, no file handles) raises LocalFailureError and leaves the journal readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from runner.errors import LocalFailureError, RunDirError
from runner.models import Attempt, RowResult
from runner.part_index import (
    check_openable,
    in_order,
    index_of,
    read_state,
    scan_results_parts,
)
from runner.parts import (
    ATTEMPT_SCHEMA,
    RESULT_SCHEMA,
    STATE_SCHEMA,
    attempt_record,
    fsync_dir,
    records_frame,
    result_record,
    write_all,
    write_parquet_atomic,
)

log = logging.getLogger("runner")

PART_ROWS = 1000
PART_SECONDS = 2.0
# Compaction rewrites the results this many input lines at a time (bounded memory).
COMPACT_LINES = 20_000

_PART = re.compile(r"^part-(\d{6,})\.parquet$")
_SEGMENT = re.compile(r"^segment-(\d{6,})\.jsonl$")


class RunStore:
    """One run directory: the live run's writer, and the reader for resume and reports."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.results_dir = run_dir / "results"
        self.state_dir = run_dir / "state"
        self.attempts_dir = run_dir / "attempts"
        self.journal_dir = run_dir / "journal"
        self._lock_fd: int | None = None
        self._segment_fd: int | None = None
        self._segment = 0
        self._first_segment = 0
        self._results: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._segment_opened = 0.0
        self._segment_bytes = 0  # what the open segment holds: a failed append is cut back to it

    # ---- lifetime -------------------------------------------------------

    def open(self) -> None:
        """Create the layout, take the lock, recover what a crashed run left, start a segment."""
        try:
            for directory in (self.results_dir, self.state_dir, self.attempts_dir):
                directory.mkdir(parents=True, exist_ok=True)
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LocalFailureError.from_os_error(exc, self.run_dir) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise RunDirError(
                f"{self.run_dir}: another runner process is using this run; "
                "wait for it to finish or stop it first"
            ) from None
        self._remove_temporaries()
        self._recover_journal()
        self._segment = self._highest_number() + 1
        self._first_segment = self._segment  # parts from here on are this session's
        self._open_segment()

    def close(self) -> None:
        """Turn the open segment into a part and release the lock."""
        if self._segment_fd is not None:
            try:
                self.flush()
                (self.journal_dir / f"segment-{self._segment:06d}.jsonl").unlink(missing_ok=True)
            except (LocalFailureError, OSError) as exc:
                # The journal still holds every row: the next start turns it into a part.
                log.warning("%s; the journal keeps the rows until the next start", exc)
            os.close(self._segment_fd)
            self._segment_fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def in_use(self) -> bool:
        """Whether a live process holds this run's lock (a report then says `running`)."""
        try:
            fd = os.open(self.run_dir / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock if it was taken
        return False

    def holds_rows(self) -> bool:
        """Whether any results or attempts part is on disk (an open store's journal is in parts)."""
        return bool(self._parts(self.results_dir) or self._parts(self.attempts_dir))

    def _remove_temporaries(self) -> None:
        for directory in (self.run_dir, self.results_dir, self.state_dir, self.attempts_dir):
            for tmp in directory.glob(".*.tmp"):
                log.warning("removing %s left half-written by an interrupted run", tmp)
                tmp.unlink(missing_ok=True)

    def _highest_number(self) -> int:
        numbers = [n for _, n in self._parts(self.results_dir)]
        numbers += [n for _, n in self._parts(self.attempts_dir)]
        numbers += [
            int(m.group(1)) for p in self.journal_dir.iterdir() if (m := _SEGMENT.match(p.name))
        ]
        return max(numbers, default=0)

    @staticmethod
    def _parts(directory: Path) -> list[tuple[Path, int]]:
        if not directory.is_dir():
            return []
        found = [(p, int(m.group(1))) for p in directory.iterdir() if (m := _PART.match(p.name))]
        return sorted(found, key=lambda item: item[1])

    # ---- writing --------------------------------------------------------

    def _open_segment(self) -> None:
        path = self.journal_dir / f"segment-{self._segment:06d}.jsonl"
        try:
            self._segment_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise LocalFailureError.from_os_error(exc, path) from None
        self._segment_bytes = 0
        self._segment_opened = time.monotonic()

    def record(self, result: RowResult | None, attempts: Iterable[Attempt]) -> None:
        """Journal a finished row (or only the attempts of one abandoned mid-retry)."""
        row = result_record(result) if result is not None else None
        tries = [attempt_record(a) for a in attempts]
        assert self._segment_fd is not None, "store is not open"
        line = (json.dumps({"r": row, "a": tries}, ensure_ascii=False) + "\n").encode()
        try:
            write_all(self._segment_fd, line, self.journal_dir)
        except OSError as exc:
            # Whole or not at all: cut a partial record off, so the journal stays readable
            # (should that fail too, recovery skips the torn line and the row runs again).
            with contextlib.suppress(OSError):
                os.ftruncate(self._segment_fd, self._segment_bytes)
            raise LocalFailureError.from_os_error(exc, self.journal_dir) from None
        self._segment_bytes += len(line)
        if row is not None:
            self._results.append(row)
        self._attempts.extend(tries)

    def flush_due(self) -> bool:
        """Whether the open segment is big or old enough to become a part."""
        pending = len(self._results) + len(self._attempts)
        return pending >= PART_ROWS or (
            pending > 0 and time.monotonic() - self._segment_opened >= PART_SECONDS
        )

    def rotate(self) -> Callable[[], None]:
        """Start the next segment now; the returned function writes the closed one's part.

        The split lets the slow half (Parquet, fsync) run in a thread while rows keep
        arriving in the new segment.
        """
        results, attempts, number = self._results, self._attempts, self._segment
        assert self._segment_fd is not None, "store is not open"
        os.close(self._segment_fd)
        self._results, self._attempts = [], []
        self._segment += 1
        self._open_segment()
        segment = self.journal_dir / f"segment-{number:06d}.jsonl"

        def write() -> None:
            if results or attempts:
                self._write_part(number, results, attempts)
            segment.unlink(missing_ok=True)

        return write

    def flush(self) -> None:
        """Write everything journaled so far as a part."""
        if self._results or self._attempts:
            self.rotate()()

    def _write_part(
        self, number: int, results: list[dict[str, Any]], attempts: list[dict[str, Any]]
    ) -> None:
        name = f"part-{number:06d}.parquet"
        # Attempts first, then state, then results: a results part is the commit mark.
        if attempts:
            write_parquet_atomic(records_frame(attempts, ATTEMPT_SCHEMA), self.attempts_dir / name)
        if results:
            write_parquet_atomic(records_frame(results, STATE_SCHEMA), self.state_dir / name)
            write_parquet_atomic(records_frame(results, RESULT_SCHEMA), self.results_dir / name)
        for directory in (self.attempts_dir, self.state_dir, self.results_dir):
            fsync_dir(directory)

    def _recover_journal(self) -> None:
        for path in sorted(self.journal_dir.glob("segment-*.jsonl")):
            match = _SEGMENT.match(path.name)
            if match is None:
                continue
            results: list[dict[str, Any]] = []
            attempts: list[dict[str, Any]] = []
            for entry in _read_journal(path):
                if entry.get("r") is not None:
                    results.append(entry["r"])
                attempts.extend(entry.get("a") or [])
            if results or attempts:
                log.info("recovered %d finished rows from %s", len(results), path.name)
                self._write_part(int(match.group(1)), results, attempts)
            path.unlink()

    # ---- reading --------------------------------------------------------

    def journal_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows and attempts still only in the journal (a live or crashed run), oldest first."""
        results: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        if self.journal_dir.is_dir():
            for path in sorted(self.journal_dir.glob("segment-*.jsonl")):
                for entry in _read_journal(path):
                    if entry.get("r") is not None:
                        results.append(entry["r"])
                    attempts.extend(entry.get("a") or [])
        return results, attempts

    def _read_part(
        self, path: Path, columns: list[str] | None = None, state: list[str] | None = None
    ) -> pl.DataFrame | None:
        """A results part (`columns`) with its state (`state`) beside it; None if damaged."""
        check_openable(path, self.state_dir / path.name)
        try:
            if columns == []:  # only the row count, from the footer
                rows = pl.scan_parquet(path).select(pl.len()).collect().item()
                results = pl.repeat(None, rows, dtype=pl.Boolean, eager=True).alias("_").to_frame()
            else:
                results = (
                    scan_results_parts([path]).select(columns or list(RESULT_SCHEMA)).collect()
                )
            state_frame = read_state(self.state_dir / path.name, path, state)
        except Exception as exc:  # polars raises several types for a damaged file
            log.warning("ignoring unreadable part %s: %s; its rows will be sent again", path, exc)
            return None
        if results.height != state_frame.height:
            log.warning("ignoring part %s: its state does not match; rows will be sent again", path)
            return None
        return pl.concat([results, state_frame], how="horizontal").drop("_", strict=False)

    def index(self, columns: tuple[str, ...] = (), extra: tuple[pl.Expr, ...] = ()) -> pl.DataFrame:
        """Every stored results row in write order: key hash, part, row in part and line.

        Plus `extra`, computed per part from the results' `columns` and the state, so no
        string column of the whole run is ever held at once. The last row of a key hash
        is the key's latest version.
        """
        frames = []
        for path, number in self._parts(self.results_dir):
            part = self._read_part(path, list(columns), ["key", "line", "fingerprint"])
            if part is not None:
                frames.append(index_of(part, number, extra))
        if not frames:
            return index_of(pl.DataFrame(schema=RESULT_SCHEMA | STATE_SCHEMA), 0, extra)
        return pl.concat(frames, how="vertical_relaxed")

    def read_results(
        self, with_state: bool = False, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """The latest outcome of every row on disk, in input order (only `columns`).

        Rows no longer in the input (a null `line`) come last.
        """
        wanted = list(RESULT_SCHEMA) if columns is None else list(columns)
        frames = [
            frame
            for path, _ in self._parts(self.results_dir)
            if (frame := self._read_part(path, wanted)) is not None
        ]
        selected = wanted + (list(STATE_SCHEMA) if with_state else [])
        if not frames:
            return pl.DataFrame(schema=RESULT_SCHEMA | STATE_SCHEMA).select(selected)
        frame = pl.concat(frames, how="vertical_relaxed")
        if frame["key"].n_unique() != frame.height:
            # Parts are read in number order: the last version of a key is the latest.
            frame = frame.unique(subset=["key"], keep="last", maintain_order=True)
        return frame.sort("line", nulls_last=True, maintain_order=True).select(selected)

    def scan_results(
        self, with_state: bool = False, columns: list[str] | None = None
    ) -> pl.LazyFrame:
        """The results as a lazy frame: streamed from disk when compacted, else deduplicated."""
        index = self.index()
        if index.is_empty() or not in_order(index):
            return self.read_results(with_state=with_state, columns=columns).lazy()
        names = [f"part-{n:06d}.parquet" for n in index["part"].unique(maintain_order=True)]
        results = scan_results_parts([self.results_dir / name for name in names])
        if columns is not None:
            results = results.select(columns)
        if not with_state:
            return results
        state = pl.scan_parquet([self.state_dir / name for name in names])
        return pl.concat([results, state], how="horizontal")

    def scan_attempts(self) -> pl.LazyFrame:
        """Every attempt on disk, streamed from its parts (attempts are never rewritten)."""
        paths = []
        for path, _ in self._parts(self.attempts_dir):
            try:
                pl.read_parquet_schema(path)
                paths.append(path)
            except Exception as exc:  # polars raises several types for a damaged file
                log.warning("ignoring unreadable part %s: %s", path, exc)
        if not paths:
            return pl.LazyFrame(schema=ATTEMPT_SCHEMA)
        # Parts written before a column was added lack it: it reads as null there.
        return pl.scan_parquet(paths, schema=ATTEMPT_SCHEMA, missing_columns="insert")

    def read_attempts(self, columns: list[str] | None = None) -> pl.DataFrame:
        """Every attempt on disk (only `columns` if given)."""
        frame = self.scan_attempts()
        return (frame if columns is None else frame.select(columns)).collect()

    def compact(self, lines: pl.DataFrame | None = None) -> None:
        """Rewrite the results as parts of `COMPACT_LINES` rows, one per key, in input order.

        `lines` (key_hash, line) gives the rows earlier sessions wrote their line in the
        input this session read to the end: null for a row no longer in it, which is
        kept (it was paid for) unless it was `invalid`. Memory stays bounded by the
        index and one range of rows. The old parts are deleted only once every new one
        is on disk; a reader in between sees the same rows, since a key's newer part wins.
        Attempts are a log and stay as written.
        """
        self.flush()
        index = self.index(("status",), (pl.col("status"),))
        if index.is_empty():
            return
        winners = index.unique(subset=["key_hash"], keep="last", maintain_order=True)
        if lines is not None:
            current = winners.join(lines, on="key_hash", how="left", suffix="_now")
            current = current.sort("part", "row").with_columns(
                pl.when(pl.col("part") < self._first_segment)
                .then(pl.col("line_now"))
                .otherwise(pl.col("line"))
                .alias("line")
            )
            winners = current.drop("line_now").filter(
                pl.col("line").is_not_null() | (pl.col("status") != "invalid")
            )
        unchanged = winners.height == index.height and winners["line"].equals(index["line"])
        if unchanged and in_order(winners, COMPACT_LINES):
            return
        order = winners.sort("line", nulls_last=True, maintain_order=True)
        number = first_new = self._segment
        cache: dict[int, pl.DataFrame] = {}
        for start in range(0, order.height, COMPACT_LINES):
            chunk = order.slice(start, COMPACT_LINES).with_row_index("order")
            pieces = []
            for part in chunk["part"].unique(maintain_order=True).to_list():
                if part not in cache:
                    cache.clear()  # one part at a time: a part's rows are mostly in one chunk
                    cache[part] = self._whole_part(part)
                picked = chunk.filter(pl.col("part") == part).select("row", "line", "order")
                pieces.append(cache[part].join(picked, on="row").drop("row"))
            rows = pl.concat(pieces, how="vertical_relaxed").sort("order")
            name = f"part-{number:06d}.parquet"
            write_parquet_atomic(rows.select(list(STATE_SCHEMA)), self.state_dir / name)
            write_parquet_atomic(rows.select(list(RESULT_SCHEMA)), self.results_dir / name)
            number += 1
        for directory in (self.state_dir, self.results_dir):
            fsync_dir(directory)
        for path, n in self._parts(self.results_dir):
            if n < first_new:
                path.unlink()
                (self.state_dir / path.name).unlink(missing_ok=True)
        # The open (empty) segment's number may now name a compacted part: move past them.
        assert self._segment_fd is not None, "store is not open"
        os.close(self._segment_fd)
        (self.journal_dir / f"segment-{self._segment:06d}.jsonl").unlink(missing_ok=True)
        self._segment = max(number, self._segment + 1)
        self._open_segment()

    def _whole_part(self, number: int) -> pl.DataFrame:
        """Every column of a part the index read a moment ago, rows numbered, without `line`."""
        part = self._read_part(self.results_dir / f"part-{number:06d}.parquet")
        if part is None:
            raise RunDirError(f"{self.results_dir}: part {number} became unreadable")
        return part.drop("line").with_row_index("row")


def _read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Journal entries; a torn last line (the process died mid-write) is skipped."""
    with path.open("rb") as fh:
        for raw in fh:
            try:
                yield json.loads(raw)
            except ValueError:
                log.warning("%s: skipping a torn journal line", path.name)


@contextlib.contextmanager
def open_store(run_dir: Path) -> Iterator[RunStore]:
    """A locked, recovered store for the live run; closed (and unlocked) on the way out."""
    store = RunStore(run_dir)
    store.open()
    try:
        yield store
    finally:
        store.close()
