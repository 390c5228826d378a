"""Row identity across sessions: a row is its id (or request and occurrence), never its line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from helpers import prompts, results_of, write_jsonl

from runner.mock import MockConfig, serve_in_thread
from runner.store import RunStore


def _run(input_path: Path, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "runner", "run", "--input", str(input_path), "--base-url", url,
        "--model", "claude-sonnet-5-5", "--max-tokens", "16", "--concurrency", "16",
        "--output-dir", str(out), "--run-id", "r1", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "in" / "r1" / "summary.json").read_text())


def test_edited_inserted_deleted_and_reordered_rows_cost_only_what_changed(
    tmp_path: Path,
) -> None:
    rows = prompts(300, prefix="nightly")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:

        def sent() -> int:
            return mock.record.totals()["requests"]

        assert _run(input_path, mock.base_url, out, "--id-column", "id").returncode == 0
        assert sent() == 300
        # Delete line 5, insert a row at the top, edit one, and shuffle the rest.
        edited = [{"id": "new", "prompt": "a brand new row"}, *rows[:4], *rows[5:]]
        edited[10] = {**edited[10], "prompt": edited[10]["prompt"] + " (edited)"}
        edited = [edited[0], *reversed(edited[1:])]
        write_jsonl(input_path, edited)
        again = _run(input_path, mock.base_url, out, "--id-column", "id")
        assert again.returncode == 0, again.stderr
        assert sent() == 302  # the new row and the edited one, nothing else
        assert (
            "skipped 298 rows already ok, sent 2 (1 new, 1 changed, 0 to retry), 0 invalid; "
            "1 paid rows no longer in the input are kept, not counted"
        ) in again.stderr
        results = results_of(out / "in" / "r1")
        # In the input's new order, then the row no longer in it.
        assert results["id"].to_list() == [r["id"] for r in edited] + [rows[4]["id"]]
        assert _summary(out)["rows"] == {
            "ok": 300, "error": 0, "invalid": 0, "total": 300, "not_in_input": 1,
        }  # fmt: skip
        # Restoring the original input sends nothing.
        write_jsonl(input_path, rows)
        restored = _run(input_path, mock.base_url, out, "--id-column", "id")
        assert restored.returncode == 0, restored.stderr
        assert sent() == 303  # only the row edited back
        assert _summary(out)["rows"]["not_in_input"] == 1  # the new row is gone again


def test_a_shorter_input_never_deletes_paid_results(tmp_path: Path) -> None:
    rows = prompts(300, prefix="shorter")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:
        assert _run(input_path, mock.base_url, out, "--id-column", "id").returncode == 0
        write_jsonl(input_path, rows[:100])
        shorter = _run(input_path, mock.base_url, out, "--id-column", "id")
        assert shorter.returncode == 0, shorter.stderr
        assert "of 100 input rows" in shorter.stdout
        assert "200 paid rows not in the current input" in shorter.stdout
        report = subprocess.run(
            [sys.executable, "-m", "runner", "report", str(out / "in" / "r1"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(report.stdout)["rows"]["not_in_input"] == 200  # the report agrees
        results = RunStore(out / "in" / "r1").read_results(with_state=True)
        assert results.height == 300 and results["line"].null_count() == 200
        write_jsonl(input_path, rows)
        restored = _run(input_path, mock.base_url, out, "--id-column", "id")
        assert restored.returncode == 0, restored.stderr
        assert mock.record.totals()["requests"] == 300  # nothing was ever sent twice
    assert _summary(out)["rows"] == {
        "ok": 300, "error": 0, "invalid": 0, "total": 300,
    }  # fmt: skip


def test_without_ids_identical_rows_each_run_once_and_inserts_cost_one(tmp_path: Path) -> None:
    rows = [{"prompt": f"row {i % 50}"} for i in range(120)]  # every prompt 2 or 3 times
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:
        assert _run(input_path, mock.base_url, out).returncode == 0
        assert mock.record.totals()["requests"] == 120
        write_jsonl(input_path, [{"prompt": "row 7"}, *rows[:60], *rows[61:]])
        again = _run(input_path, mock.base_url, out)
        assert again.returncode == 0, again.stderr
        # "row 7" now occurs once more than before (its occurrence 4 is new); row 60
        # ("row 10", occurrence 2) was deleted, so "row 10" occurrence 3 is no longer there.
        assert mock.record.totals()["requests"] == 121
        assert "1 new, 0 changed" in again.stderr
    results = results_of(out / "in" / "r1")
    assert results.height == 121 and results.filter(pl.col("status") == "ok").height == 121


def test_resume_takes_the_latest_started_run_and_a_named_one_must_exist(tmp_path: Path) -> None:
    rows = prompts(400, prefix="which")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    common = ["--id-column", "id", "--concurrency", "4"]
    with serve_in_thread(MockConfig(latency_ms=20)) as mock:
        # An earlier finished run whose id sorts last...
        first = _run(input_path, mock.base_url, out, *common, "--limit", "50")
        assert first.returncode == 0 and "starting a new run r1" in first.stderr
        (out / "in" / "r1").rename(out / "in" / "limit50")
        # ...and a newer one, killed mid-run, whose id sorts first.
        cmd = [
            sys.executable, "-m", "runner", "run", "--input", str(input_path),
            "--base-url", mock.base_url, "--model", "claude-sonnet-5-5", "--max-tokens", "16",
            "--output-dir", str(out), "--run-id", "aaa", *common,
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while mock.record.totals()["requests"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.communicate(timeout=30)
        served = mock.record.totals()["requests"]
        assert 100 <= served < 450

        missing = _run(input_path, mock.base_url, out, *common, "--run-id", "nope", "--resume")
        assert missing.returncode == 2
        assert "no run 'nope'" in missing.stderr and "aaa (crashed, started" in missing.stderr
        assert "limit50 (finished, started" in missing.stderr
        # estimate learns from the same run --resume takes.
        estimate_cmd = [
            sys.executable, "-m", "runner", "estimate", "--input", str(input_path),
            "--model", "claude-sonnet-5-5", "--output-dir", str(out), "--offline", "--json",
            "--id-column", "id",
        ]  # fmt: skip
        estimate = subprocess.run(estimate_cmd, capture_output=True, text=True, timeout=60)
        assert estimate.returncode == 0, estimate.stderr
        assert json.loads(estimate.stdout)["output_tokens"]["learned_from"]["run_dir"].endswith(
            "aaa"
        )
        resumed = subprocess.run(
            [*cmd[: cmd.index("--run-id")], *common, "--resume"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming the latest started run aaa (crashed, started" in resumed.stderr
        # Only what the crashed run had not finished (and what was in flight) was sent.
        assert mock.record.totals()["requests"] - served <= 400 - (served - 50) + 4
    results = results_of(out / "in" / "aaa")
    assert results.height == 400 and set(results["status"]) == {"ok"}
    assert results_of(out / "in" / "limit50").height == 50
