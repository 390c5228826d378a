"""summary.json and `report --json` say how the run ended, of how many input rows, and
how usable its answers are, with one definition of wall time and rows/s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from click.testing import CliRunner
from helpers import prompts, run_rows, write_jsonl

from runner.cli import cli
from runner.mock import MockConfig, MockRecord, serve_in_thread

ROWS = 600


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text("utf-8"))


def _report(run_dir: Path) -> dict:
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_finished_run_counts_stop_reasons_and_usable_answers(tmp_path: Path, mock_api) -> None:
    # The mock's answers run 5 to 120 tokens: at max_tokens 40 some are cut.
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(40), **{"request.max_tokens": 40})
    summary = _summary(outcome.run_dir)
    assert (summary["state"], summary["exit_code"], summary["reason"]) == ("finished", 0, None)
    assert summary["input_rows"] == 40 and summary["resume_command"] is None
    by_reason = summary["rows_by_stop_reason"]
    assert set(by_reason) == {"end_turn", "max_tokens"} and sum(by_reason.values()) == 40
    assert summary["answers"]["truncated"] == by_reason["max_tokens"]
    assert summary["answers"]["usable"] == by_reason["end_turn"]
    # One session: the run's figures are the session's.
    assert summary["time"]["sessions"] == 1
    assert summary["time"]["wall_time_s"] == summary["this_session"]["wall_time_s"]
    assert summary["time"]["rows_per_s"] == summary["this_session"]["rows_per_s"]
    report = _report(outcome.run_dir)
    for key in ("state", "exit_code", "input_rows", "rows_by_stop_reason", "answers"):
        assert report[key] == summary[key], key
    assert report["time"]["wall_time_s"] == summary["time"]["wall_time_s"]
    assert report["time"]["rows_per_s"] == summary["time"]["rows_per_s"]


def test_a_fatal_answer_stops_the_run_with_its_reason(tmp_path: Path, mock_api) -> None:
    rows = [{"id": "bad", "prompt": "x [[fault:401:all]]"}, *prompts(3)]
    outcome = run_rows(tmp_path, mock_api.base_url, rows, **{"limits.concurrency": 1})
    summary = _summary(outcome.run_dir)
    assert (summary["state"], summary["exit_code"]) == ("stopped", 3)
    assert "401" in summary["reason"] or "authentication" in summary["reason"]
    assert summary["resume_command"].endswith(f"--run-id {outcome.run_dir.name}")
    assert summary["input_rows"] == 4
    assert _report(outcome.run_dir)["state"] == "stopped"


def _start(tmp_path: Path, input_path: Path, url: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "runner", "run", "--input", str(input_path)]
    command += ["--id-column", "id", "--base-url", url, "--model", "claude-sonnet-5-5"]
    command += ["--max-tokens", "32", "--concurrency", "4", "--run-id", "r1"]
    command += ["--output-dir", str(tmp_path / "out")]
    return subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_until_served(record: MockRecord, count: int, proc: subprocess.Popen[str]) -> None:
    """Wait (bounded) for the mock to finish `count` attempts: the signal then lands mid-run."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(1 for a in record.attempts() if a.ended_at) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the mock did not serve {count} attempts (exit {proc.poll()})")


def test_interrupted_then_crashed_then_resumed(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS, prefix="state"))
    run_dir = tmp_path / "out" / "in" / "r1"
    with serve_in_thread(MockConfig(latency_ms=30)) as mock:
        first = _start(tmp_path, input_path, mock.base_url)
        _wait_until_served(mock.record, 40, first)
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 130, stderr
        summary = _summary(run_dir)
        assert (summary["state"], summary["exit_code"]) == ("interrupted", 130)
        # "of N" is the input's rows, never the rows written so far: a regular file is
        # counted before it is sent, so a session stopped early still knows N.
        assert summary["input_rows"] == ROWS and summary["rows"]["total"] < ROWS
        assert f"of {ROWS:,} input rows" in stdout
        assert summary["resume_command"].endswith("--run-id r1")

        second = _start(tmp_path, input_path, mock.base_url)
        _wait_until_served(mock.record, summary["rows"]["total"] + 40, second)
        os.kill(second.pid, signal.SIGKILL)
        second.communicate(timeout=60)
        crashed = _report(run_dir)
        assert crashed["state"] == "crashed" and crashed["exit_code"] is None
        assert crashed["resume_command"] == summary["resume_command"]
        assert crashed["input_rows"] == ROWS

        third = _start(tmp_path, input_path, mock.base_url)
        stdout, stderr = third.communicate(timeout=120)
        assert third.returncode == 0, stderr
    summary = _summary(run_dir)
    assert (summary["state"], summary["rows"]["ok"]) == ("finished", ROWS)
    assert summary["input_rows"] == ROWS
    info = json.loads((run_dir / "run.json").read_text("utf-8"))
    sessions = info["sessions"]
    assert len(sessions) == summary["time"]["sessions"] == 3
    assert sessions[1]["ended_at"] is None  # the killed one
    # The whole run's wall time is its sessions' own (the killed one until its last
    # attempt ended), never the gaps between them.
    ended = sum(s["wall_time_s"] for s in sessions if "wall_time_s" in s)
    span = datetime.fromisoformat(sessions[-1]["ended_at"]) - datetime.fromisoformat(
        sessions[0]["started_at"]
    )
    assert ended < summary["time"]["wall_time_s"] < span.total_seconds()
    assert "the whole run, 3 sessions" in stdout
