"""Progress and the final summary: figures, a terminal, a pipe, JSON, --quiet, exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import STAMP, log_lines, prompts, run_rows, write_jsonl

from runner.final_summary import print_summary, summary_lines
from runner.mock import MockConfig, serve_in_thread
from runner.progress import Sample, figures, progress_line
from runner.stats import RunStats

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 90.0


def _stats(**totals: int) -> RunStats:
    stats = RunStats(total_rows=totals.pop("total_rows", None))
    for status in ("ok", "error", "invalid"):
        stats.statuses[status] = totals.pop(status, 0)
    for name, value in totals.items():
        setattr(stats, name, value)
    return stats


def test_figures_rates_eta_and_projected_cost() -> None:
    stats = _stats(total_rows=1000, ok=180, error=15, invalid=5, skipped=50, requests=260)
    stats.totals.priced_cost, stats.totals.priced_rows = 2.0, 180
    first = Sample(at=10.0, rows=100, requests=120, input_tokens=1000, output_tokens=500)
    last = Sample(at=20.0, rows=200, requests=260, input_tokens=6000, output_tokens=2500)
    f = figures(stats, {"concurrency": 32, "in_flight": 7, "waiting_on": "itpm"}, first, last)
    # Rows count the whole run: the 50 rows ok in earlier sessions are ok rows too.
    assert (f.rows_done, f.ok, f.error, f.invalid) == (250, 230, 15, 5)
    assert (f.requests_per_s, f.input_tokens_per_s, f.output_tokens_per_s) == (14.0, 500.0, 200.0)
    assert f.eta_s == 75.0  # 750 rows left at 10 rows/s
    assert f.projected_cost_usd == pytest.approx(2.0 + 2.0 / 200 * 750)
    assert (f.concurrency, f.in_flight, f.waiting_on) == (32, 7, "itpm")
    line = progress_line(f)
    for piece in (
        "250/1,000 rows (25%)",
        "ETA 1:15",
        "14.0 req/s",
        "ok 230 (50 from earlier sessions)",
        "of ~$9.5000 this session",  # the dollars are this session's, and say so
        "in flight 7/32",
    ):
        assert piece in line


def test_figures_without_a_total_or_a_rate_leave_them_unknown() -> None:
    stats = _stats(ok=3)
    sample = Sample(at=5.0, rows=3, requests=3, input_tokens=0, output_tokens=0)
    f = figures(stats, {}, sample, sample)
    assert f.total_rows is None and f.eta_s is None and f.projected_cost_usd is None
    assert f.requests_per_s == 0.0 and f.concurrency is None and f.waiting_on == "nothing"
    assert "3/? rows, ETA ?" in progress_line(f)


@pytest.mark.parametrize(
    ("waiting_on", "shown"),
    [(None, "nothing"), ("", "nothing"), (["rpm", "cooldown"], "rpm, cooldown"),
     ({"rpm": 0.0, "otpm": 1.5}, "otpm"), ("cooldown", "cooldown")],
)  # fmt: skip
def test_waiting_on_reads_any_shape_the_limiter_gives(waiting_on: object, shown: str) -> None:
    sample = Sample(at=0.0, rows=0, requests=0, input_tokens=0, output_tokens=0)
    assert figures(_stats(), {"waiting_on": waiting_on}, sample, sample).waiting_on == shown


def _read_pty(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal (120 columns) as its stdio; all it wrote, decoded."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_demo_in_a_terminal_shows_live_progress_and_the_summary(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "runner", "demo", "--output-dir", str(tmp_path / "out")]
    code, screen = _read_pty([*command, "--latency-ms", "50"], REPO)
    assert code == 0, screen
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "rows (" in screen and "req/s" in screen and "waiting on nothing" in screen
    assert "240/" in screen  # the last frame counts every row
    assert "rows: 240 ok, 0 error, 0 invalid" in screen and "report: " in screen
    # The summary comes after the live display has stopped.
    assert screen.rindex("req/s") < screen.index("rows: 240 ok")


def _run_cli(tmp_path: Path, base_url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    input_path = write_jsonl(tmp_path / "input.jsonl", prompts(30))
    command = [sys.executable, "-m", "runner", "run", "--input", str(input_path)]
    command += ["--id-column", "id", "--base-url", base_url, "--concurrency", "2"]
    command += ["--model", "claude-sonnet-5-5", "--max-tokens", "64"]
    command += ["--output-dir", str(tmp_path / "reports"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)


@pytest.fixture
def slow_api():
    """A mock API slow enough (30 rows at 2 in flight, 40 ms each) for a few progress ticks."""
    with serve_in_thread(MockConfig(latency_ms=40)) as server:
        yield server


def _unstamped(stderr: str) -> list[str]:
    """Each stderr line without its timestamp, checking that every line has one."""
    assert all(STAMP.match(line) for line in stderr.splitlines()), stderr
    return log_lines(stderr)


def test_without_a_terminal_plain_lines_and_no_control_characters(tmp_path: Path, slow_api) -> None:
    done = _run_cli(tmp_path, slow_api.base_url, "--progress-interval", "0.1")
    assert done.returncode == 0, done.stderr
    lines = _unstamped(done.stderr)
    progress = [line for line in lines if line.startswith("runner: progress:")]
    assert progress, done.stderr
    # The start line says which run this is, before any progress.
    start = next(line for line in lines if line.startswith("runner: start: "))
    assert lines.index(start) < lines.index(progress[0])
    assert start.startswith("runner: start: run ") and ", job input," in start
    # A regular file is counted up front: the first line already says how many rows.
    for piece in ("input.jsonl (30 rows)", "mode stream", "model claude-sonnet-5-5"):
        assert piece in start
    assert "concurrency 2" in start and "no rate limits given" in start
    assert "/30 rows (" in progress[-1] and "req/s" in progress[-1]
    for text in (done.stdout, done.stderr):
        assert not any(ord(c) < 32 and c != "\n" for c in text), repr(text)
    assert "rows: 30 ok, 0 error, 0 invalid" in done.stdout


def test_json_log_format_writes_progress_and_summary_as_fields(tmp_path: Path, slow_api) -> None:
    done = _run_cli(
        tmp_path, slow_api.base_url, "--log-format", "json", "--progress-interval", "0.1"
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    start = next(line for line in lines if line.get("event") == "start")
    assert start["event"] == "start" and start["input_rows"] == 30 and start["concurrency"] == 2
    assert start["models"] == ["claude-sonnet-5-5"] and start["limits"]["rpm"] is None
    run_id = Path(lines[-1]["report"]).name
    assert all(line["run_id"] == run_id and line["job"] == "input" for line in lines)
    progress = [line for line in lines if line.get("event") == "progress"]
    assert progress and progress[-1]["total_rows"] == 30 and "requests_per_s" in progress[-1]
    assert lines[-1]["event"] == "summary" and lines[-1]["exit_code"] == 0
    assert lines[-1]["rows"]["ok"] == 30 and lines[-1]["report"]
    assert done.stdout == ""


def test_quiet_prints_only_the_final_line(tmp_path: Path, slow_api) -> None:
    done = _run_cli(tmp_path, slow_api.base_url, "--quiet", "--progress-interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (line,) = _unstamped(done.stdout)
    assert line.startswith("runner: finished (exit 0): 30 ok, 0 error, 0 invalid of 30 input rows;")
    # max_tokens 64 cuts some of the mock's answers (5 to 120 tokens): ok, but not usable.
    assert " usable of 30 ok (" in line and " cut at max_tokens)" in line and "report " in line


def test_bad_usage_ends_with_a_final_line(tmp_path: Path) -> None:
    # The model may come from the rows (a `model` column): the input is read first.
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    command = [sys.executable, "-m", "runner", "run", "--input", str(tmp_path / "in.jsonl")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 2
    lines = _unstamped(done.stderr)
    assert lines[-2].startswith("runner: error: no model")
    assert lines[-1] == "runner: exit 2: nothing was sent; fix the above"
    json_done = subprocess.run(
        [*command, "--log-format", "json"], capture_output=True, text=True, timeout=DEADLINE_S
    )
    *_, error, final = (json.loads(line) for line in json_done.stderr.splitlines())
    assert error["level"] == "error" and "no model" in error["message"]
    assert final["event"] == "summary" and final["exit_code"] == json_done.returncode == 2


@pytest.mark.parametrize(
    ("fault", "exit_code", "advice"),
    [("400", 1, "some rows failed"), ("401", 3, "the API refused")],
)
def test_failed_runs_say_what_to_do_next(
    tmp_path: Path, mock_api, capsys: pytest.CaptureFixture[str], fault: str, exit_code: int,
    advice: str,
) -> None:  # fmt: skip
    rows = [{"id": "bad", "prompt": f"x [[fault:{fault}:all]]"}, *prompts(3)]
    outcome = run_rows(tmp_path, mock_api.base_url, rows, **{"limits.concurrency": 1})
    assert outcome.exit_code == exit_code
    print_summary(outcome)
    out = capsys.readouterr().out
    # Not a terminal: every line carries the time, as the log lines do.
    assert all(STAMP.match(line) for line in out.splitlines())
    assert log_lines(out) == summary_lines(outcome)
    out = "\n".join(log_lines(out))
    written = json.loads((outcome.run_dir / "summary.json").read_text())
    assert f"wall time: {written['this_session']['wall_time_s']:.1f} s" in out
    assert f"report: {outcome.run_dir}" in out
    assert "most common error: " in out
    next_line = out.splitlines()[-1]
    assert (
        next_line.startswith("next: ")
        and advice in next_line
        and next_line.endswith(f"--run-id {outcome.run_dir.name}")
    )
