"""A run directory on disk: journal, atomic Parquet parts, resume state and compaction.

    RUN_DIR/
      run.json, summary.json     written whole to a temporary name, then renamed
      results/part-N.parquet     the report contract's columns, exactly
      state/part-N.parquet       (line, fingerprint) for the same rows, in the same order
      attempts/part-N.parquet    one row per HTTP attempt
      journal/segment-N.jsonl    rows finished since part N-1, one JSON line each
      .lock                      flock'd by the live run; the kernel drops it if the run dies

Why a journal: a finished row is appended to the journal at once (one write, no
fsync; a `kill -9` cannot lose what the kernel already has), so a crash loses only
the requests in flight. Every `PART_ROWS` rows or `PART_SECONDS` the segment becomes
Parquet part N (temporary name, fsync, rename) and is deleted; a segment left by a
crash is turned into its part at the next start. Part N is written for segment N
only, so doing it twice is harmless. Readers keep, per row, the highest part's
version: compaction writes new parts (one per `COMPACT_LINES` input lines) and only
then deletes the old ones, so a crash between the two steps changes nothing a reader sees.
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

from runner.errors import RunDirError
from runner.models import Attempt, RowResult
from runner.parts import (
    ATTEMPT_SCHEMA,
    RESULT_SCHEMA,
    STATE_SCHEMA,
    attempt_record,
    fsync_dir,
    records_frame,
    result_record,
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
        self._results: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._segment_opened = 0.0

    # ---- lifetime -------------------------------------------------------

    def open(self) -> None:
        """Create the layout, take the lock, recover what a crashed run left, start a segment."""
        for directory in (self.results_dir, self.state_dir, self.attempts_dir, self.journal_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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
        self._open_segment()

    def close(self) -> None:
        """Turn the open segment into a part and release the lock."""
        if self._segment_fd is not None:
            self.flush()
            os.close(self._segment_fd)
            self._segment_fd = None
            (self.journal_dir / f"segment-{self._segment:06d}.jsonl").unlink(missing_ok=True)
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
        self._segment_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_opened = time.monotonic()

    def record(self, result: RowResult | None, attempts: Iterable[Attempt]) -> None:
        """Journal a finished row (or only the attempts of one abandoned mid-retry)."""
        entry = {
            "r": result_record(result) if result is not None else None,
            "a": [attempt_record(a) for a in attempts],
        }
        assert self._segment_fd is not None, "store is not open"
        os.write(self._segment_fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode())
        if entry["r"] is not None:
            self._results.append(entry["r"])
        self._attempts.extend(entry["a"])

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
            results, attempts = [], []
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

    def _read_part(self, path: Path, columns: list[str] | None = None) -> pl.DataFrame | None:
        """A results part with its state columns beside it, or None if it is damaged."""
        try:
            results = _scan_results([path]).select(columns or list(RESULT_SCHEMA)).collect()
            state = pl.read_parquet(self.state_dir / path.name)
        except Exception as exc:  # polars raises several types for a damaged file
            log.warning("ignoring unreadable part %s: %s; its rows will be sent again", path, exc)
            return None
        if results.height != state.height:
            log.warning("ignoring part %s: its state does not match; rows will be sent again", path)
            return None
        return pl.concat([results, state], how="horizontal")

    def _part_lines(self, path: Path) -> pl.Series | None:
        """A results part's input lines (from its state), or None if either file is damaged.

        Reads the state's `line` column and only the results' footer: cheap enough to
        do for every part each time a run is read.
        """
        try:
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
            lines = pl.read_parquet(self.state_dir / path.name, columns=["line"])["line"]
        except Exception as exc:  # polars raises several types for a damaged file
            log.warning("ignoring unreadable part %s: %s; its rows will be sent again", path, exc)
            return None
        if rows != lines.len():
            log.warning("ignoring part %s: its state does not match; rows will be sent again", path)
            return None
        return lines

    def _spans(self) -> tuple[list[tuple[Path, int, int]], bool]:
        """Each readable part's (path, first line, last line), and whether they are in order.

        In order means each part is sorted by line and starts after the previous one ends,
        so reading them in turn gives every row once, in input order.
        """
        spans: list[tuple[Path, int, int]] = []
        in_order, previous_end = True, 0
        for path, _ in self._parts(self.results_dir):
            lines = self._part_lines(path)
            if lines is None:
                in_order = False
                continue
            if lines.is_empty():
                continue
            low, high = int(lines.min()), int(lines.max())  # type: ignore[arg-type]
            in_order = in_order and lines.is_sorted() and low > previous_end
            previous_end = high
            spans.append((path, low, high))
        return spans, in_order

    def read_results(
        self, with_state: bool = False, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """The latest outcome of every input line on disk, in input order (only `columns`)."""
        wanted = list(RESULT_SCHEMA) if columns is None else list(columns)
        frames = [
            frame
            for path, _ in self._parts(self.results_dir)
            if (frame := self._read_part(path, columns=wanted)) is not None
        ]
        selected = wanted + (list(STATE_SCHEMA) if with_state else [])
        if not frames:
            return pl.DataFrame(schema=RESULT_SCHEMA | STATE_SCHEMA).select(selected)
        frame = pl.concat(frames, how="vertical_relaxed")
        steps = frame["line"].diff().drop_nulls()
        if steps.is_empty() or steps.min() > 0:  # type: ignore[operator]
            return frame.select(selected)  # compacted: every line once, in order already
        # A row is an input line: parts are read in number order, so keeping the last
        # version of each line keeps the latest outcome.
        return (
            frame.unique(subset=["line"], keep="last", maintain_order=True)
            .sort("line", maintain_order=True)
            .select(selected)
        )

    def scan_results(
        self, with_state: bool = False, columns: list[str] | None = None
    ) -> pl.LazyFrame:
        """The results as a lazy frame: streamed from disk when compacted, else deduplicated."""
        spans, in_order = self._spans()
        if not (in_order and spans):
            return self.read_results(with_state=with_state, columns=columns).lazy()
        paths = [path for path, _, _ in spans]
        results = _scan_results(paths)
        if not with_state:
            return results
        state = pl.scan_parquet([self.state_dir / path.name for path in paths])
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

    def results_in_ranges(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        """Every line's latest outcome (`columns` and its state), in input order.

        Yields `COMPACT_LINES` lines at a time, so memory stays bounded by one range
        whatever the run's size, compacted or not.
        """
        spans, _ = self._spans()
        yield from self._ranges(spans, columns, None)

    def _ranges(
        self, spans: list[tuple[Path, int, int]], columns: list[str] | None, last_line: int | None
    ) -> Iterator[pl.DataFrame]:
        if not spans:
            return
        end_line = max(high for _, _, high in spans)
        if last_line is not None:
            end_line = min(end_line, last_line)
        for start in range(min(low for _, low, _ in spans), end_line + 1, COMPACT_LINES):
            stop = min(start + COMPACT_LINES, end_line + 1)
            frames = []
            for path, low, high in spans:
                if high >= start and low < stop:
                    part = self._read_part(path, columns)
                    if part is not None:
                        frames.append(part.filter(pl.col("line").is_between(start, stop - 1)))
            if frames:
                # Parts are read in number order: the last version of a line is the latest.
                yield (
                    pl.concat(frames, how="vertical_relaxed")
                    .unique(subset=["line"], keep="last", maintain_order=True)
                    .sort("line")
                )

    def compact(self, last_line: int | None = None) -> None:
        """Rewrite the results as parts of `COMPACT_LINES` lines each, in input order.

        Memory stays bounded by one range of lines whatever the run's size. Rows past
        `last_line` (the input has since got shorter) are dropped. The old parts are
        deleted only once every new one is on disk; a reader in between sees the same
        rows, since the newer part of a line wins. Attempts are a log and stay as written.
        """
        self.flush()
        spans, in_order = self._spans()
        if not spans:
            return
        beyond = last_line is not None and max(high for _, _, high in spans) > last_line
        if in_order and _one_part_per_range(spans) and not beyond:
            return
        number = self._segment
        first_new = number
        for chunk in self._ranges(spans, None, last_line):
            name = f"part-{number:06d}.parquet"
            write_parquet_atomic(chunk.select(list(STATE_SCHEMA)), self.state_dir / name)
            write_parquet_atomic(chunk.select(list(RESULT_SCHEMA)), self.results_dir / name)
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


def _scan_results(paths: list[Path]) -> pl.LazyFrame:
    """Results parts as one lazy frame of today's columns.

    A part written by an older version lacks the newer columns (served_model, say):
    they read as null, so its rows are kept, never sent and paid for again.
    """
    return pl.scan_parquet(
        paths, schema=RESULT_SCHEMA, missing_columns="insert", extra_columns="ignore"
    )


def _one_part_per_range(spans: list[tuple[Path, int, int]]) -> bool:
    """Whether in-order parts are already the ones compaction writes: one per line range.

    Without this, a run that finished in input order (concurrency 1, say) would keep
    one small part per flush.
    """
    first = spans[0][1]
    ranges = [
        ((low - first) // COMPACT_LINES, (high - first) // COMPACT_LINES) for _, low, high in spans
    ]
    return all(start == end for start, end in ranges) and len({s for s, _ in ranges}) == len(ranges)


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
