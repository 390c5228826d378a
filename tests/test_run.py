"""End-to-end runs through the bundled mock API on 127.0.0.1, checked against its record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from helpers import attempts_of, mock_process, prompts, results_of, run_rows, served

from runner.mock import MockConfig, serve_in_thread

CONTRACT = {
    "id": pl.String,
    "status": pl.String,
    "model": pl.String,
    "output_text": pl.String,
    "stop_reason": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cache_creation_input_tokens": pl.Int64,
    "cache_read_input_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "attempts": pl.Int64,
    "error_type": pl.String,
    "error_message": pl.String,
    "request_id": pl.String,
    "ttft_ms": pl.Float64,
    "latency_ms": pl.Float64,
    "served_model": pl.String,
    "copy_of": pl.String,
    "stop_details": pl.String,
    "tool_calls": pl.String,
    "output_json": pl.String,
    "thinking": pl.String,
    "thinking_tokens": pl.Int64,
}


def test_500_rows_match_the_server_record_exactly(tmp_path: Path, mock_api) -> None:
    rows = prompts(500)
    outcome = run_rows(tmp_path, mock_api.base_url, rows, **{"limits.concurrency": 32})
    assert outcome.exit_code == 0
    results = results_of(outcome.run_dir)
    assert results.height == 500
    assert results["id"].to_list() == [r["id"] for r in rows]  # input order, zeros kept
    for row, result in zip(rows, results.iter_rows(named=True), strict=True):
        served = mock_api.record.final_for_prompt(row["prompt"])
        assert served is not None and served.completed
        assert result["status"] == "ok"
        assert result["output_text"] == served.text
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            assert result[name] == served.usage.get(name, 0), name
        assert result["request_id"] == served.request_id
        assert result["stop_reason"] == served.stop_reason
        assert result["attempts"] == 1
        assert 0 < result["ttft_ms"] <= result["latency_ms"]
    assert mock_api.record.totals()["requests"] == 500


def test_results_have_exactly_the_contract_schema(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(20))
    results = results_of(outcome.run_dir)
    assert dict(results.schema) == CONTRACT
    assert results["cost_usd"].null_count() == 0  # claude-sonnet-5-5 has a price


def test_output_text_survives_utf8_and_json_escapes(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(200), **{"request.max_tokens": 400})
    texts = "".join(results_of(outcome.run_dir)["output_text"].to_list())
    # The mock's vocabulary has all of these; over 200 replies each must appear.
    for needle in ("é", "日本語", '"', "\\", "\n"):
        assert needle in texts, repr(needle)


def test_unknown_event_types_are_ignored(tmp_path: Path, mock_api) -> None:
    rows = [{"id": "a", "prompt": "hello [[fault:unknown_event:all]]"}]
    outcome = run_rows(tmp_path, mock_api.base_url, rows)
    assert outcome.exit_code == 0
    result = results_of(outcome.run_dir).row(0, named=True)
    served = mock_api.record.final_for_prompt(rows[0]["prompt"])
    assert served.fault == "unknown_event"
    assert result["output_text"] == served.text and result["attempts"] == 1


def test_max_tokens_cap_reports_stop_reason(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(30), **{"request.max_tokens": 3})
    results = results_of(outcome.run_dir)
    assert set(results["stop_reason"]) == {"max_tokens"}
    assert results["output_tokens"].max() == 3


def test_summary_and_run_json_are_written(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(40))
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    run_info = json.loads((outcome.run_dir / "run.json").read_text())
    results = results_of(outcome.run_dir)
    assert summary["rows"]["ok"] == 40
    assert summary["tokens"]["output_tokens"] == results["output_tokens"].sum()
    assert run_info["input"]["size"] == (tmp_path / "input.jsonl").stat().st_size
    assert run_info["prices"]["models"]


def test_attempts_table_has_one_row_per_attempt(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(25))
    attempts = attempts_of(outcome.run_dir)
    assert attempts.height == 25
    assert set(attempts["outcome"]) == {"ok"}


def test_api_key_never_written(tmp_path: Path, mock_api) -> None:
    from conftest import TEST_KEY

    rows = [*prompts(10), {"id": "bad", "prompt": "x [[fault:400:all]]"}]
    outcome = run_rows(tmp_path, mock_api.base_url, rows)
    assert outcome.exit_code == 1
    for path in outcome.run_dir.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path


def test_flags_override_the_job_file(tmp_path: Path) -> None:
    from runner.job import resolve_job

    (tmp_path / "in.csv").write_text("id,text\n1,hello\n")
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        'input = "in.csv"\n[request]\nmodel = "claude-haiku-4-5"\nprompt = "{text}"\n'
        "[limits]\nconcurrency = 4\n"
    )
    job = resolve_job(job_file, {"limits.concurrency": 9})
    assert job.limits.concurrency == 9
    assert job.request.model == "claude-haiku-4-5"
    assert job.input == tmp_path / "in.csv"
    assert job.name == "in"


def test_demo_runs_as_a_subprocess(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    done = subprocess.run(
        [sys.executable, "-m", "runner", "demo", "--output-dir", str(tmp_path / "out")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "240 ok" in done.stdout
    runs = list((tmp_path / "out" / "demo").iterdir())
    assert len(runs) == 1
    results = results_of(runs[0])
    assert results.height == 240 and set(results["status"]) == {"ok"}


def test_connection_refused_stops_the_run_and_leaves_rows_untouched(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig()) as server:
        url = server.base_url
    outcome = run_rows(tmp_path, url, prompts(2), **{"retry.max_attempts": 2})
    # Never answered: the URL or the network is wrong, not the rows (issue 14).
    assert outcome.exit_code == 3
    assert url in outcome.message and "ConnectError" in outcome.message
    assert not list((outcome.run_dir / "results").glob("*.parquet"))
    assert set(attempts_of(outcome.run_dir)["outcome"]) == {"connect_error"}


def test_utf8_and_lines_split_across_reads(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(fragment_bytes=3)) as mock:
        rows = prompts(12, prefix="fragmented")
        outcome = run_rows(tmp_path, mock.base_url, rows, **{"request.max_tokens": 120})
        results = results_of(outcome.run_dir)
        for row, text in zip(rows, results["output_text"], strict=True):
            assert text == mock.record.final_for_prompt(row["prompt"]).text
    assert any(ord(ch) > 127 for ch in "".join(results["output_text"]))


def test_proxy_variables_route_requests_through_the_proxy(
    tmp_path: Path, mock_api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mock stands in for the proxy: it answers absolute-form requests for any host,
    # so rows for a host that does not resolve come back ok only if they went through it.
    monkeypatch.setenv("HTTP_PROXY", mock_api.base_url)
    rows = prompts(5, prefix="proxied")
    outcome = run_rows(tmp_path, "http://api.example.invalid", rows, allow_insecure_http=True)
    assert outcome.exit_code == 0
    assert mock_api.record.totals()["requests"] == 5


def test_mock_record_file_holds_every_attempt_the_attempts_table_holds(tmp_path: Path) -> None:
    rows = [*prompts(5, prefix="recorded"), {"id": "flaky", "prompt": "x [[fault:500:2]]"}]
    input_path = tmp_path / "in.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = tmp_path / "served.jsonl"
    with mock_process(record) as url:
        cmd = [
            sys.executable, "-m", "runner", "run", "--input", str(input_path),
            "--id-column", "id", "--base-url", url, "--model", "claude-sonnet-5-5",
            "--output-dir", str(tmp_path / "out"), "--run-id", "r1",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = served(record)
    assert len(lines) == 8  # 5 rows once, the flaky one three times
    flaky = [line for line in lines if line["prompt"] == rows[-1]["prompt"]]
    assert [line["outcome"] for line in flaky] == ["fault:500", "fault:500", "ok"]
    assert [line["status"] for line in flaky] == [500, 500, 200]
    assert all(line["ended_at"] >= line["started_at"] for line in lines)
    attempts = attempts_of(tmp_path / "out" / "in" / "r1")
    assert sorted(attempts["request_id"]) == sorted(line["request_id"] for line in lines)
    ok = {line["request_id"]: line["usage"]["output_tokens"] for line in lines if line["completed"]}
    results = results_of(tmp_path / "out" / "in" / "r1")
    assert dict(zip(results["request_id"], results["output_tokens"], strict=True)) == ok
