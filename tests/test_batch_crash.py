"""Batch runs killed for real (kill -9, SIGTERM) and resumed: no item succeeds twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from conftest import TEST_KEY
from helpers import prompts, results_of, write_jsonl

from runner.mock import MockConfig, MockServer, serve_in_thread

# Bounds every wait on a child process.
WAIT_S = 60.0


def _command(input_path: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runner", "run",
        "--input", str(input_path), "--id-column", "id", "--base-url", url,
        "--model", "claude-sonnet-5-5", "--max-tokens", "32", "--mode", "batch",
        "--poll-interval", "0.05", "--output-dir", str(out), "--run-id", "r1", "--quiet",
        *extra,
    ]  # fmt: skip


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )


def _batches(mock: MockServer) -> list[dict[str, Any]]:
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    url = f"{mock.base_url}/v1/messages/batches"
    return httpx.get(url, params={"limit": 1000}, headers=headers).json()["data"]


def _wait_for_batches(mock: MockServer, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_batches(mock)) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {count} batches within {WAIT_S} s (exit {proc.poll()})")


def _kill(proc: subprocess.Popen[str]) -> None:
    """kill -9, and reap the child with its pipes."""
    proc.kill()
    proc.communicate(timeout=WAIT_S)


def _succeeded_per_prompt(mock: MockServer) -> Counter[str]:
    return Counter(a.prompt for a in mock.record.attempts() if a.outcome == "ok")


def _finish(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=WAIT_S, env=os.environ
    )


def test_kill_9_right_after_create_adopts_the_batch(tmp_path: Path) -> None:
    rows = prompts(30, prefix="adopt")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    # The create answer leaves 3 s after the batch exists: the kill lands in that window.
    config = MockConfig(latency_ms=3000, batch_processing_s=0.1)
    with serve_in_thread(config) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out")
        proc = _start(cmd, tmp_path)
        _wait_for_batches(mock, 1, proc)
        _kill(proc)
        ledger = (tmp_path / "out" / "in" / "r1" / "batches" / "ledger.jsonl").read_text()
        assert '"intent"' in ledger and '"created"' not in ledger
        done = _finish(cmd, tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(_batches(mock)) == 1  # adopted, not created again
        succeeded = _succeeded_per_prompt(mock)
    assert set(succeeded.values()) == {1}
    assert len(succeeded) == 30
    assert results_of(tmp_path / "out" / "in" / "r1")["status"].to_list() == ["ok"] * 30


def test_kill_9_at_random_moments_never_pays_twice(tmp_path: Path) -> None:
    rng = random.Random(18)
    rows = prompts(600, prefix="kill")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    config = MockConfig(
        latency_ms=50, batch_processing_s=0.4, batch_errored=0.1, batch_expired=0.1, seed=5
    )
    with serve_in_thread(config) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out", "--batch-size", "50")
        for _ in range(6):
            proc = _start(cmd, tmp_path)
            time.sleep(0.3 + rng.random() * 1.2)
            _kill(proc)
        done = _finish(cmd, tmp_path)
        succeeded = _succeeded_per_prompt(mock)
        batches = _batches(mock)
    assert done.returncode in (0, 1), done.stderr
    results = results_of(tmp_path / "out" / "in" / "r1")
    latest = results.unique("id", keep="last")
    assert latest.height == 600
    ok = set(latest.filter(pl.col("status") == "ok")["id"])
    by_prompt = {r["prompt"]: r["id"] for r in rows}
    assert max(succeeded.values()) == 1, "an item succeeded twice"
    assert {by_prompt[p] for p in succeeded} == ok
    print(
        f"kill -9 x6: {len(batches)} batches, {sum(succeeded.values())} items succeeded once each"
    )


def test_sigterm_while_waiting_exits_130_and_the_resume_sends_nothing_again(
    tmp_path: Path,
) -> None:
    rows = prompts(40, prefix="term")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    with serve_in_thread(MockConfig(batch_processing_s=2.0)) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out", "--batch-size", "20")
        proc = _start(cmd, tmp_path)
        _wait_for_batches(mock, 2, proc)
        time.sleep(0.2)  # the second create's answer recorded
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 130, stderr
        assert "--run-id r1" in stdout + stderr
        assert "batches left running" in stderr
        assert all(b["processing_status"] == "in_progress" for b in _batches(mock))
        done = _finish(cmd, tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(_batches(mock)) == 2
        succeeded = _succeeded_per_prompt(mock)
    assert len(succeeded) == 40 and set(succeeded.values()) == {1}
