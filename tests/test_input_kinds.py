"""Every kind of input through real runs on the mock: Parquet, gzip, zstd, stdin, a FIFO.

The input is read once, so a pipe works like a file; what was sent is checked
against the mock's record of what it served.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import zstandard
from conftest import TEST_KEY
from helpers import results_of

from runner.job import resolve_job
from runner.mock import MockServer
from runner.run import RunOptions, RunOutcome, execute

ROWS = [{"id": f"r{i}", "prompt": f"kind {i}: say something"} for i in range(5)]


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def run_input(tmp_path: Path, mock: MockServer, path: Path, **flags: Any) -> RunOutcome:
    settings: dict[str, Any] = {
        "input": path,
        "id_column": "id",
        "base_url": mock.base_url,
        "request.model": "claude-sonnet-5-5",
        "request.max_tokens": 32,
        **flags,
    }
    job = resolve_job(None, settings)
    return execute(job, RunOptions(output_dir=tmp_path / "reports", run_id="r1"))


def sent(mock: MockServer) -> list[str]:
    return sorted(attempt.prompt for attempt in mock.record.attempts())


def assert_all_sent(outcome: RunOutcome, mock: MockServer, rows: list[dict[str, Any]]) -> None:
    assert outcome.exit_code == 0, outcome.summary
    results = results_of(outcome.run_dir)
    assert sorted(results["id"]) == sorted(row["id"] for row in rows)
    assert sent(mock) == sorted(row["prompt"] for row in rows)
    for result in results.iter_rows(named=True):
        prompt = next(row["prompt"] for row in rows if row["id"] == result["id"])
        assert result["output_text"] == mock.record.final_for_prompt(prompt).text


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("in.jsonl.gz", lambda data: gzip.compress(data)),
        ("in.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_compressed_jsonl_by_extension(
    tmp_path: Path, mock_api: MockServer, name: str, write: Any
) -> None:
    path = tmp_path / name
    path.write_bytes(write(jsonl_bytes(ROWS)))
    outcome = run_input(tmp_path, mock_api, path)
    assert_all_sent(outcome, mock_api, ROWS)
    assert outcome.run_dir.parent.name == "in"  # the job is named past both extensions
    # run.json records the file as read: its compressed bytes.
    recorded = json.loads((outcome.run_dir / "run.json").read_text())["input"]
    assert recorded["size"] == path.stat().st_size


def test_gzip_csv(tmp_path: Path, mock_api: MockServer) -> None:
    text = "id,prompt\n" + "".join(f'{r["id"]},"{r["prompt"]}"\n' for r in ROWS)
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    assert_all_sent(run_input(tmp_path, mock_api, path), mock_api, ROWS)


def test_damaged_gzip_is_one_clear_error(tmp_path: Path, mock_api: MockServer) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"this is not gzip at all\n")
    done = _runner(tmp_path, mock_api, "--input", "bad.jsonl.gz")
    assert done.returncode == 2, done.stderr
    assert "bad.jsonl.gz: not a valid compressed file" in done.stderr
    assert sent(mock_api) == []


def test_parquet_with_typed_columns(tmp_path: Path, mock_api: MockServer) -> None:
    path = tmp_path / "in.parquet"
    pl.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["tea", "coffee", "water"],
            "price": [4.5, 3.25, 0.0],
            "stock": [True, False, None],
        }
    ).write_parquet(path)
    outcome = run_input(
        tmp_path, mock_api, path, **{"request.prompt": "{name} costs {price} (stock: {stock})"}
    )
    assert outcome.exit_code == 0, outcome.summary
    assert sent(mock_api) == [
        "coffee costs 3.25 (stock: false)",
        "tea costs 4.5 (stock: true)",
        "water costs 0.0 (stock: )",
    ]
    assert sorted(results_of(outcome.run_dir)["id"]) == ["1", "2", "3"]


def test_template_values_of_every_json_type(tmp_path: Path, mock_api: MockServer) -> None:
    path = tmp_path / "typed.jsonl"
    path.write_text(
        '{"id": "a", "price": 411.50, "n": 3, "ok": true, "none": null, '
        '"tags": ["x", "é"], "meta": {"k": 1}}\n'
    )
    template = "{price}|{n}|{ok}|{none}|{tags}|{meta}"
    outcome = run_input(tmp_path, mock_api, path, **{"request.prompt": template})
    assert outcome.exit_code == 0, outcome.summary
    assert sent(mock_api) == ['411.50|3|true||["x","é"]|{"k":1}']


def _runner(
    cwd: Path, mock: MockServer, *args: str, stdin: Any = None, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    env["ANTHROPIC_API_KEY"] = TEST_KEY
    command = [
        sys.executable,
        "-m",
        "runner",
        "run",
        "--base-url",
        mock.base_url,
        "--model",
        "claude-sonnet-5-5",
        "--max-tokens",
        "16",
        "--output-dir",
        "out",
        "--run-id",
        "r1",
        "--quiet",
        *args,
    ]
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=stdin,
        input=input_bytes,
        capture_output=True,
        timeout=60,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_stdin_as_dash(tmp_path: Path, mock_api: MockServer, fmt: str) -> None:
    if fmt == "jsonl":
        data = jsonl_bytes(ROWS)
    else:
        data = ("id,prompt\n" + "".join(f"{r['id']},{r['prompt']}\n" for r in ROWS)).encode()
    done = _runner(
        tmp_path, mock_api, "--input", "-", "--input-format", fmt, "--id-column", "id",
        input_bytes=data,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sent(mock_api) == sorted(row["prompt"] for row in ROWS)
    run_dir = tmp_path / "out" / "stdin" / "r1"
    assert sorted(results_of(run_dir)["id"]) == sorted(row["id"] for row in ROWS)
    recorded = json.loads((run_dir / "run.json").read_text())["input"]
    assert recorded["path"] == "<stdin>" and recorded["size"] == len(data)


def test_stdin_without_a_format_says_so(tmp_path: Path, mock_api: MockServer) -> None:
    done = _runner(tmp_path, mock_api, "--input", "-", input_bytes=jsonl_bytes(ROWS))
    assert done.returncode == 2
    assert "stdin: say its format with --input-format" in done.stderr


def test_resume_from_a_pipe_sends_only_what_is_left(tmp_path: Path, mock_api: MockServer) -> None:
    """A pipe cannot be read again: a resume reads what is piped in anew, skipping done rows."""
    args = ("--input", "-", "--input-format", "jsonl", "--id-column", "id")
    first = _runner(tmp_path, mock_api, *args, input_bytes=jsonl_bytes(ROWS[:3]))
    assert first.returncode == 0, first.stderr
    again = _runner(tmp_path, mock_api, *args, input_bytes=jsonl_bytes(ROWS))
    assert again.returncode == 0, again.stderr
    assert sent(mock_api) == sorted(row["prompt"] for row in ROWS)  # each row once
    assert sorted(results_of(tmp_path / "out" / "stdin" / "r1")["id"]) == [r["id"] for r in ROWS]


def test_named_pipe(tmp_path: Path, mock_api: MockServer) -> None:
    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("wb") as pipe:  # blocks until the runner opens the FIFO
            pipe.write(jsonl_bytes(ROWS))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    done = _runner(tmp_path, mock_api, "--input", str(fifo), "--id-column", "id")
    writer.join(timeout=10)
    assert done.returncode == 0, done.stderr
    assert sent(mock_api) == sorted(row["prompt"] for row in ROWS)
    assert sorted(results_of(tmp_path / "out" / "feed" / "r1")["id"]) == [r["id"] for r in ROWS]


def test_repeated_invalid_row_messages_are_capped(tmp_path: Path, mock_api: MockServer) -> None:
    rows = [{"id": f"e{i}", "prompt": "   "} for i in range(30)] + [ROWS[0]]
    (tmp_path / "blank.jsonl").write_bytes(jsonl_bytes(rows))
    done = _runner(tmp_path, mock_api, "--input", "blank.jsonl", "--id-column", "id")
    assert done.returncode == 1
    named = [line for line in done.stderr.splitlines() if re.search(r"\.jsonl:\d+:", line)]
    assert len(named) == 20
    assert "blank.jsonl: ... and 10 more like this (empty prompt)" in done.stderr
    results = results_of(tmp_path / "out" / "blank" / "r1")
    assert results.filter(pl.col("status") == "invalid").height == 30
    assert sent(mock_api) == [ROWS[0]["prompt"]]
