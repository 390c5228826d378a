"""Exports join every result back to its own input row, in input order, in three formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_jsonl

from runner.cli import cli
from runner.errors import UsageError
from runner.export import export_run
from runner.job import resolve_job
from runner.run import RunOptions, execute

ROWS = [
    {"id": f"{i:03d}", "prompt": f"row {i}: say something", "topic": f"t{i % 3}", "n": i}
    for i in range(30)
]
# Odd rows: nested values, a newline and non-ASCII text, a field only one row has,
# a row with no prompt (invalid but readable) and a line that is not JSON at all.
ROWS[4] = {**ROWS[4], "meta": {"tags": ["a", "b"]}, "topic": 'Größe, 日本語\n"quoted"'}
ROWS[7] = {"id": "007", "topic": "no prompt here", "n": 7}


@pytest.fixture
def run_dir(tmp_path: Path, mock_api) -> Path:
    path = write_jsonl(tmp_path / "input.jsonl", ROWS)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    settings = {
        "input": path,
        "id_column": "id",
        "base_url": mock_api.base_url,
        "request.model": "claude-sonnet-4-5",
        "request.max_tokens": 64,
        "limits.concurrency": 8,
    }
    options = RunOptions(output_dir=tmp_path / "reports", run_id="r1")
    return execute(resolve_job(None, settings), options).run_dir


def test_jsonl_keeps_input_order_and_every_input_column(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert export_run(run_dir, out, "jsonl") == 31
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [r["id"] for r in records[:30]] == [r["id"] for r in ROWS]
    assert records[30]["id"] == "line:31" and records[30]["status"] == "invalid"
    for row, record in zip(ROWS, records, strict=False):
        # `id` is a result column too: the input's own id comes back as input_id.
        assert record["input_id"] == row["id"]
        for name, value in row.items():
            if name != "id":
                assert record[name] == value, name
    assert records[4]["meta"] == {"tags": ["a", "b"]}
    assert records[0]["meta"] is None
    assert records[7]["status"] == "invalid" and records[7]["topic"] == "no prompt here"
    assert records[0]["status"] == "ok" and records[0]["output_text"]
    assert list(records[0])[:5] == ["id", "input_id", "prompt", "topic", "n"]


def test_csv_opens_in_a_spreadsheet(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    export_run(run_dir, out, "csv")
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    assert b"\r\n" in raw
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert len(rows) == 31
    assert rows[4]["topic"] == ROWS[4]["topic"]  # newline, quotes and non-ASCII intact
    assert json.loads(rows[4]["meta"]) == {"tags": ["a", "b"]}
    assert rows[0]["meta"] == ""
    assert [r["id"] for r in rows[:30]] == [r["id"] for r in ROWS]


def test_parquet_has_typed_columns_in_input_order(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    export_run(run_dir, out, "parquet")
    frame = pl.read_parquet(out)
    assert frame["id"].to_list()[:30] == [r["id"] for r in ROWS]
    assert frame.schema["n"] == pl.Int64 and frame.schema["cost_usd"] == pl.Float64
    assert frame.schema["meta"] == pl.String  # nested: JSON text
    assert json.loads(frame["meta"][4]) == {"tags": ["a", "b"]}


def test_status_and_columns_choose_what_is_exported(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ok.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(run_dir),
            "--format",
            "jsonl",
            "-o",
            str(out),
            "--status",
            "ok",
            "--columns",
            "id,topic,output_text",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(records) == 29
    assert all(list(r) == ["id", "topic", "output_text"] for r in records)


def test_an_unknown_column_is_a_usage_error(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(run_dir),
            "--format",
            "csv",
            "-o",
            str(tmp_path / "x.csv"),
            "--columns",
            "id,nope",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2 and "no column 'nope'" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_a_changed_input_is_refused(run_dir: Path, tmp_path: Path) -> None:
    with (tmp_path / "input.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"id": "new", "prompt": "late"}\n')
    with pytest.raises(UsageError, match="changed since run"):
        export_run(run_dir, tmp_path / "x.jsonl", "jsonl")


def test_a_job_dir_is_not_a_run_dir(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["export", str(run_dir.parent), "--format", "csv", "-o", str(tmp_path / "x.csv")],
        catch_exceptions=False,
    )
    assert result.exit_code == 2 and "one run dir" in result.output
