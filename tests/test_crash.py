"""Crash-safe runs: real `runner run` processes killed for real, then resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import prompts, write_jsonl

from runner.mock import MockConfig, serve_in_thread
from runner.store import open_store

CONCURRENCY = 16


def _command(input_path: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runner", "run",
        "--input", str(input_path), "--id-column", "id", "--base-url", url,
        "--model", "claude-sonnet-5-5", "--max-tokens", "32",
        "--concurrency", str(CONCURRENCY), "--output-dir", str(out), "--run-id", "r1",
        *extra,
    ]  # fmt: skip


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )


def _wait_until_rows_done(run_dir: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Wait (bounded) until the journal or parts hold at least `count` finished rows."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        lines = (
            sum(
                p.read_bytes().count(b'"r": {')
                for p in (run_dir / "journal").glob("*.jsonl")
                if p.exists()
            )
            if (run_dir / "journal").exists()
            else 0
        )
        parts = len(list((run_dir / "results").glob("part-*.parquet"))) if run_dir.exists() else 0
        if lines + parts * 1000 >= count:
            return
        time.sleep(0.05)


def _ok_on_disk(run_dir: Path) -> set[str]:
    """Rows ok on disk, as the next run sees them (opening the store recovers the journal)."""
    with open_store(run_dir) as store:
        results = store.read_results(columns=["id", "status"])
    return set(results.filter(pl.col("status") == "ok")["id"])


def test_kill_9_at_random_moments_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    rng = random.Random(1234)
    rows = prompts(3000, prefix="crash")
    by_prompt = {r["prompt"]: r["id"] for r in rows}
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    run_dir = out / "in" / "r1"
    with serve_in_thread(MockConfig(latency_ms=40)) as mock:
        cmd = _command(input_path, mock.base_url, out, "--quiet")
        snapshots: list[tuple[float, set[str]]] = []
        for _ in range(5):
            proc = _start(cmd, tmp_path)
            done_before = len(snapshots[-1][1]) if snapshots else 0
            _wait_until_rows_done(run_dir, done_before + rng.randint(100, 400), proc)
            time.sleep(rng.random() * 0.3)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            killed_at = time.time()
            ok = _ok_on_disk(run_dir)
            served_ok_ids = {
                by_prompt[a.prompt]
                for a in mock.record.attempts()
                if a.completed and a.status == 200 and a.ended_at and a.ended_at <= killed_at
            }
            # Requests the server finished but that are not on disk: at most those in flight.
            assert len(served_ok_ids - ok) <= CONCURRENCY
            snapshots.append((killed_at, ok))
        final = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        record = mock.record

        results = pl.read_parquet(run_dir / "results" / "*.parquet")
        assert results["id"].to_list() == [r["id"] for r in rows]  # once each, input order
        assert set(results["status"]) == {"ok"}
        for row, result in zip(rows, results.iter_rows(named=True), strict=True):
            served = record.attempts_for_prompt(row["prompt"])
            assert result["output_text"] == served[-1].text
            assert result["output_tokens"] == served[-1].usage["output_tokens"]
            assert result["input_tokens"] == served[-1].usage["input_tokens"]
        # No row that was ok on disk before a kill was ever sent again after it.
        for killed_at, ok in snapshots:
            for row in rows:
                if row["id"] in ok:
                    late = [
                        a for a in record.attempts_for_prompt(row["prompt"])
                        if a.started_at > killed_at
                    ]  # fmt: skip
                    assert late == [], row["id"]
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_130_and_the_resume_sends_only_the_rest(
    tmp_path: Path, signum: signal.Signals
) -> None:
    rows = prompts(1500, prefix=f"sig{int(signum)}")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    run_dir = out / "in" / "r1"
    with serve_in_thread(MockConfig(latency_ms=40)) as mock:
        cmd = _command(input_path, mock.base_url, out)
        proc = _start(cmd, tmp_path)
        _wait_until_rows_done(run_dir, 200, proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "resume with: runner run" in stdout and "--run-id r1" in stdout
        served_first = mock.record.totals()["requests"]
        ok_first = _ok_on_disk(run_dir)
        assert 200 <= len(ok_first) < len(rows)
        assert not list(run_dir.rglob(".*.tmp"))

        second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        sent_again = mock.record.totals()["requests"] - served_first
    # Only the remainder is sent (rows cancelled in flight may be sent again: at most the pool).
    assert len(rows) - len(ok_first) <= sent_again <= len(rows) - len(ok_first) + CONCURRENCY
    assert f"skipping {len(ok_first)} rows already ok" in second.stderr


def test_attempts_are_numbered_on_across_sessions(tmp_path: Path) -> None:
    rows = [*prompts(3, prefix="numbered"), {"id": "flaky", "prompt": "x [[fault:500:all]]"}]
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "out" / "in" / "r1"
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out")

        def served() -> int:
            return len(mock.record.attempts_for_prompt(rows[-1]["prompt"]))

        # Stopped while the row waits to retry: its attempts are on disk, the row is not.
        proc = _start(cmd, tmp_path)
        deadline = time.monotonic() + 20
        while served() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        # Given up as `error`, then tried again by the next resume.
        for _ in range(2):
            again = subprocess.run(
                [*cmd, "--max-attempts", "2"], cwd=tmp_path, capture_output=True, timeout=60
            )
            assert again.returncode == 1
    attempts = pl.read_parquet(run_dir / "attempts" / "*.parquet").filter(pl.col("id") == "flaky")
    results = pl.read_parquet(run_dir / "results" / "*.parquet").filter(pl.col("id") == "flaky")
    total = served()
    assert total >= 6 and attempts.height == total
    assert sorted(attempts["attempt"]) == list(range(1, total + 1))
    assert results["attempts"].to_list() == [total] and results["status"].to_list() == ["error"]


def test_second_sigint_stops_at_once(tmp_path: Path) -> None:
    rows = prompts(400, prefix="twice")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig(latency_ms=2000)) as mock:
        proc = _start(_command(input_path, mock.base_url, out, "--grace-period", "60"), tmp_path)
        deadline = time.monotonic() + 20
        while mock.record.totals()["requests"] < CONCURRENCY and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert time.monotonic() - sent < 10  # not the 60 s grace period
    assert not list((out / "in" / "r1").rglob(".*.tmp"))


def test_truncated_part_is_ignored_and_its_rows_sent_again(tmp_path: Path, caplog) -> None:
    rows = prompts(50, prefix="trunc")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, out)
        assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
        (part,) = (out / "in" / "r1" / "results").glob("part-*.parquet")
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a disk that filled up
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "ignoring unreadable part" in again.stderr
        assert mock.record.totals()["requests"] == 100
    results = pl.read_parquet(out / "in" / "r1" / "results" / "*.parquet")
    assert results.height == 50 and set(results["status"]) == {"ok"}


def test_changed_rows_are_sent_again_and_only_them(tmp_path: Path) -> None:
    rows = prompts(40, prefix="change")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, out)
        assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
        rows[3]["prompt"] += " (edited)"
        rows[17]["prompt"] += " (edited)"
        write_jsonl(input_path, rows)
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "changed since this run began" in again.stderr
        assert mock.record.totals()["requests"] == 42
        # A template change changes every request: all of them go again.
        third = subprocess.run(
            [*cmd, "--prompt", "Please: {prompt}"], cwd=tmp_path, capture_output=True, timeout=60
        )
        assert third.returncode == 0
        assert mock.record.totals()["requests"] == 82
    results = pl.read_parquet(out / "in" / "r1" / "results" / "*.parquet")
    assert results.height == 40


def test_a_finished_run_resumes_from_its_results_alone(tmp_path: Path) -> None:
    rows = [*prompts(30, prefix="settled"), {"id": "bad", "prompt": "x [[fault:500:all]]"}]
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "out" / "in" / "r1"
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out", "--max-attempts", "1")

        def run(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cmd, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )

        # A limited session saw only some rows: the next one must read the input again.
        assert run("--limit", "10").returncode == 0
        assert json.loads((run_dir / "run.json").read_text())["settled"] is None
        assert run().returncode == 1 and mock.record.totals()["requests"] == 31
        # The `error` row is tried again, and only it, after reading the whole input.
        again = run()
        assert again.returncode == 1 and mock.record.totals()["requests"] == 32
        assert "skipping 30 rows already ok, sending 1" in again.stderr
        # Once no row is left to try, the unchanged run is settled from its results.
        write_jsonl(input_path, rows[:30])
        assert run().returncode == 0 and mock.record.totals()["requests"] == 32
        settled = run()
        assert settled.returncode == 0 and mock.record.totals()["requests"] == 32
        assert "unchanged since it finished; 30 rows ok, 0 invalid: nothing to send" in (
            settled.stderr
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows"] == {"ok": 30, "error": 0, "invalid": 0, "total": 30}
    assert summary["this_session"]["rows_skipped"] == 30


def test_a_second_process_on_the_same_run_is_refused(tmp_path: Path) -> None:
    rows = prompts(200, prefix="lock")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig(latency_ms=500)) as mock:
        cmd = _command(input_path, mock.base_url, out)
        first = _start(cmd, tmp_path)
        deadline = time.monotonic() + 20
        while mock.record.totals()["requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "another runner process is using this run" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        # The kernel dropped the dead process's lock: the next run starts cleanly.
        third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr
