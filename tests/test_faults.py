"""Never lose a row to a fault: each fault kind, persistent faults, fatal stops, the pause."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest
from helpers import attempts_of, prompts, results_of, run_rows

from runner.mock import MockConfig, serve_in_thread

TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

# (marker kind, the attempts table's outcome for the failed attempt)
TRANSIENT = [
    ("429:1:retry=0", "http_error"),
    ("529", "http_error"),
    ("500", "http_error"),
    ("503", "http_error"),
    ("408", "http_error"),
    ("should_retry_true", "http_error"),
    ("reset", "connect_error"),
    ("error_event", "midstream_error"),
    ("drop", "dropped"),
    ("no_stop", "eof_without_stop"),
    ("stall", "stalled"),
]


def _assert_matches_server(result: dict, served) -> None:
    assert result["status"] == "ok"
    assert result["output_text"] == served.text
    for name in TOKENS:
        assert result[name] == served.usage.get(name, 0), name
    assert result["request_id"] == served.request_id


@pytest.mark.parametrize(("kind", "outcome"), TRANSIENT)
def test_each_transient_fault_is_retried_to_the_served_answer(
    tmp_path: Path, kind: str, outcome: str
) -> None:
    prompt = f"fault test [[fault:{kind}]]"
    with serve_in_thread(MockConfig(stall_s=30)) as mock:
        run = run_rows(
            tmp_path,
            mock.base_url,
            [{"id": "r1", "prompt": prompt}],
            **{"retry.idle_timeout": 0.5},
        )
        served = mock.record.attempts_for_prompt(prompt)
    assert run.exit_code == 0
    result = results_of(run.run_dir).row(0, named=True)
    _assert_matches_server(result, served[-1])
    assert result["attempts"] == len(served) == 2
    attempts = attempts_of(run.run_dir).sort("attempt")
    assert attempts["outcome"].to_list() == [outcome, "ok"]
    assert attempts["wait_s"][0] is not None and attempts["wait_s"][1] is None


def test_failed_attempts_keep_the_tokens_the_stream_reported(tmp_path: Path, mock_api) -> None:
    prompt = "tokens of a dropped stream [[fault:drop]]"
    run = run_rows(tmp_path, mock_api.base_url, [{"id": "r", "prompt": prompt}])
    first = mock_api.record.attempts_for_prompt(prompt)[0]
    failed = attempts_of(run.run_dir).filter(pl.col("outcome") == "dropped").row(0, named=True)
    assert failed["input_tokens"] == first.usage["input_tokens"]
    assert failed["cost_usd"] is not None and failed["cost_usd"] > 0


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [("500", "api_error"), ("drop", "dropped"), ("529", "overloaded_error")],
)
def test_persistent_fault_ends_error_after_max_attempts(
    tmp_path: Path, mock_api, kind: str, error_type: str
) -> None:
    prompt = f"always failing [[fault:{kind}:all]]"
    rows = [{"id": "bad", "prompt": prompt}, *prompts(3)]
    run = run_rows(tmp_path, mock_api.base_url, rows, **{"retry.max_attempts": 3})
    assert run.exit_code == 1
    results = results_of(run.run_dir)
    bad = results.filter(pl.col("id") == "bad").row(0, named=True)
    assert bad["status"] == "error" and bad["error_type"] == error_type
    assert bad["attempts"] == 3 == len(mock_api.record.attempts_for_prompt(prompt))
    assert bad["output_text"] is None
    assert results.filter(pl.col("status") == "ok").height == 3


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("400", "invalid_request_error"),
        ("404", "not_found_error"),
        ("413", "request_too_large"),
        ("should_retry_false", "api_error"),
    ],
)
def test_non_retryable_answers_are_tried_once(
    tmp_path: Path, mock_api, kind: str, error_type: str
) -> None:
    prompt = f"refused [[fault:{kind}:all]]"
    run = run_rows(tmp_path, mock_api.base_url, [{"id": "x", "prompt": prompt}])
    assert run.exit_code == 1
    result = results_of(run.run_dir).row(0, named=True)
    assert result["status"] == "error" and result["error_type"] == error_type
    assert result["attempts"] == 1 == len(mock_api.record.attempts_for_prompt(prompt))
    assert result["error_message"]


@pytest.mark.parametrize("kind", ["401", "403", "spend_cap"])
def test_fatal_answer_stops_the_run_with_exit_3(tmp_path: Path, kind: str) -> None:
    rows = prompts(400)
    rows[40]["prompt"] += f" [[fault:{kind}:all]]"
    started = time.monotonic()
    with serve_in_thread(MockConfig(latency_ms=20)) as mock:
        run = run_rows(tmp_path, mock.base_url, rows, **{"limits.concurrency": 4})
        served = mock.record.totals()["requests"]
    assert run.exit_code == 3
    assert time.monotonic() - started < 30  # bounded: a fatal stop is quick
    assert served < 200  # dispatching stopped well before the end
    results = results_of(run.run_dir)
    assert results.filter(pl.col("status") == "ok").height >= 30  # finished rows are on disk
    assert "resume_command" in run.summary and run.message


def test_a_429_pauses_the_whole_pool(tmp_path: Path) -> None:
    rows = prompts(60)
    rows[5]["prompt"] += " [[fault:429:1:retry=2]]"
    with serve_in_thread(MockConfig(latency_ms=30)) as mock:
        run = run_rows(tmp_path, mock.base_url, rows, **{"limits.concurrency": 8})
        served = mock.record.attempts()
    assert run.exit_code == 0
    limited = next(a for a in served if a.status == 429)
    paused_from = limited.ended_at or limited.started_at
    started_during_pause = [
        a for a in served if paused_from + 0.05 < a.started_at < paused_from + 1.95
    ]
    assert started_during_pause == []
    assert any(a.started_at >= paused_from + 2.0 for a in served)


def test_mixed_faults_lose_no_row(tmp_path: Path) -> None:
    kinds = [kind for kind, _ in TRANSIENT]
    rows = prompts(2200, prefix="mixed")
    # Every transient kind on >= 2 % of the rows at once: 11 kinds x 50 rows.
    for i, row in enumerate(rows[: len(kinds) * 50]):
        row["prompt"] += f" [[fault:{kinds[i % len(kinds)]}]]"
    with serve_in_thread(MockConfig(stall_s=30)) as mock:
        run = run_rows(
            tmp_path,
            mock.base_url,
            rows,
            **{"limits.concurrency": 64, "retry.idle_timeout": 0.5},
        )
        record = mock.record
        results = results_of(run.run_dir)
        attempts = attempts_of(run.run_dir)
        assert run.exit_code == 0
        assert results.height == len(rows) and set(results["status"]) == {"ok"}
        for row, result in zip(rows, results.iter_rows(named=True), strict=True):
            served = record.attempts_for_prompt(row["prompt"])
            _assert_matches_server(result, served[-1])
            assert result["attempts"] == len(served)
    per_id = attempts.group_by("id").len()
    joined = results.join(per_id, on="id")
    assert (joined["attempts"] == joined["len"]).all()
    failed = attempts.filter(pl.col("outcome") != "ok")
    assert failed.height == len(kinds) * 50
    assert failed["input_tokens"].drop_nulls().sum() > 0
