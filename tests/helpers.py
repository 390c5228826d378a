"""Small builders shared by the run tests: input files, job files, reading a run back."""

from __future__ import annotations

import json
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
