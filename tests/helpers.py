"""Small builders shared by the run tests: input files, job files, reading a run back."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from runner.job import resolve_job
from runner.run import RunOptions, RunOutcome, execute


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` as a JSONL file and return its path."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def prompts(n: int, prefix: str = "row") -> list[dict[str, Any]]:
    """`n` rows with zero-padded ids and unique prompts (the mock's record is keyed by prompt)."""
    return [{"id": f"{i:06d}", "prompt": f"{prefix} {i}: say something"} for i in range(n)]


def run_rows(
    tmp_path: Path,
    base_url: str,
    rows: list[dict[str, Any]],
    *,
    run_id: str | None = None,
    limit: int | None = None,
    **flags: Any,
) -> RunOutcome:
    """Run `rows` through `base_url` in-process and return the outcome."""
    input_path = write_jsonl(tmp_path / "input.jsonl", rows)
    settings: dict[str, Any] = {
        "input": input_path,
        "id_column": "id",
        "base_url": base_url,
        "request.model": "claude-sonnet-5-5",
        "request.max_tokens": 64,
        "limits.concurrency": 16,
    }
    settings.update(flags)
    job = resolve_job(None, settings)
    return execute(job, RunOptions(output_dir=tmp_path / "reports", run_id=run_id, limit=limit))


def results_of(run_dir: Path) -> pl.DataFrame:
    """The run's results as a reader outside runner sees them (all parts)."""
    return pl.read_parquet(run_dir / "results" / "*.parquet")


def attempts_of(run_dir: Path) -> pl.DataFrame:
    """The run's attempts table."""
    return pl.read_parquet(run_dir / "attempts" / "*.parquet")


@contextmanager
def mock_process(record: Path, *options: str) -> Iterator[str]:
    """`runner mock-server --record RECORD` as a real process; yields its base URL."""
    cmd = [sys.executable, "-m", "runner", "mock-server", "--record", str(record), *options]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("mock API listening on "), line
            yield line.split()[-1]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


def served(record: Path) -> list[dict[str, Any]]:
    """The attempts a `--record` file holds so far, in the order they ended."""
    if not record.exists():
        return []
    lines = record.read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


# Off a terminal every log line starts with an ISO 8601 UTC timestamp (runner/logs.py).
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def log_lines(stderr: str) -> list[str]:
    """The lines of a run's stderr without their timestamps."""
    return [STAMP.sub("", line, count=1) for line in stderr.splitlines()]
