"""Local failures stop a run cleanly (exit 4, the cause and the path, the summary, the resume
command) and a resume after the fix completes it: a full disk, no file handles, a read-only
file system, and writes cut short."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import prompts, results_of, write_jsonl

import runner.parts as parts_module
from runner.errors import LocalFailureError
from runner.mock import MockConfig, serve_in_thread
from runner.models import RowResult, Status
from runner.store import RunStore, open_store


def _command(input_path: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runner", "run", "--input", str(input_path), "--id-column", "id",
        "--base-url", url, "--model", "claude-sonnet-5-5", "--concurrency", "16",
        "--output-dir", str(out), "--run-id", "r1", *extra,
    ]  # fmt: skip


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path`; the test is skipped where mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not permitted'}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def _assert_clean_stop(done: subprocess.CompletedProcess[str], cause: str) -> None:
    assert done.returncode == 4, done.stderr
    text = done.stdout + done.stderr
    assert cause in text
    assert "internal error" not in text and "Traceback" not in text
    assert "resume with: runner run" in text and "--run-id r1" in text


@pytest.mark.parametrize("mode", ["stream", "batch"])
def test_a_full_disk_stops_with_exit_4_and_the_resume_completes(tmp_path: Path, mode: str) -> None:
    rows = prompts(400, prefix="disk full")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    with (
        _tmpfs(tmp_path / "small", "96k") as out,
        serve_in_thread(MockConfig(latency_ms=5, batch_processing_s=0.2)) as mock,
    ):
        batch = ["--poll-interval", "0.05"] if mode == "batch" else []
        cmd = _command(
            input_path, mock.base_url, out, "--max-tokens", "300", "--mode", mode, *batch
        )
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        _assert_clean_stop(full, "disk full (ENOSPC)")
        assert "state: stopped (exit 4)" in full.stdout  # the summary
        served_first = mock.record.attempts()
        assert 0 < len(served_first) <= len(rows)  # a batch is sent whole
        _remount(out, "size=32m")
        resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        results = results_of(out / "in" / "r1")
        served = mock.record.attempts()
    assert sorted(results["id"]) == [r["id"] for r in rows]  # nothing lost
    assert set(results["status"]) == {"ok"}
    # Paid twice: at most the answers in flight when the disk filled (they had nowhere to go).
    answered: dict[str, int] = {}
    for attempt in served:
        answered[attempt.prompt] = answered.get(attempt.prompt, 0) + attempt.completed
    twice = sum(1 for count in answered.values() if count > 1)
    assert twice <= 16, twice


def test_a_read_only_output_dir_stops_at_start_with_exit_4(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", prompts(5, prefix="ro"))
    with _tmpfs(tmp_path / "ro", "1m") as out, serve_in_thread(MockConfig()) as mock:
        _remount(out, "ro")
        done = subprocess.run(
            _command(input_path, mock.base_url, out), capture_output=True, text=True, timeout=60
        )
        _assert_clean_stop(done, "read-only file system (EROFS)")
        assert str(out) in done.stderr
        assert mock.record.totals()["requests"] == 0


def test_too_many_open_files_stops_with_exit_4_and_the_resume_completes(tmp_path: Path) -> None:
    rows = prompts(300, prefix="emfile")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"

    def few_file_handles() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    with serve_in_thread(MockConfig(latency_ms=50)) as mock:
        cmd = _command(input_path, mock.base_url, out, "--max-tokens", "16", "--concurrency", "64")
        limited = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, preexec_fn=few_file_handles
        )
        _assert_clean_stop(limited, "too many open files (raise `ulimit -n`) (EMFILE)")
        resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    results = results_of(out / "in" / "r1")
    assert sorted(results["id"]) == [r["id"] for r in rows]
    assert set(results["status"]) == {"ok"}


def _row(n: int) -> RowResult:
    return RowResult(id=f"r{n}", line=n, status=Status.OK, model="m", fingerprint="f")


def test_short_writes_still_journal_whole_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:7]))  # the kernel may take less than it was given

    with open_store(tmp_path) as store:
        monkeypatch.setattr(os, "write", short_write)
        for n in range(1, 4):
            store.record(_row(n), [])
        monkeypatch.setattr(os, "write", real_write)
        segment = next((tmp_path / "journal").glob("segment-*.jsonl"))
        assert len(segment.read_text().splitlines()) == 3
    assert RunStore(tmp_path).read_results()["id"].to_list() == ["r1", "r2", "r3"]


def test_a_failed_append_leaves_no_torn_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    with open_store(tmp_path) as store:
        store.record(_row(1), [])

        def disk_fills(fd: int, data: bytes) -> int:
            real_write(fd, bytes(data[:10]))  # part of the record reaches the file...
            monkeypatch.setattr(os, "write", real_write)
            raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

        monkeypatch.setattr(os, "write", disk_fills)
        with pytest.raises(LocalFailureError, match=r"disk full \(ENOSPC\)"):
            store.record(_row(2), [])
        segment = next((tmp_path / "journal").glob("segment-*.jsonl"))
        assert segment.read_text().count("\n") == 1 and segment.read_text().endswith("}\n")
    assert RunStore(tmp_path).read_results()["id"].to_list() == ["r1"]  # r2 runs again


def test_a_torn_journal_record_is_dropped_and_its_row_runs_again_once(tmp_path: Path) -> None:
    rows = prompts(6, prefix="torn")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "out" / "in" / "r1"
    (run_dir / "journal").mkdir(parents=True)
    with serve_in_thread(MockConfig()) as mock:
        cmd = _command(input_path, mock.base_url, tmp_path / "out")
        assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
        # A later session died mid-append: a whole record, then a torn one.
        whole = RunStore(run_dir).read_results(with_state=True).row(0, named=True)
        record = parts_module.result_record(
            RowResult(
                id=whole["id"], line=whole["line"], status=Status.ERROR, model="m",
                fingerprint="other", key=whole["key"],
            )
        )  # fmt: skip
        text = json.dumps({"r": record, "a": []}) + "\n"
        (run_dir / "journal" / "segment-999999.jsonl").write_text(text + text[: len(text) // 2])
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "skipping a torn journal line" in again.stderr
        # The whole record (an error for another request) runs again once; nothing else.
        assert mock.record.totals()["requests"] == 7
    assert set(results_of(run_dir)["status"]) == {"ok"}
