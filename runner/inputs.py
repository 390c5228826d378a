"""Reading the input as a stream of rows: the id rules, duplicates and missing columns.

File-level problems raise `InputFileError` from `InputReader.check()`, before any
request is sent. Row-level problems become `InvalidRow`s and the rest of the input
goes on. The input is read once (see input_source.py), so a pipe works like a file;
memory stays flat in its size: one record is held at a time, plus the seen-ids
table (`SeenIds`, about 32 bytes per id). Parquet from a stream or a compressed
file is first copied to a temporary file, since Parquet is read from its end.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.errors import InputFileError
from runner.input_formats import JSON_TYPES, InputFormat, Record, detect_format, is_utf8
from runner.input_source import InputSource
from runner.models import InputRow, InvalidRow

__all__ = ["BATCH_REQUEST_KEYS", "InputReader", "InvalidRowLog", "SeenIds"]

# A line of a Message Batches request file: {"custom_id": ..., "params": {...}}
# (https://docs.anthropic.com/en/api/creating-message-batches). Such an input runs
# as it is, `custom_id` being the row's id.
BATCH_REQUEST_KEYS = ("custom_id", "params")


class SeenIds:
    """The ids seen so far and the line of each one's first occurrence.

    An open-addressing hash table in two `array("Q")`s keyed by the id's 64-bit
    `hash()` (SipHash, per process, which is all this table lives for): 32 bytes per
    id at most half full (about 34 MB for a million ids, against about 106 MB for a
    dict of ints). Two different ids share a hash with probability about n²/2⁶⁵
    (3e-8 at a million ids); the later one would be reported as a duplicate.
    """

    def __init__(self) -> None:
        self._size = 1024
        self._keys = array("Q", [0]) * self._size  # 0 marks an empty slot
        self._lines = array("Q", [0]) * self._size
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def first_line(self, row_id: str, line: int) -> int:
        """Record `row_id` at `line` unless seen; return the line where it was first seen."""
        key = _digest(row_id)
        keys = self._keys
        mask = self._size - 1
        slot = key & mask
        while found := keys[slot]:
            if found == key:
                return self._lines[slot]
            slot = (slot + 1) & mask
        keys[slot] = key
        self._lines[slot] = line
        self._count += 1
        if self._count * 2 > self._size:
            self._grow()
        return line

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        self._size *= 2
        mask = self._size - 1
        keys = array("Q", [0]) * self._size
        lines = array("Q", [0]) * self._size
        for key, line in zip(old_keys, old_lines, strict=True):
            if key:
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                lines[slot] = line
        self._keys, self._lines = keys, lines


def _digest(row_id: str) -> int:
    # 0 is the empty-slot marker, so a zero hash is folded onto 1.
    return hash(row_id) & 0xFFFF_FFFF_FFFF_FFFF or 1


class InputReader:
    """Stream the rows of one input; `check()` first opens it and checks its columns."""

    def __init__(
        self,
        path: Path,
        *,
        fmt: str | None = None,
        id_column: str | None = None,
        columns_needed: Sequence[str] = (),
    ) -> None:
        self.source = InputSource(Path(path))
        self.path = self.source.path
        self.format_name = fmt
        self.fmt: InputFormat | None = None
        self.id_column = id_column
        self.columns_needed = tuple(dict.fromkeys(columns_needed))
        self.columns: list[str] | None = None
        # True for a Message Batches request file: each row's `params` is its request.
        self.batch_requests = False
        self._records: Iterator[Record] | None = None

    @property
    def name(self) -> str:
        """The input as messages name it: its path, or <stdin>."""
        return self.source.name

    def check(self) -> None:
        """Raise `InputFileError` if the input cannot be used at all; set `columns`."""
        if not self.source.is_stdin and self.path.is_dir():  # "folder" is no format either
            raise InputFileError(f"{self.path}: is a directory, not an input file")
        self.fmt = detect_format(self.source, self.format_name)
        self.columns, self._records = self.fmt.open(self.source)
        if self.columns and set(self.columns) == set(BATCH_REQUEST_KEYS):
            self.batch_requests = True
            self.id_column = self.id_column or BATCH_REQUEST_KEYS[0]
        self._check_columns(self.columns_needed)

    def _check_columns(self, needed: Sequence[str]) -> None:
        assert self.fmt is not None, "check() found the format"
        wanted = (*needed, *((self.id_column,) if self.id_column else ()))
        if not self.columns:
            return  # nothing readable to check against: the rows say what is wrong
        for name in wanted:
            if name not in self.columns:
                self.close()
                raise InputFileError(self.fmt.missing(name, self.columns, self.name))

    def require(self, columns: Sequence[str], *, per_row: bool = True) -> None:
        """Columns the input must have (and each row too, with `per_row`), checked now."""
        if per_row:
            self.columns_needed = tuple(dict.fromkeys([*self.columns_needed, *columns]))
        self._check_columns(columns)

    def close(self) -> None:
        """Close the input, read to its end or not."""
        if self.fmt is not None:
            self.fmt.close()

    def __iter__(self) -> Iterator[InputRow | InvalidRow]:
        if self._records is None:
            self.check()
        records, self._records = self._records, None
        assert records is not None, "check() opened the input"
        return self._rows(records)

    def count_rows(self) -> int | None:
        """The rows of a regular, uncompressed file, counted up front; None for a stream."""
        source = self.source
        if self.fmt is None or source.compression is not None or not source.is_regular_file():
            return None
        try:
            return self.fmt.count_rows(self.path)
        except (OSError, InputFileError):
            return None  # the one read that sends the rows says what is wrong

    def fingerprint(self) -> dict[str, Any]:
        """What was read so far: path, size and sha256 (of all of it once read to the end)."""
        return self.source.fingerprint()

    def _rows(self, records: Iterator[Record]) -> Iterator[InputRow | InvalidRow]:
        seen = SeenIds()
        for number, record in enumerate(records, 1):
            if record.columns is None:
                reason = record.problem or "unreadable record"
                yield InvalidRow(self._fallback_id(number, record.line), record.line, reason)
                continue
            row_id, id_problem = self._row_id(record.columns, number)
            problem = record.problem or id_problem
            missing = [name for name in self.columns_needed if name not in record.columns]
            if missing and problem is None:
                noun = self.fmt.noun if self.fmt else "field"
                names = ", ".join(f"'{name}'" for name in missing)
                problem = f"missing {noun}{'s' if len(missing) > 1 else ''} {names}"
            yield self._finish(seen, row_id, record.line, problem, record.columns)

    def _row_id(self, columns: dict[str, Any], number: int) -> tuple[str | None, str | None]:
        """The row's id (None if unusable) and the problem with it, if any."""
        if self.id_column is None:
            return str(number), None
        noun = self.fmt.noun if self.fmt else "field"
        if self.id_column not in columns:
            return None, f"missing id {noun} '{self.id_column}'"
        value = columns[self.id_column]
        if type(value) is int:  # not bool, which is an int too
            return str(value), None
        if type(value) is not str:
            kind = JSON_TYPES.get(type(value), "object")
            return None, f"id {noun} '{self.id_column}' must be a string or integer, found {kind}"
        if not value:
            return None, f"empty id in {noun} '{self.id_column}'"
        if not is_utf8(value):  # bad bytes in a CSV, or a lone surrogate from a \\udXXX escape
            return None, f"id {noun} '{self.id_column}' is not valid Unicode"
        return value, None

    def _fallback_id(self, number: int, line: int) -> str:
        # With no id column the row number is the id; with one, an unreadable id
        # becomes "line:N", unique in the file, so the invalid row can still be reported.
        return str(number) if self.id_column is None else f"line:{line}"

    def _finish(
        self,
        seen: SeenIds,
        row_id: str | None,
        line: int,
        problem: str | None,
        columns: dict[str, Any],
    ) -> InputRow | InvalidRow:
        """Apply the duplicate-id rule and build the row."""
        if row_id is None:
            assert problem is not None, "an unusable id always comes with its reason"
            return InvalidRow(f"line:{line}", line, problem)
        # Row numbers are unique by construction: only a real id column is tracked.
        if self.id_column is not None:
            first = seen.first_line(row_id, line)
            if first != line and problem is None:
                problem = f"duplicate id {row_id} (first on line {first})"
        if problem is not None:
            return InvalidRow(row_id, line, problem)
        return InputRow(row_id, line, columns)


class InvalidRowLog:
    """Name invalid rows on stderr, the first 20 of each kind; `close()` counts the rest."""

    SHOWN = 20

    def __init__(self, log: Any, where: str) -> None:
        self._log = log
        self._where = where
        self._seen: Counter[str] = Counter()

    def warn(self, line: int, reason: str) -> None:
        """Log one invalid row unless 20 like it were logged already."""
        kind = _reason_kind(reason)
        self._seen[kind] += 1
        if self._seen[kind] <= self.SHOWN:
            self._log.warning("%s:%d: %s", self._where, line, reason)

    def close(self) -> None:
        """Say how many rows of each kind were not named."""
        for kind, count in self._seen.items():
            if count > self.SHOWN:
                extra = count - self.SHOWN
                self._log.warning("%s: ... and %d more like this (%s)", self._where, extra, kind)


def _reason_kind(reason: str) -> str:
    """A reason without the particulars (numbers, quoted names): what makes messages alike."""
    return re.sub(r"\d+|'[^']*'|(?<=\bid )\S+", "…", reason)
