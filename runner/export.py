"""A run's results joined back to its input rows, in input order, as JSONL, CSV or Parquet.

The join is on the input line: results carry the line of their row, and the input file
named in run.json is read again with the run's own reader. Output columns: the result's
`id`, then the input's columns, then the other result columns. Two more can be asked for
with `columns`: `prompt` (the user message as it was sent) and `system`, rendered again
from the input with the run's own request settings. An input column whose name is also
an output column gets the prefix `input_` (say `input_id`), so nothing is lost. Asking
only for result columns needs no input at all.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import IO, Any

import polars as pl

from runner.answers import USABLE, answer_kind
from runner.errors import RunnerError, UsageError
from runner.input_formats import WrittenFloat
from runner.input_source import InputSource
from runner.inputs import InputReader
from runner.job import RequestSpec
from runner.models import InputRow, Request, Status
from runner.parts import RESULT_SCHEMA
from runner.render import Renderer
from runner.report import find_runs, read_run_json
from runner.store import RunStore

FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
STDOUT = "-"
INPUT_PREFIX = "input_"
# Columns rendered from the input on request: what was sent, for prompt/completion pairs.
RENDERED = ("prompt", "system")


def export_format(out: Path, fmt: str | None) -> str:
    """The format asked for, else the one the file's extension names; a stream's is JSONL."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"export format must be one of {', '.join(FORMATS)}, not '{fmt}'")
        return fmt
    found = EXTENSIONS.get(out.suffix.lower())
    if found is None and _is_stream(out):
        return "jsonl"
    if found is None:
        known = ", ".join(EXTENSIONS)
        raise UsageError(f"{out}: give --format: the extension is not one of {known}")
    return found


def export_run(
    run_dir: Path,
    out: Path,
    fmt: str | None = None,
    *,
    status: str | None = None,
    usable: bool = False,
    columns: list[str] | None = None,
    expand_json: bool = False,
) -> int:
    """Write `run_dir`'s results joined to their input rows to `out`; return the rows written.

    `out` is `-` for stdout. `usable` keeps only complete answers (see runner.answers).
    `expand_json` adds a column per top-level field of the structured answers (output_json).
    """
    fmt = export_format(out, fmt)
    if status is not None and status not in {s.value for s in Status}:
        raise UsageError(f"--status must be ok, error or invalid, not '{status}'")
    if usable and status not in (None, Status.OK.value):
        raise UsageError(f"--usable keeps ok rows only: it cannot go with --status {status}")
    if str(out) == STDOUT and fmt == "parquet" and sys.stdout.isatty():
        raise UsageError("Parquet is binary: give -o FILE, or pipe stdout somewhere")
    kind, _ = find_runs(run_dir)
    if kind != "run":
        raise UsageError(f"{run_dir}: a job dir; export takes one run dir (reports/JOB/RUN_ID)")
    # Rows no longer in the input (a null line) have no input row to join to.
    results = RunStore(run_dir).read_results(with_state=True).filter(pl.col("line").is_not_null())
    if status is not None:
        results = results.filter(pl.col("status") == status)
    if usable:
        results = results.filter(answer_kind(results.columns) == USABLE)
    result_columns = list(RESULT_SCHEMA)
    keys = _json_keys(results["output_json"]) if expand_json else []
    asked, columns = columns, _without_json_fields(columns, keys)
    if columns is not None and set(columns) <= set(result_columns):
        records = _results_only(results, columns)
        wanted = columns
    else:
        run_info = read_run_json(run_dir)
        reader = _input_reader(run_dir, run_info, result_columns)
        renamed = {name: _output_name(name) for name in _input_columns(reader)}
        default = ["id", *renamed.values(), *(c for c in result_columns if c != "id")]
        wanted = columns or default
        available = [*default, *RENDERED]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise UsageError(
                f"no column '{unknown[0]}' to export (columns: {', '.join(available)})"
            )
        renderer = _renderer(run_info) if set(RENDERED) & set(wanted) else None
        records = _joined(results, reader, renamed, wanted, renderer)
    if expand_json:
        # A field named like another column is written as output_json.<field>.
        taken = {*wanted, *RESULT_SCHEMA, *RENDERED}
        fields = {key: f"output_json.{key}" if key in taken else key for key in keys}
        present = {*wanted, *fields.values()}
        wanted = asked or [*wanted, *fields.values()]
        missing = [name for name in wanted if name not in present]
        if missing:
            raise UsageError(f"no column '{missing[0]}' to export (no answer has that field)")
        records = _expanded(records, results["output_json"], fields, wanted)
    with _target(out) as fh:
        return _WRITERS[fmt](records, fh, wanted)


def _is_stream(out: Path) -> bool:
    """Stdout, or something that exists and is not a regular file (/dev/stdout, a FIFO)."""
    return str(out) == STDOUT or out.is_symlink() or (out.exists() and not out.is_file())


@contextmanager
def _target(out: Path) -> Iterator[IO[bytes]]:
    """A binary stream onto `out`: stdout, the file in place, or a temporary file renamed.

    A regular file is written under a temporary name and renamed, so a reader never sees
    half of it. Anything else that exists (/dev/stdout, a FIFO, a terminal, a symlink) is
    written where it is: renaming over it would replace the device or link with a file.
    """
    try:
        if str(out) == STDOUT:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        elif out.is_dir():
            raise UsageError(f"{out}: is a directory; give a file name")
        elif _is_stream(out):
            with out.open("wb") as fh:
                yield fh
        else:
            tmp = out.with_name(f".{out.name}.tmp")
            try:
                with tmp.open("wb") as fh:
                    yield fh
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
    except BrokenPipeError:
        # The reader went away (`| head`): quiet the interpreter's own flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise RunnerError(f"{out}: the reader closed the pipe before the export ended") from None
    except OSError as exc:
        raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None


def _input_reader(run_dir: Path, info: dict[str, Any], result_columns: list[str]) -> InputReader:
    """The run's input, read as the run read it, refusing a file that has changed since."""
    job, fingerprint = info.get("job") or {}, info.get("input") or {}
    path = Path(fingerprint.get("path") or job.get("input") or "")
    # Result columns need no input: say so, since they are what can still be exported.
    instead = f"; export without it: --columns {','.join(result_columns)}"
    if fingerprint.get("path") == "<stdin>":
        raise UsageError(f"{run_dir}: the run read stdin: no input to join results to{instead}")
    if not path.is_file():
        raise UsageError(
            f"{run_dir}: the run's input {path} is gone: cannot join results to it{instead}"
        )
    source = InputSource(path)
    source.fingerprint_file()
    if source.fingerprint()["sha256"] != fingerprint.get("sha256"):
        # Joining on line numbers of a file that has changed would pair the wrong rows.
        raise UsageError(
            f"{path} changed since run {run_dir.name}: cannot join results to it{instead}"
        )
    fmt = job.get("input_format")
    reader = InputReader(path, fmt=fmt or None, id_column=job.get("id_column"))
    reader.check()
    return reader


def _renderer(info: dict[str, Any]) -> Renderer:
    """The run's own renderer, rebuilt from the request settings run.json recorded."""
    recorded = (info.get("job") or {}).get("request") or {}
    known = {f.name for f in fields(RequestSpec)}
    return Renderer(replace(RequestSpec(), **{k: v for k, v in recorded.items() if k in known}))


def _input_columns(reader: InputReader) -> list[str]:
    """Every input column in first-seen order (a JSONL file's objects may differ in keys)."""
    if reader.fmt is not None and reader.fmt.name != "jsonl":
        return list(reader.columns or [])
    names: dict[str, None] = {}
    for row in reader:
        if isinstance(row, InputRow):
            names.update(dict.fromkeys(row.columns))
    return list(names)


def _output_name(name: str) -> str:
    clash = name in RESULT_SCHEMA or name in RENDERED or name.startswith(INPUT_PREFIX)
    return INPUT_PREFIX + name if clash else name


def _json_keys(answers: pl.Series) -> list[str]:
    """Top-level fields of the JSON answers, first seen first."""
    keys: dict[str, None] = {}
    for text in answers.drop_nulls():
        value = json.loads(text)
        if isinstance(value, dict):
            keys.update(dict.fromkeys(value))
    return list(keys)


def _without_json_fields(columns: list[str] | None, keys: list[str]) -> list[str] | None:
    """The asked columns that are not expanded JSON fields (those are added after the join)."""
    if columns is None or not keys:
        return columns
    names = {*keys, *(f"output_json.{key}" for key in keys)}
    return [name for name in columns if name not in names]


def _expanded(
    records: Iterator[dict[str, Any]],
    answers: pl.Series,
    fields: dict[str, str],
    wanted: list[str],
) -> Iterator[dict[str, Any]]:
    """Each record with its answer's fields added (null where the answer lacks one)."""
    for record, text in zip(records, answers, strict=True):
        value = json.loads(text) if text is not None else None
        for key, name in fields.items():
            record[name] = value.get(key) if isinstance(value, dict) else None
        yield {name: record[name] for name in wanted}


def _results_only(results: pl.DataFrame, wanted: list[str]) -> Iterator[dict[str, Any]]:
    for record in results.iter_rows(named=True):
        yield {name: record[name] for name in wanted}


def _sent(renderer: Renderer, row: InputRow) -> dict[str, Any]:
    """The `prompt` and `system` of the request the row renders to, as the body says them."""
    request = renderer.render(row)
    if not isinstance(request, Request):
        return {}
    body = json.loads(request.body)
    return {"prompt": _text(body["messages"][0]["content"]), "system": _text(body.get("system"))}


def _text(content: Any) -> Any:
    """A message's content as text: a string as it is, text blocks joined."""
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return content


def _joined(
    results: pl.DataFrame,
    reader: InputReader,
    renamed: dict[str, str],
    wanted: list[str],
    renderer: Renderer | None,
) -> Iterator[dict[str, Any]]:
    """Merge-join results and input rows, both in line order: memory holds one row of each."""
    rows = iter(reader)
    current = next(rows, None)
    for result in results.iter_rows(named=True):
        while current is not None and current.line < result["line"]:
            current = next(rows, None)
        record = dict.fromkeys([*renamed.values(), *RENDERED])
        if isinstance(current, InputRow) and current.line == result["line"]:
            # An invalid row whose columns could be read (a missing prompt) keeps them.
            record.update({renamed[k]: v for k, v in current.columns.items()})
            if renderer is not None:
                record.update(_sent(renderer, current))
        record.update({k: v for k, v in result.items() if k in RESULT_SCHEMA})
        yield {name: record[name] for name in wanted}


@contextmanager
def _text_stream(fh: IO[bytes]) -> Iterator[io.TextIOWrapper]:
    """UTF-8 text over `fh`, handed back unclosed (stdout stays open)."""
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    try:
        yield text
        text.flush()
    finally:
        text.detach()


def _write_jsonl(records: Iterator[dict[str, Any]], fh: IO[bytes], wanted: list[str]) -> int:
    count = 0
    with _text_stream(fh) as text:
        for record in records:
            text.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_csv(records: Iterator[dict[str, Any]], fh: IO[bytes], wanted: list[str]) -> int:
    """RFC 4180 CSV (CRLF, fields with quotes or newlines quoted), UTF-8 with a BOM.

    Excel reads a CSV without a BOM in the system's ANSI code page and garbles any
    non-ASCII text; with the BOM it reads UTF-8, and so does LibreOffice Calc, which
    honours the BOM too. Nested JSON values are written as JSON text, null as empty.
    """
    count = 0
    with _text_stream(fh) as text:
        text.write("\ufeff")
        writer = csv.writer(text, lineterminator="\r\n")
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


def _write_parquet(records: Iterator[dict[str, Any]], fh: IO[bytes], wanted: list[str]) -> int:
    """Parquet wants one type per column: an input column of mixed types becomes JSON text.

    The file is built in memory and written in one go, so a pipe (not seekable) takes it.
    """
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
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    fh.write(buffer.getbuffer())
    return frame.height


def _input_series(name: str, values: list[Any]) -> pl.Series:
    # A JSONL number keeps its spelling as a float subclass (WrittenFloat): a float here.
    values = [float(v) if isinstance(v, WrittenFloat) else v for v in values]
    kinds = {type(v) for v in values if v is not None}
    if kinds and (kinds <= {float, int} or kinds <= {str} or kinds <= {bool}):
        return pl.Series(name, values, strict=False)
    return pl.Series(name, [None if v is None else json.dumps(v) for v in values], pl.String)


_WRITERS = {"jsonl": _write_jsonl, "csv": _write_csv, "parquet": _write_parquet}
