"""Reading the input file (CSV or JSONL) as a stream of rows.

File-level problems raise `InputFileError` from `InputReader.check()`, before any
request is sent. Row-level problems become `InvalidRow`s and the rest of the file
goes on. Memory stays flat in the file size: one record is held at a time, plus
the seen-ids table (`SeenIds`, about 32 bytes per id).
"""

from __future__ import annotations

import csv
import hashlib
import json
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from runner.errors import InputFileError
from runner.models import InputFormat, InputRow, InvalidRow

__all__ = ["InputReader", "SeenIds", "count_records", "detect_format", "input_fingerprint"]

_SUFFIXES = {".csv": InputFormat.CSV, ".jsonl": InputFormat.JSONL, ".ndjson": InputFormat.JSONL}
# csv's default field limit (131072 characters) would reject long prompts; 2**31 - 1
# is the largest value the C long behind it accepts on every platform.
_CSV_FIELD_LIMIT = 2**31 - 1
_PEEK_OBJECTS = 100
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def detect_format(path: Path, explicit: InputFormat | None = None) -> InputFormat:
    """The input format: `explicit` if given, else from the file's extension."""
    if explicit is not None:
        return explicit
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise InputFileError(
            f"{path}: unknown input format; use .csv or .jsonl, or --input-format"
        ) from None


def count_records(path: Path, fmt: InputFormat | None = None) -> int:
    """Records in the file for a progress total, without decoding or validating them.

    CSV is counted by the csv module itself, so quoted line breaks are no new record;
    JSONL by its line breaks (an upper bound where it has blank lines).
    """
    fmt = detect_format(path, fmt)
    if fmt is InputFormat.CSV:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        # latin-1 maps every byte to one character: quotes and line breaks parse exactly
        # as in UTF-8, at the C reader's speed, with no decoding to fail.
        with _open(path, "r", encoding="latin-1", newline="") as f:
            try:
                return max(sum(1 for record in csv.reader(f) if record) - 1, 0)
            except csv.Error:
                pass  # malformed quoting: fall back to counting lines
    lines = 0
    last = b"\n"
    with _open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk
    if not last.endswith(b"\n"):
        lines += 1  # a last line without a newline is still a record
    return max(lines - 1, 0) if fmt is InputFormat.CSV else lines


def input_fingerprint(path: Path) -> dict:
    """Identify the input's content for run.json, so a resume can tell it changed."""
    digest = hashlib.sha256()
    size = 0
    with _open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"path": str(path.resolve()), "size": size, "sha256": digest.hexdigest()}


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
    """Stream the rows of one input file; `check()` first validates the file as a whole."""

    def __init__(
        self,
        path: Path,
        *,
        fmt: InputFormat | None = None,
        id_column: str | None = None,
        columns_needed: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.id_column = id_column
        self.columns_needed = tuple(dict.fromkeys(columns_needed))
        self.columns: list[str] | None = None

    def check(self) -> None:
        """Raise `InputFileError` if the file cannot be used at all; set `columns`."""
        if self.path.is_dir():  # before the extension: "folder" is a directory, not a format
            raise InputFileError(f"{self.path}: is a directory, not an input file")
        self.fmt = detect_format(self.path, self.fmt)
        if self.fmt is InputFormat.CSV:
            with self._open_csv() as f:
                self.columns = self._read_header(_csv_reader(f))
        else:
            self.columns = self._peek_jsonl()

    def __iter__(self) -> Iterator[InputRow | InvalidRow]:
        if self.columns is None:
            self.check()
        if self.fmt is InputFormat.CSV:
            return self._iter_csv()
        return self._iter_jsonl()

    # --- CSV ---

    def _open_csv(self) -> IO[str]:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        # surrogateescape keeps undecodable bytes as lone surrogates, so the row
        # holding them is rejected instead of silently getting U+FFFD.
        return _open(self.path, "r", encoding="utf-8-sig", errors="surrogateescape", newline="")

    def _read_header(self, reader: Any) -> list[str]:
        try:
            header = next(reader)
        except StopIteration:
            raise InputFileError(f"{self.path}: empty: no header line") from None
        except csv.Error as exc:
            raise InputFileError(f"{self.path}: unreadable header line: {exc}") from None
        if not header:
            raise InputFileError(f"{self.path}: blank first line: no header line")
        for name in header:
            if not _is_utf8(name):
                raise InputFileError(f"{self.path}: header line is not valid UTF-8")
        if len(set(header)) != len(header):
            dup = next(name for name in header if header.count(name) > 1)
            raise InputFileError(f"{self.path}: column '{dup}' appears twice in the header")
        wanted = self.columns_needed + ((self.id_column,) if self.id_column else ())
        for name in wanted:
            if name not in header:
                found = ", ".join(header)
                raise InputFileError(f"no column '{name}' in {self.path} (columns: {found})")
        return header

    def _iter_csv(self) -> Iterator[InputRow | InvalidRow]:
        seen = SeenIds()
        with self._open_csv() as f:
            reader = _csv_reader(f)
            header = self._read_header(reader)
            width = len(header)
            id_index = header.index(self.id_column) if self.id_column else None
            number = 0
            while True:
                line = reader.line_num + 1  # a record is cited by its first line
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    number += 1
                    yield InvalidRow(self._fallback_id(number, line), line, f"malformed CSV: {exc}")
                    continue
                if not record:
                    continue  # a blank line is not a record
                number += 1
                row_id, problem = self._csv_id(record, id_index, number)
                columns: dict[str, Any] = {}
                if len(record) != width:
                    problem = f"expected {width} fields, found {len(record)}"
                else:
                    problem = _csv_bad_bytes(header, record) or problem
                    columns = dict(zip(header, record, strict=True))
                yield self._finish(seen, row_id, line, problem, columns)

    def _csv_id(
        self, record: list[str], id_index: int | None, number: int
    ) -> tuple[str | None, str | None]:
        """The record's id (None if unusable) and the problem with it, if any."""
        if id_index is None:
            return str(number), None
        if id_index >= len(record):
            return None, None  # the field count problem says it all
        value = record[id_index]
        if not value:
            return None, f"empty id in column '{self.id_column}'"
        if not _is_utf8(value):
            return None, None  # reported by the bad-bytes check, with its column
        return value, None

    # --- JSONL ---

    def _open_jsonl(self) -> IO[bytes]:
        # Binary, so lines split on b"\n" only and each line is decoded alone: one bad
        # byte spoils its own line, never the rest of the file.
        return _open(self.path, "rb")

    def _peek_jsonl(self) -> list[str]:
        keys: dict[str, None] = {}
        objects = 0
        with self._open_jsonl() as f:
            for lineno, raw in enumerate(f, 1):
                if objects == _PEEK_OBJECTS:
                    break
                if lineno == 1:
                    raw = raw.removeprefix(_BOM)
                try:
                    value = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                    continue
                if isinstance(value, dict):
                    objects += 1
                    keys.update(dict.fromkeys(value))
        if objects:
            wanted = self.columns_needed + ((self.id_column,) if self.id_column else ())
            for name in wanted:
                if name not in keys:
                    found = ", ".join(keys) or "none"
                    raise InputFileError(
                        f"no field '{name}' in the first {objects} objects of {self.path}"
                        f" (keys found: {found})"
                    )
        return list(keys)

    def _iter_jsonl(self) -> Iterator[InputRow | InvalidRow]:
        seen = SeenIds()
        number = 0
        with self._open_jsonl() as f:
            for line, raw in enumerate(f, 1):
                if line == 1:
                    raw = raw.removeprefix(_BOM)
                if not raw or raw.isspace():
                    continue  # blank lines are skipped; line numbers stay physical
                number += 1
                try:
                    value = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    reason = (
                        f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                    )
                    yield InvalidRow(self._fallback_id(number, line), line, reason)
                    continue
                except (ValueError, RecursionError) as exc:
                    yield InvalidRow(self._fallback_id(number, line), line, _json_problem(exc))
                    continue
                if not isinstance(value, dict):
                    reason = f"expected a JSON object, found {_JSON_TYPES[type(value)]}"
                    yield InvalidRow(self._fallback_id(number, line), line, reason)
                    continue
                row_id, problem = self._json_id(value, number)
                missing = [name for name in self.columns_needed if name not in value]
                if missing and problem is None:
                    names = ", ".join(f"'{name}'" for name in missing)
                    problem = f"missing field{'s' if len(missing) > 1 else ''} {names}"
                yield self._finish(seen, row_id, line, problem, value)

    def _json_id(self, obj: dict[str, Any], number: int) -> tuple[str | None, str | None]:
        """The object's id (None if unusable) and the problem with it, if any."""
        if self.id_column is None:
            return str(number), None
        if self.id_column not in obj:
            return None, f"missing id field '{self.id_column}'"
        value = obj[self.id_column]
        if type(value) is int:  # not bool, which is an int too
            return str(value), None
        if type(value) is not str:
            kind = _JSON_TYPES.get(type(value), "object")
            return None, f"id field '{self.id_column}' must be a string or integer, found {kind}"
        if not value:
            return None, f"empty id in field '{self.id_column}'"
        if not _is_utf8(value):  # a lone surrogate from a \\udXXX escape
            return None, f"id field '{self.id_column}' is not valid Unicode"
        return value, None

    # --- both ---

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


def _open(path: Path, mode: str, **kwargs: Any) -> IO[Any]:
    """Open the input, turning OS errors into one `InputFileError` naming the file."""
    try:
        return open(path, mode, **kwargs)  # the caller closes it
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not an input file") from None
    except PermissionError:
        raise InputFileError(f"{path}: cannot read: permission denied") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _csv_reader(f: IO[str]) -> Any:
    # strict: a stray quote (`"x"y`) or an unterminated one is a malformed record,
    # not silently rewritten; the reader resumes on the next line.
    return csv.reader(f, strict=True)


def _json_problem(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {exc}"  # e.g. an integer beyond int's digit limit


def _is_utf8(value: str) -> bool:
    """False if `value` holds lone surrogates (undecodable bytes under surrogateescape)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_bad_bytes(header: list[str], record: list[str]) -> str | None:
    """Name the first column holding bytes that were not valid UTF-8."""
    for name, value in zip(header, record, strict=True):
        if not _is_utf8(value):
            bad = next(ch for ch in value if "\udc80" <= ch <= "\udcff")
            return f"column '{name}' is not valid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})"
    return None
