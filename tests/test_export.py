"""Exports join every result back to its own input row, in input order, in three formats."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import prompts, results_of, run_rows, write_jsonl

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
        "request.model": "claude-sonnet-5-5",
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
        # `id` is a result column and `prompt` a rendered one: the input's own come back
        # as input_id and input_prompt.
        assert record["input_id"] == row["id"]
        assert record.get("input_prompt") == row.get("prompt")
        for name, value in row.items():
            if name not in ("id", "prompt"):
                assert record[name] == value, name
    assert records[4]["meta"] == {"tags": ["a", "b"]}
    assert records[0]["meta"] is None
    assert records[7]["status"] == "invalid" and records[7]["topic"] == "no prompt here"
    assert records[0]["status"] == "ok" and records[0]["output_text"]
    assert list(records[0])[:5] == ["id", "input_id", "input_prompt", "topic", "n"]


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
    with pytest.raises(UsageError, match="changed since run") as refused:
        export_run(run_dir, tmp_path / "x.jsonl", "jsonl")
    # The message names the columns that need no input, and they do work.
    suggested = str(refused.value).split("--columns ")[1]
    assert suggested.startswith("id,status,") and "output_text" in suggested
    out = tmp_path / "x.jsonl"
    assert export_run(run_dir, out, columns=suggested.split(",")) == 31
    assert json.loads(out.read_text("utf-8").splitlines()[0])["id"] == "000"


def test_a_job_dir_is_not_a_run_dir(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["export", str(run_dir.parent), "--format", "csv", "-o", str(tmp_path / "x.csv")],
        catch_exceptions=False,
    )
    assert result.exit_code == 2 and "one run dir" in result.output


def test_errors_do_not_say_nothing_was_sent(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["export", str(run_dir), "-o", str(tmp_path / "x.txt")], catch_exceptions=False
    )
    assert result.exit_code == 2 and "give --format" in result.output
    assert "nothing was sent" not in result.output


def test_the_format_follows_the_extension(run_dir: Path, tmp_path: Path) -> None:
    for name, check in [
        ("out.csv", lambda p: p.read_bytes().startswith(b"\xef\xbb\xbfid,")),
        ("out.parquet", lambda p: pl.read_parquet(p).height == 31),
        ("out.ndjson", lambda p: json.loads(p.read_text("utf-8").splitlines()[0])["id"] == "000"),
    ]:
        assert export_run(run_dir, tmp_path / name) == 31
        assert check(tmp_path / name), name
    # --format wins over the extension.
    assert export_run(run_dir, tmp_path / "data.txt", "csv") == 31
    assert (tmp_path / "data.txt").read_bytes().startswith(b"\xef\xbb\xbf")


def _export_process(args: list[str], stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "runner", "export", *args]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, timeout=60)


def test_dash_writes_to_stdout(run_dir: Path, tmp_path: Path) -> None:
    done = _export_process([str(run_dir), "-o", "-", "--columns", "id,status"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 31 and json.loads(lines[0]) == {"id": "000", "status": "ok"}
    assert b"exported 31 rows to stdout" in done.stderr
    assert not (tmp_path / "-").exists()
    # Parquet to a pipe works too: the file is built whole, then written.
    done = _export_process([str(run_dir), "-o", "-", "--format", "parquet"])
    assert pl.read_parquet(io.BytesIO(done.stdout)).height == 31


def test_dev_stdout_is_written_in_place_not_replaced(run_dir: Path, tmp_path: Path) -> None:
    captured = tmp_path / "captured.jsonl"
    with captured.open("wb") as fh:
        done = _export_process([str(run_dir), "-o", "/dev/stdout", "--columns", "id"], stdout=fh)
    assert done.returncode == 0, done.stderr
    assert Path("/dev/stdout").is_symlink()
    assert len(captured.read_text("utf-8").splitlines()) == 31


def test_a_symlink_or_a_fifo_stays_what_it_is(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.jsonl"
    target.write_text("old\n", "utf-8")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert export_run(run_dir, link, columns=["id"]) == 31
    assert link.is_symlink() and len(target.read_text("utf-8").splitlines()) == 31

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert export_run(run_dir, fifo, columns=["id"]) == 31
    reader.join(timeout=10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert len(received[0].splitlines()) == 31


def test_a_directory_target_is_refused(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        export_run(run_dir, tmp_path, "jsonl")


def test_prompt_and_system_are_what_was_sent(tmp_path: Path, mock_api) -> None:
    rows = [{"id": f"{i}", "topic": f"topic {i}", "prompt": "not the template"} for i in range(5)]
    outcome = run_rows(
        tmp_path,
        mock_api.base_url,
        rows,
        **{"request.prompt": "Write about {topic}.", "request.system": "Be brief."},
    )
    out = tmp_path / "pairs.jsonl"
    export_run(outcome.run_dir, out, columns=["prompt", "system", "output_text", "input_prompt"])
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [r["prompt"] for r in records] == [f"Write about topic {i}." for i in range(5)]
    assert {r["system"] for r in records} == {"Be brief."}
    assert {r["input_prompt"] for r in records} == {"not the template"}
    assert all(r["output_text"] for r in records)


def test_usable_drops_answers_cut_at_max_tokens(tmp_path: Path, mock_api) -> None:
    # The mock's replies run 5 to 120 tokens: at max_tokens 40 some are cut.
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(40), **{"request.max_tokens": 40})
    out = tmp_path / "usable.jsonl"
    kept = export_run(outcome.run_dir, out, usable=True, columns=["id", "stop_reason"])
    reasons = results_of(outcome.run_dir)["stop_reason"].to_list()
    assert 0 < reasons.count("max_tokens") < 40
    assert kept == 40 - reasons.count("max_tokens")
    assert {json.loads(line)["stop_reason"] for line in out.read_text("utf-8").splitlines()} == {
        "end_turn"
    }
    with pytest.raises(UsageError, match="ok rows only"):
        export_run(outcome.run_dir, out, usable=True, status="error")
