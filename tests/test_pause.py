"""A stopped process (SIGSTOP, a laptop lid, a frozen VM) keeps the answers waiting in its sockets.

`runner run` runs as a real process against the mock in this process; it is stopped
while its streams are in flight, for several idle timeouts, while the mock finishes
sending them; then it is continued. The mock's record says what was paid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import TEST_KEY
from helpers import prompts, write_jsonl

from runner.mock import MockConfig, serve_in_thread

ROWS = 32


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_pause_longer_than_the_idle_timeout_pays_nothing_twice(tmp_path: Path) -> None:
    rows = prompts(ROWS, prefix="paused")
    write_jsonl(tmp_path / "input.jsonl", rows)
    # Streams of ~1.5 s (30 deltas 50 ms apart), so the stop lands while many are in flight.
    config = MockConfig(chunk_delay_ms=50)
    with serve_in_thread(config) as mock:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "runner", "run", "--input", str(tmp_path / "input.jsonl"),
                "--id-column", "id", "--model", "claude-sonnet-5-5", "--max-tokens", "120",
                "--base-url", mock.base_url, "--output-dir", str(tmp_path / "reports"),
                "--concurrency", str(ROWS), "--idle-timeout", "1", "--quiet",
            ],
            env={**os.environ, "ANTHROPIC_API_KEY": TEST_KEY},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            in_flight = lambda: [a for a in mock.record.attempts() if a.ended_at is None]  # noqa: E731
            _wait_for(lambda: len(in_flight()) >= 8, 60, "streams in flight")
            os.kill(proc.pid, signal.SIGSTOP)
            stopped = len(in_flight())
            # The mock finishes every stream into the stopped process's sockets...
            _wait_for(lambda: not in_flight(), 60, "the mock to finish its streams")
            time.sleep(3)  # ...and the process stays stopped for 3 idle timeouts.
            os.kill(proc.pid, signal.SIGCONT)
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
        served = mock.record.attempts()
    assert proc.returncode == 0, stderr.decode()
    assert stopped >= 8
    paid = Counter(a.prompt for a in served if a.completed)
    assert len(paid) == ROWS
    assert [prompt for prompt, n in paid.items() if n > 1] == []  # 0 rows paid twice
    assert len(served) == ROWS  # and no attempt thrown away
