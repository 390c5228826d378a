"""A run's results joined back to its input rows, in input order, as JSONL, CSV or Parquet.

The join is on the input line: results carry the line of their row, and the input file
named in run.json is read again with the run's own reader. Output columns: the result's
`id`, then the input's columns, then the other result columns. An input column whose name
is also a result column gets the prefix `input_` (say `input_id`), so nothing is lost.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from runner.errors import UsageError
from runner.inputs import InputReader, input_fingerprint
from runner.models import InputFormat, InputRow, Status
from runner.parts import RESULT_SCHEMA
from runner.report import find_runs, read_run_json
from runner.store import RunStore

FORMATS = ("jsonl", "csv", "parquet")
INPUT_PREFIX = "input_"


def export_run(
    run_dir: Path,
    out: Path,
    fmt: str,
    *,
    status: str | None = None,
    columns: list[str] | None = None,
) -> int:
    """Write `run_dir`'s results joined to their input rows to `out`; return the rows written."""
    if fmt not in FORMATS:
        raise UsageError(f"export format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    if status is not None and status not in {s.value for s in Status}:
        raise UsageError(f"--status must be ok, error or invalid, not '{status}'")
    kind, _ = find_runs(run_dir)
    if kind != "run":
        raise UsageError(f"{run_dir}: a job dir; export takes one run dir (reports/JOB/RUN_ID)")
    results = RunStore(run_dir).read_results(with_state=True)
    if status is not None:
        results = results.filter(pl.col("status") == status)
    reader = _input_reader(run_dir)
    input_columns = _input_columns(reader)
    renamed = {name: _output_name(name) for name in input_columns}
    available = ["id", *renamed.values(), *(c for c in RESULT_SCHEMA if c != "id")]
    wanted = columns or available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise UsageError(f"no column '{unknown[0]}' to export (columns: {', '.join(available)})")
    records = _joined(results, reader, renamed, wanted)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        count = _WRITERS[fmt](records, tmp, wanted)
        os.replace(tmp, out)  # a reader of `out` never sees half a file
    except OSError as exc:
        raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _input_reader(run_dir: Path) -> InputReader:
    """The run's input, read as the run read it, refusing a file that has changed since."""
    info = read_run_json(run_dir)
    job, fingerprint = info.get("job") or {}, info.get("input") or {}
    path = Path(fingerprint.get("path") or job.get("input") or "")
    if not path.is_file():
        raise UsageError(f"{run_dir}: the run's input {path} is gone: cannot join results to it")
    if input_fingerprint(path)["sha256"] != fingerprint.get("sha256"):
        # Joining on line numbers of a file that has changed would pair the wrong rows.
        raise UsageError(f"{path} changed since run {run_dir.name}: cannot join results to it")
    fmt = job.get("input_format")
    reader = InputReader(
        path, fmt=InputFormat(fmt) if fmt else None, id_column=job.get("id_column")
    )
    reader.check()
    return reader


def _input_columns(reader: InputReader) -> list[str]:
    """Every input column in first-seen order (a JSONL file's objects may differ in keys)."""
    if reader.fmt is InputFormat.CSV:
        return list(reader.columns or [])
    names: dict[str, None] = {}
    for row in reader:
        if isinstance(row, InputRow):
            names.update(dict.fromkeys(row.columns))
    return list(names)


def _output_name(name: str) -> str:
    clash = name in RESULT_SCHEMA or name.startswith(INPUT_PREFIX)
    return INPUT_PREFIX + name if clash else name


def _joined(
    results: pl.DataFrame, reader: InputReader, renamed: dict[str, str], wanted: list[str]
) -> Iterator[dict[str, Any]]:
    """Merge-join results and input rows, both in line order: memory holds one row of each."""
    rows = iter(reader)
    current = next(rows, None)
    for result in results.iter_rows(named=True):
        while current is not None and current.line < result["line"]:
            current = next(rows, None)
        record = dict.fromkeys(renamed.values())
        if isinstance(current, InputRow) and current.line == result["line"]:
            # An invalid row whose columns could be read (a missing prompt) keeps them.
            record.update({renamed[k]: v for k, v in current.columns.items()})
        record.update({k: v for k, v in result.items() if k in RESULT_SCHEMA})
        yield {name: record[name] for name in wanted}


def _write_jsonl(records: Iterator[dict[str, Any]], path: Path, wanted: list[str]) -> int:
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_csv(records: Iterator[dict[str, Any]], path: Path, wanted: list[str]) -> int:
    """RFC 4180 CSV (CRLF, fields with quotes or newlines quoted), UTF-8 with a BOM.

    Excel reads a CSV without a BOM in the system's ANSI code page and garbles any
    non-ASCII text; with the BOM it reads UTF-8, and so does LibreOffice Calc, which
    honours the BOM too. Nested JSON values are written as JSON text, null as empty.
    """
    count = 0
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(wanted)
        for record in records:
            writer.writerow([_cell(record[name]) for name in wanted])
            count += 1
    return count


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _write_parquet(records: Iterator[dict[str, Any]], path: Path, wanted: list[str]) -> int:
    """Parquet wants one type per column: an input column of mixed types becomes JSON text."""
    data: dict[str, list[Any]] = {name: [] for name in wanted}
    for record in records:
        for name in wanted:
            data[name].append(record[name])
    series = []
    for name in wanted:
        if name in RESULT_SCHEMA:
            series.append(pl.Series(name, data[name], dtype=RESULT_SCHEMA[name]))
        else:
            series.append(_input_series(name, data[name]))
    frame = pl.DataFrame(series) if series else pl.DataFrame()
    frame.write_parquet(path)
    return frame.height


def _input_series(name: str, values: list[Any]) -> pl.Series:
    kinds = {type(v) for v in values if v is not None}
    if kinds and (kinds <= {float, int} or kinds <= {str} or kinds <= {bool}):
        return pl.Series(name, values, strict=False)
    return pl.Series(name, [None if v is None else json.dumps(v) for v in values], pl.String)


_WRITERS = {"jsonl": _write_jsonl, "csv": _write_csv, "parquet": _write_parquet}
