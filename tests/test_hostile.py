"""Servers nobody here wrote: malformed answers, echoed keys, proxies' shapes, a retired model.

Each test runs `runner` as a real process against the hostile API (tests/hostile.py),
which misbehaves per row as the row's prompt asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import TEST_KEY
from helpers import prompts, run_rows, write_jsonl
from hostile import serve_hostile

from runner import reach
from runner.mock import serve_in_thread

TOKEN = "bearer-token-0123456789-secret"
MALFORMED = [
    "null_delta",
    "null_message",
    "data_null",
    "text_not_str",
    "usage_wrong",
    "invalid_json",
    "invalid_utf8",
    "binary",
    "html_200",
]


def runner(*args: str, key: str = TEST_KEY, timeout: float = 120) -> subprocess.CompletedProcess:
    """`runner ARGS` as a separate process, with `key` as its API key."""
    env = {**os.environ, "ANTHROPIC_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def run_kinds(tmp_path: Path, base_url: str, kinds: list[str], *flags: str):
    """Run one row per hostile kind (its id is the kind) and return the process and run dir."""
    unique = len(set(kinds)) == len(kinds)
    rows = [
        {"id": kind if unique else f"{kind}{i}", "prompt": f"row {i} [[hostile:{kind}]]"}
        for i, kind in enumerate(kinds)
    ]
    write_jsonl(tmp_path / "input.jsonl", rows)
    proc = runner(
        "run",
        "--input",
        str(tmp_path / "input.jsonl"),
        "--id-column",
        "id",
        "--base-url",
        base_url,
        "--output-dir",
        str(tmp_path / "reports"),
        "--run-id",
        "r1",
        "--quiet",
        *flags,
        *(() if "--model" in flags else ("--model", "claude-sonnet-5-5")),
    )
    return proc, tmp_path / "reports" / "input" / "r1"


def by_id(run_dir: Path) -> dict[str, dict]:
    results = pl.read_parquet(run_dir / "results" / "*.parquet")
    return {row["id"]: row for row in results.iter_rows(named=True)}


def test_no_server_answer_crashes_a_run(tmp_path: Path) -> None:
    kinds = [
        *MALFORMED,
        *("huge_event", "huge_answer", "ping_forever", "data_only", "json_message", "gzipped"),
        "gateway_limits",
    ]
    with serve_hostile() as server:
        proc, run_dir = run_kinds(
            tmp_path,
            server.base_url,
            kinds,
            "--max-attempts",
            "2",
            "--max-event-bytes",
            "1000000",
            "--max-answer-bytes",
            "4000000",
            "--attempt-timeout",
            "1.5",
        )
    stderr = proc.stderr.decode()
    assert "internal error" not in stderr and "Traceback" not in stderr
    assert proc.returncode == 1, stderr
    rows = by_id(run_dir)
    assert set(rows) == set(kinds)
    for kind in MALFORMED:
        assert rows[kind]["status"] == "error", kind
        assert rows[kind]["error_type"] == "malformed", kind
        assert rows[kind]["attempts"] == 2, kind  # retried by the normal policy
    for kind in ("huge_event", "huge_answer"):
        assert rows[kind]["error_type"] == "response_too_large", kind
        assert rows[kind]["attempts"] == 1, kind  # never retried
    assert rows["ping_forever"]["error_type"] == "deadline"
    for kind in ("data_only", "gzipped"):
        answer = rows[kind]
        assert answer["status"] == "ok" and answer["output_text"] == "hello world", kind
        assert answer["attempts"] == 1 and answer["output_tokens"] == 7, kind
    whole = rows["json_message"]
    assert whole["status"] == "ok" and whole["output_text"] == "whole answer"
    assert whole["attempts"] == 1 and whole["stop_reason"] == "end_turn"
    assert (whole["input_tokens"], whole["output_tokens"]) == (12, 7)
    assert whole["cost_usd"] > 0
    # LiteLLM's llm_provider-anthropic-ratelimit-* headers were read as the API's.
    assert rows["gateway_limits"]["status"] == "ok"
    rpm = json.loads((run_dir / "summary.json").read_text())["limiter"]["meters"]["rpm"]
    assert (rpm["limit"], rpm["source"]) == (120, "headers")


def test_an_echoed_key_reaches_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bearer token a proxy may want is a secret too.
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", TOKEN)
    kinds = ["echo_json", "echo_html", "echo_event", "echo_text"]
    outputs: list[bytes] = []
    with serve_hostile() as server:
        for log_format in ("text", "json"):
            out = tmp_path / log_format
            out.mkdir()
            proc, run_dir = run_kinds(
                out, server.base_url, kinds, "--max-attempts", "2", "--log-format", log_format
            )
            assert proc.returncode == 1, proc.stderr.decode()
            outputs += [proc.stdout, proc.stderr]
        for args in (
            ("export", str(run_dir), "--format", "csv", "-o", str(tmp_path / "out.csv")),
            ("export", str(run_dir), "--format", "jsonl", "-o", str(tmp_path / "out.jsonl")),
            ("report", str(run_dir)),
            ("report", str(run_dir), "--json"),
            ("report", str(run_dir), "--html", str(tmp_path / "report.html")),
        ):
            proc = runner(*args)
            assert proc.returncode == 0, proc.stderr.decode()
            outputs += [proc.stdout, proc.stderr]
        # A fatal answer's stop line, and estimate's count_tokens errors.
        (tmp_path / "fatal").mkdir()
        proc, _ = run_kinds(tmp_path / "fatal", server.base_url, ["echo_401"])
        assert proc.returncode == 3, proc.stderr.decode()
        outputs += [proc.stdout, proc.stderr]
        proc = runner(
            "estimate", "--input", str(tmp_path / "fatal" / "input.jsonl"), "--model",
            "claude-sonnet-5-5", "--base-url", server.base_url,
        )  # fmt: skip
        assert b"cannot count for ***" in proc.stdout + proc.stderr
        outputs += [proc.stdout, proc.stderr]
    files = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10
    secrets = (TEST_KEY.encode(), TOKEN.encode())
    leaks = [chunk for chunk in (*outputs, *files) for secret in secrets if secret in chunk]
    assert leaks == []
    assert by_id(run_dir)["echo_text"]["output_text"] == "your key is *** Bearer ***"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (TEST_KEY + "\n", "whitespace"),
        (" " + TEST_KEY, "whitespace"),
        (TEST_KEY[:10] + "é" + TEST_KEY[10:], "non-ASCII"),
    ],
)
def test_an_unusable_key_stops_before_sending(tmp_path: Path, key: str, problem: str) -> None:
    with serve_hostile() as server:
        proc, _ = run_kinds(tmp_path, server.base_url, ["ok"])
        assert proc.returncode == 0  # the same run with a good key
        proc = runner(
            "run", "--input", str(tmp_path / "input.jsonl"), "--model", "m",
            "--base-url", server.base_url, "--output-dir", str(tmp_path / "again"),
            key=key,
        )  # fmt: skip
        assert len(server.seen) == 1
    assert proc.returncode == 2
    stderr = proc.stderr.decode()
    assert problem in stderr
    assert key.strip() not in stderr and key.strip()[:12] not in stderr


def test_plain_http_to_another_host_is_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "input.jsonl", [{"prompt": "hi"}])
    proc = runner(
        "run", "--input", str(tmp_path / "input.jsonl"), "--model", "m",
        "--base-url", "http://api.example.invalid",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--allow-insecure-http" in proc.stderr.decode()


def test_a_missing_model_stops_the_run_and_leaves_rows_untouched(tmp_path: Path) -> None:
    with serve_hostile() as server:
        proc, run_dir = run_kinds(
            tmp_path, server.base_url, ["model_404"] * 200, "--model", "claude-gone-1"
        )
        asked = len(server.seen)
    assert proc.returncode == 3, proc.stderr.decode()
    output = (proc.stdout + proc.stderr).decode()
    assert "claude-gone-1" in output and "internal error" not in output
    assert asked < 50  # it stopped instead of erroring every row
    results = list((run_dir / "results").glob("*.parquet"))
    assert results == [] or pl.read_parquet(results).filter(pl.col("status") == "error").height == 0
    assert json.loads((run_dir / "summary.json").read_text())["exit_code"] == 3


def test_other_404s_stay_errors_of_their_row(tmp_path: Path) -> None:
    with serve_hostile() as server:
        proc, run_dir = run_kinds(tmp_path, server.base_url, ["other_404", "ok"])
    assert proc.returncode == 1, proc.stderr.decode()
    rows = by_id(run_dir)
    assert rows["other_404"]["error_type"] == "not_found_error"
    assert rows["ok"]["status"] == "ok"


def test_an_endpoint_never_reached_stops_the_run_after_its_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_in_thread() as server:
        url = server.base_url  # a port nothing listens on once the block ends
    monkeypatch.setattr(reach, "UNREACHABLE_AFTER_S", 1.0)
    # Attempts enough to retry for minutes: only the window can stop it this soon.
    run = run_rows(tmp_path, url, prompts(40), **{"retry.max_attempts": 100})
    assert run.exit_code == 3
    assert "cannot reach" in run.message and "rows left untouched" in run.message
    assert not list((run.run_dir / "results").glob("*.parquet"))
    assert run.stats.requests < 40 * 100
