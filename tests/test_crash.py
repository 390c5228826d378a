"""Crash-safe runs: real `runner run` processes killed for real, then resumed."""

from __future__ import annotations

import contextlib
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

from runner.mock import MockConfig, MockRecord, ServedAttempt, serve_in_thread
from runner.signals import STOP_AT_ENV
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


def _wait_until_served(
    record: MockRecord, count: int, proc: subprocess.Popen[str], since: float = 0.0
) -> None:
    """Wait (bounded) until the mock finished `count` attempts that started after `since`.

    Waits for what the server really served, so a kill that follows lands mid-run.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        ended = sum(1 for a in record.attempts() if a.started_at >= since and a.ended_at)
        if ended >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the mock did not serve {count} attempts (exit {proc.poll()})")


def _wait_for_a_retry_journaled(run_dir: Path, proc: subprocess.Popen[str]) -> set[str]:
    """Wait (bounded) until the journal holds a failed attempt of a row still retrying.

    Returns the request ids of such attempts: every one must reach the attempts table.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        pending = set()
        for segment in (run_dir / "journal").glob("segment-*.jsonl"):
            with contextlib.suppress(FileNotFoundError):  # turned into a part meanwhile
                for line in segment.read_text().splitlines():
                    if line.startswith('{"r": null') and line.endswith("}"):
                        pending.update(a["request_id"] for a in json.loads(line)["a"])
        if pending:
            return pending
        time.sleep(0.02)
    raise AssertionError("no failed attempt was journaled while its row waited to retry")


def _ok_on_disk(run_dir: Path) -> set[str]:
    """Rows ok on disk, as the next run sees them (opening the store recovers the journal)."""
    with open_store(run_dir) as store:
        results = store.read_results(columns=["id", "status"])
    return set(results.filter(pl.col("status") == "ok")["id"])


def test_kill_9_at_random_moments_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    rng = random.Random(1234)
    rows = prompts(1500, prefix="crash")
    by_prompt = {r["prompt"]: r["id"] for r in rows}
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    run_dir = out / "in" / "r1"
    # Some attempts fail, so rows are killed mid-retry too.
    with serve_in_thread(MockConfig(latency_ms=40, faults={"500": 0.1}, seed=7)) as mock:
        cmd = _command(input_path, mock.base_url, out, "--quiet")
        kills: list[float] = []
        retrying: set[str] = set()
        snapshots: list[set[str]] = []
        for _ in range(5):
            session_start = time.time()
            proc = _start(cmd, tmp_path)
            _wait_until_served(mock.record, rng.randint(60, 200), proc, since=session_start)
            retrying |= _wait_for_a_retry_journaled(run_dir, proc)
            time.sleep(rng.random() * 0.1)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            kills.append(time.time())
            ok = _ok_on_disk(run_dir)
            assert ok - (snapshots[-1] if snapshots else set()), "this session finished no row"
            snapshots.append(ok)
        assert len(snapshots[-1]) < len(rows), "the kills did not land mid-run"
        final = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        served = mock.record.attempts()

    results = pl.read_parquet(run_dir / "results" / "*.parquet")
    assert results["id"].to_list() == [r["id"] for r in rows]  # once each, input order
    assert set(results["status"]) == {"ok"}
    last_ok = {by_prompt[a.prompt]: a for a in served if a.completed}
    for result in results.iter_rows(named=True):
        answer = last_ok[result["id"]]
        assert result["request_id"] == answer.request_id
        assert result["output_text"] == answer.text
        assert result["output_tokens"] == answer.usage["output_tokens"]

    # The attempts table is the server's record, attempt for attempt, except attempts in
    # flight at a kill: at most the pool's worth per kill, and none after the last kill.
    table = pl.read_parquet(run_dir / "attempts" / "*.parquet")
    assert table["request_id"].n_unique() == table.height
    by_request = {a.request_id: a for a in served}
    for request_id, status, attempt_id in table.select("request_id", "http_status", "id").rows():
        assert by_request[request_id].status == status
        assert by_prompt[by_request[request_id].prompt] == attempt_id
    journaled = set(table["request_id"])
    assert retrying <= journaled
    missing = [a for a in served if a.request_id not in journaled]
    for before, kill in zip([0.0, *kills], kills, strict=False):
        lost = [a for a in missing if before <= a.started_at < kill]
        assert len(lost) <= CONCURRENCY, (len(lost), [a.outcome for a in lost])
        for attempt in lost:  # the row's latest attempt at the kill: still in flight
            later = [
                a for a in served
                if a.prompt == attempt.prompt and attempt.started_at < a.started_at < kill
            ]  # fmt: skip
            assert later == [], f"{attempt.outcome} attempt not journaled before its retry"
    assert [a for a in missing if a.started_at >= kills[-1]] == []

    # No row ok on disk at a kill was sent again; a row paid twice was one whose answer
    # was still in flight at a kill (served, not yet journaled).
    for killed_at, ok in zip(kills, snapshots, strict=True):
        late = [a for a in served if a.started_at > killed_at and by_prompt[a.prompt] in ok]
        assert late == []
    paid: dict[str, list[ServedAttempt]] = {}
    for a in served:
        if a.completed:
            paid.setdefault(a.prompt, []).append(a)
    twice = {prompt: answers for prompt, answers in paid.items() if len(answers) > 1}
    for answers in twice.values():
        assert all(a.request_id not in journaled for a in answers[:-1])
    assert len(twice) <= CONCURRENCY * len(kills)
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
        _wait_until_served(mock.record, 200, proc)
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
    assert f"skipped {len(ok_first)} rows already ok" in second.stderr


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
        assert "skipped 30 rows already ok, sent 1" in again.stderr
        # Once no row is left to try, the unchanged run is settled from its results.
        write_jsonl(input_path, rows[:30])
        assert run().returncode == 0 and mock.record.totals()["requests"] == 32
        settled = run()
        assert settled.returncode == 0 and mock.record.totals()["requests"] == 32
        assert "unchanged since it finished; 30 rows ok, 0 invalid: nothing to send" in (
            settled.stderr
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    # The `error` row left the input: kept (its attempts were paid), not counted.
    assert summary["rows"] == {"ok": 30, "error": 0, "invalid": 0, "total": 30, "not_in_input": 1}
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


def _wait_until_stopped(proc: subprocess.Popen[str]) -> None:
    """Wait (bounded) until the process froze itself at the phase RUNNER_STOP_AT names."""
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        # The state is the field after the parenthesised command name.
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach its phase (exit {proc.poll()})")


@pytest.mark.parametrize(
    ("phase", "signum"),
    [
        ("start-up", signal.SIGTERM),
        ("start-up", signal.SIGINT),
        ("compaction", signal.SIGTERM),
    ],
)
def test_a_signal_in_any_phase_ends_with_130_the_summary_and_the_resume_command(
    tmp_path: Path, phase: str, signum: signal.Signals
) -> None:
    rows = prompts(800, prefix=f"phase{int(signum)}")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, out)
        cmd[cmd.index("--concurrency") + 1] = "64"
        # The run freezes itself as it enters the phase, so the signal lands exactly there.
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, STOP_AT_ENV: phase},
        )
        _wait_until_stopped(proc)
        if phase == "compaction":  # every answer was sent: what is left is on disk
            assert mock.record.totals()["requests"] == len(rows)
        else:
            assert mock.record.totals()["requests"] == 0
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "state: interrupted (exit 130)" in stdout
        assert "resume with: runner run" in stdout and "--run-id r1" in stdout
        assert "Traceback" not in stderr
        sent = mock.record.totals()["requests"]
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        # Nothing paid twice: the resume sends exactly the rows not sent before.
        assert mock.record.totals()["requests"] == len(rows)
    print(f"{phase} {signum.name}: {sent} sent before the signal, exit 130")
