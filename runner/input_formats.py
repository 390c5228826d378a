"""The input formats, one class each in `FORMATS`: the CLI's choices and messages come from it.

A format turns the input's one stream into records (`line`, columns, problem) and
names its columns before the first record, so a missing column stops the run
before any request is sent. The id rules, duplicates and missing fields are
`InputReader`'s, the same for every format.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from runner.errors import InputFileError
from runner.input_source import InputSource, stream_suffix

__all__ = ["FORMATS", "InputFormat", "Record", "detect_format", "format_names"]

# csv's default field limit (131072 characters) would reject long prompts; 2**31 - 1
# is the largest value the C long behind it accepts on every platform.
_CSV_FIELD_LIMIT = 2**31 - 1
_PEEK_OBJECTS = 100
_BOM = b"\xef\xbb\xbf"
JSON_TYPES = {
    list: "array",
    dict: "object",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Record:
    """One record as read: its line (row number for Parquet), columns, and what is wrong."""

    line: int
    columns: dict[str, Any] | None
    problem: str | None = None


class InputFormat:
    """One input format: how a stream becomes named columns and records."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    # What a column is called in this format's messages.
    noun: ClassVar[str] = "field"

    def open(self, source: InputSource) -> tuple[list[str], Iterator[Record]]:
        """The column names and the records that follow them; the iterator closes the stream."""
        raise NotImplementedError

    _stream: Any = None

    def close(self) -> None:
        """Close the stream `open()` opened, read to its end or not."""
        if self._stream is not None:
            self._stream.close()

    def missing(self, name: str, columns: list[str], where: str) -> str:
        """The message for a column the job needs that the input does not have."""
        return f"no {self.noun} '{name}' in {where} ({self.noun}s: {', '.join(columns)})"

    def count_rows(self, path: Path) -> int:
        """The records a regular file holds, read once more, so progress can say "of N" at once."""
        _, records = type(self)().open(InputSource(path))
        return sum(1 for _ in records)


class CsvFormat(InputFormat):
    """Comma-separated values with a header line, UTF-8 (a BOM is skipped)."""

    name = "csv"
    suffixes = (".csv",)
    noun = "column"

    def open(self, source: InputSource) -> tuple[list[str], Iterator[Record]]:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        # surrogateescape keeps undecodable bytes as lone surrogates, so the row
        # holding them is rejected instead of silently getting U+FFFD.
        text = self._stream = io.TextIOWrapper(
            source.open(), encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        # strict: a stray quote (`"x"y`) or an unterminated one is a malformed record,
        # not silently rewritten; the reader resumes on the next line.
        reader = csv.reader(text, strict=True)
        try:
            header = _csv_header(reader, source.name)
        except BaseException:
            text.close()
            raise
        return header, self._records(reader, header)

    def _records(self, reader: Any, header: list[str]) -> Iterator[Record]:
        width = len(header)
        with self._stream:
            while True:
                line = reader.line_num + 1  # a record is cited by its first line
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield Record(line, None, f"malformed CSV: {exc}")
                    continue
                if not record:
                    continue  # a blank line is not a record
                if len(record) != width:
                    # The columns it has still name the row's id, if it has one.
                    partial = dict(zip(header, record, strict=False))
                    yield Record(line, partial, f"expected {width} fields, found {len(record)}")
                    continue
                columns = dict(zip(header, record, strict=True))
                yield Record(line, columns, _csv_bad_bytes(header, record))


class JsonlFormat(InputFormat):
    """One JSON object a line (JSON Lines); blank lines are skipped."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson")

    def open(self, source: InputSource) -> tuple[list[str], Iterator[Record]]:
        # Binary, so lines split on b"\n" only and each line is decoded alone: one bad
        # byte spoils its own line, never the rest of the file.
        stream = self._stream = source.open()
        peeked: list[Record] = []
        keys: dict[str, None] = {}
        objects = 0
        lines = enumerate(stream, 1)
        try:
            for line, raw in lines:
                record = _json_record(line, raw)
                if record is not None:
                    peeked.append(record)
                    if record.columns is not None:
                        objects += 1
                        keys.update(dict.fromkeys(record.columns))
                        if objects == _PEEK_OBJECTS:
                            break
        except BaseException:
            stream.close()
            raise
        self._objects = objects
        return list(keys), self._records(peeked, lines)

    def count_rows(self, path: Path) -> int:
        # Non-blank lines, as `_json_record` skips them: no line needs parsing to count.
        with path.open("rb") as lines:
            return sum(1 for raw in lines if raw.strip() not in (b"", _BOM))

    def missing(self, name: str, columns: list[str], where: str) -> str:
        found = ", ".join(columns) or "none"
        return (
            f"no field '{name}' in the first {self._objects} objects of {where}"
            f" (keys found: {found})"
        )

    def _records(
        self, peeked: list[Record], lines: Iterator[tuple[int, bytes]]
    ) -> Iterator[Record]:
        with self._stream:
            yield from peeked
            for line, raw in lines:
                record = _json_record(line, raw)
                if record is not None:
                    yield record


class ParquetFormat(InputFormat):
    """Apache Parquet; a record's "line" is its row number. Read through polars."""

    name = "parquet"
    suffixes = (".parquet", ".pq")
    noun = "column"
    _BATCH = 4096

    def open(self, source: InputSource) -> tuple[list[str], Iterator[Record]]:
        import polars as pl

        where = source.spooled()
        if not isinstance(where, Path):
            self._stream = where  # a temporary copy of a stream
        try:
            frame = pl.scan_parquet(where)
            columns = list(frame.collect_schema())
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputFileError(f"{source.name}: not a readable Parquet file: {exc}") from None
        return columns, self._records(frame)

    def count_rows(self, path: Path) -> int:
        import polars as pl

        try:
            return int(pl.scan_parquet(path).select(pl.len()).collect().item())
        except pl.exceptions.PolarsError as exc:
            raise InputFileError(f"{path}: not a readable Parquet file: {exc}") from None

    def _records(self, frame: Any) -> Iterator[Record]:
        line = 0
        try:
            for batch in frame.collect_batches(chunk_size=self._BATCH):
                for columns in batch.iter_rows(named=True):
                    line += 1
                    yield Record(line, columns)
        finally:
            self.close()


FORMATS: dict[str, InputFormat] = {
    fmt.name: fmt for fmt in (CsvFormat(), JsonlFormat(), ParquetFormat())
}


def format_names() -> list[str]:
    """The formats' names, for the CLI's choices and messages."""
    return list(FORMATS)


def detect_format(source: InputSource, explicit: str | None = None) -> InputFormat:
    """The input format: `explicit` if given, else from the extension (past .gz or .zst)."""
    if explicit is not None:
        return type(FORMATS[explicit])()
    suffix = stream_suffix(source.path)
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return type(fmt)()
    names = ", ".join(s for fmt in FORMATS.values() for s in fmt.suffixes)
    if source.is_stdin:
        raise InputFileError(f"stdin: say its format with --input-format ({', '.join(FORMATS)})")
    raise InputFileError(
        f"{source.name}: unknown input format; use {names} (optionally .gz or .zst), "
        "or --input-format"
    )


def _csv_header(reader: Any, name: str) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(f"{name}: empty: no header line") from None
    except csv.Error as exc:
        raise InputFileError(f"{name}: unreadable header line: {exc}") from None
    if not header:
        raise InputFileError(f"{name}: blank first line: no header line")
    for column in header:
        if not is_utf8(column):
            raise InputFileError(f"{name}: header line is not valid UTF-8")
    if len(set(header)) != len(header):
        dup = next(column for column in header if header.count(column) > 1)
        raise InputFileError(f"{name}: column '{dup}' appears twice in the header")
    return header


def _json_record(line: int, raw: bytes) -> Record | None:
    """The object on one JSONL line, a record naming its problem, or None for a blank line."""
    if line == 1:
        raw = raw.removeprefix(_BOM)
    if not raw or raw.isspace():
        return None  # blank lines are skipped; line numbers stay physical
    try:
        value = json.loads(raw.decode("utf-8"), parse_float=WrittenFloat)
    except UnicodeDecodeError as exc:
        return Record(
            line, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        )
    except (ValueError, RecursionError) as exc:
        return Record(line, None, _json_problem(exc))
    if not isinstance(value, dict):
        return Record(line, None, f"expected a JSON object, found {JSON_TYPES[type(value)]}")
    return Record(line, value)


class WrittenFloat(float):
    """A JSON number with a fraction or exponent that remembers how the file wrote it."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> WrittenFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __str__(self) -> str:
        return self.text


JSON_TYPES[WrittenFloat] = "number"


def _json_problem(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {exc}"  # e.g. an integer beyond int's digit limit


def is_utf8(value: str) -> bool:
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
        if not is_utf8(value):
            bad = next(ch for ch in value if "\udc80" <= ch <= "\udcff")
            return f"column '{name}' is not valid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})"
    return None
