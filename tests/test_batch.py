"""Batch mode through the mock's Message Batches API on 127.0.0.1, in process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from conftest import TEST_KEY
from helpers import attempts_of, prompts, results_of, run_rows

from runner.batch import BatchBackend
from runner.batch_ledger import BatchLedger
from runner.batch_session import cancel_run
from runner.mock import MockConfig, MockServer, serve_in_thread
from runner.models import Usage
from runner.pricing import PriceTable
from runner.provider import streaming
from runner.run import RunOutcome

FAST = {"mode": "batch", "batch.poll_interval": 0.02}


def run_batch(
    tmp_path: Path, mock: MockServer, rows: list[dict[str, Any]], **flags: Any
) -> RunOutcome:
    return run_rows(tmp_path, mock.base_url, rows, **{**FAST, **flags})


def listed_batches(mock: MockServer) -> list[dict[str, Any]]:
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    answer = httpx.get(
        f"{mock.base_url}/v1/messages/batches", params={"limit": 1000}, headers=headers
    )
    return answer.json()["data"]


def _stop_once_submitted(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The run stops, as on a SIGTERM, once its batches are submitted; returns what to restore."""
    original = BatchBackend.wait_and_collect

    async def stop_then_wait(self: BatchBackend) -> None:
        self.control.stop(0)
        await original(self)

    monkeypatch.setattr(BatchBackend, "wait_and_collect", stop_then_wait)
    return original


def test_a_streamed_body_is_the_params_plus_stream() -> None:
    params = b'{"max_tokens":5,"messages":[{"role":"user","content":"}"}],"model":"m"}'
    assert json.loads(streaming(params)) == {**json.loads(params), "stream": True}


def test_clean_batch_run_matches_the_mock_row_by_row(tmp_path: Path) -> None:
    rows = prompts(30)
    with serve_in_thread(MockConfig(batch_processing_s=0.05)) as mock:
        outcome = run_batch(tmp_path, mock, rows, **{"batch.size": 12})
        served = {a.prompt: a for a in mock.record.attempts()}
        batches = listed_batches(mock)
    assert outcome.exit_code == 0
    assert len(batches) == 3  # 12 + 12 + 6
    assert sorted(b["request_counts"]["succeeded"] for b in batches) == [6, 12, 12]
    results = results_of(outcome.run_dir).sort("id")
    prices = PriceTable.load()
    assert results.height == 30
    for row, result in zip(rows, results.iter_rows(named=True), strict=True):
        item = served[row["prompt"]]
        assert result["id"] == row["id"]
        assert result["status"] == "ok"
        assert result["output_text"] == item.text
        assert result["stop_reason"] == item.stop_reason
        assert result["input_tokens"] == item.usage["input_tokens"]
        assert result["output_tokens"] == item.usage["output_tokens"]
        assert result["request_id"] == item.request_id  # the batch id
        assert result["attempts"] == 1
        assert result["ttft_ms"] is None
        usage = Usage(
            input_tokens=item.usage["input_tokens"], output_tokens=item.usage["output_tokens"]
        )
        model = result["served_model"]  # priced by the model that answered
        assert result["cost_usd"] == pytest.approx(prices.batch_cost(model, usage))
        assert result["cost_usd"] == pytest.approx(prices.cost(model, usage) / 2)
    attempts = attempts_of(outcome.run_dir)
    assert attempts.height == 30
    assert set(attempts["outcome"]) == {"ok"}
    assert attempts["custom_id"].n_unique() == 30
    assert all(c.startswith("rn") for c in attempts["custom_id"])
    assert set(attempts["request_id"]) == {b["id"] for b in batches}


def test_errored_and_expired_items_go_again_until_max_attempts(tmp_path: Path) -> None:
    config = MockConfig(batch_processing_s=0.02, batch_errored=0.3, batch_expired=0.2, seed=3)
    rows = prompts(40)
    with serve_in_thread(config) as mock:
        outcome = run_batch(tmp_path, mock, rows, **{"retry.max_attempts": 3})
        items = {r["prompt"]: mock.record.attempts_for_prompt(r["prompt"]) for r in rows}
    results = results_of(outcome.run_dir).sort("id")
    attempts = attempts_of(outcome.run_dir)
    for row, result in zip(rows, results.iter_rows(named=True), strict=True):
        served = items[row["prompt"]]
        assert result["attempts"] == len(served) <= 3
        assert sum(a.outcome == "ok" for a in served) == (result["status"] == "ok")
        if result["status"] == "error":
            assert len(served) == 3
            assert result["error_type"] in {"api_error", "overloaded_error", "expired"}
        mine = attempts.filter(pl.col("id") == row["id"]).sort("attempt")
        assert mine["attempt"].to_list() == list(range(1, len(served) + 1))
        assert mine["outcome"].to_list() == [
            {"ok": "ok", "fault:expired": "expired"}.get(a.outcome, "errored") for a in served
        ]
    assert set(results["status"]) <= {"ok", "error"}
    assert outcome.exit_code == (1 if "error" in set(results["status"]) else 0)
    # Only succeeded items are billed.
    assert set(attempts.filter(pl.col("outcome") != "ok")["cost_usd"]) <= {0.0}
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    batch = summary["batch"]
    assert batch["items"] == attempts.height
    assert batch["billed_items"] == attempts.filter(pl.col("outcome") == "ok").height
    assert batch["saved_usd"] == pytest.approx(batch["cost_usd"])  # half price
    assert summary["retries"]["cost_usd"] == 0.0


def test_invalid_request_is_an_error_sent_once_and_auth_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = prompts(6)
    rows[1]["prompt"] += " [[fault:400:all]]"
    with serve_in_thread(MockConfig(batch_processing_s=0.02)) as mock:
        outcome = run_batch(tmp_path / "a", mock, rows)
        sent = mock.record.attempts_for_prompt(rows[1]["prompt"])
    results = results_of(outcome.run_dir).sort("id")
    assert outcome.exit_code == 1
    bad = results.row(1, named=True)
    assert (bad["status"], bad["error_type"], bad["attempts"]) == (
        "error",
        "invalid_request_error",
        1,
    )
    assert len(sent) == 1
    assert results.filter(pl.col("status") == "ok").height == 5

    rows = prompts(6, prefix="auth")
    rows[2]["prompt"] += " [[fault:401:all]]"
    with serve_in_thread(MockConfig(batch_processing_s=0.02)) as mock:
        outcome = run_batch(tmp_path / "b", mock, rows, **{"batch.size": 3})
    assert outcome.exit_code == 3
    assert "authentication_error" in (outcome.message or "")


def test_a_batch_over_the_size_cap_is_split(tmp_path: Path) -> None:
    cap = 4096
    rows = [{"id": f"{i:03d}", "prompt": f"{i} " + "x" * 400} for i in range(40)]
    with serve_in_thread(MockConfig(batch_processing_s=0.01, max_batch_bytes=cap)) as mock:
        outcome = run_batch(tmp_path, mock, rows, **{"batch.max_bytes": cap})
        batches = listed_batches(mock)
    assert outcome.exit_code == 0
    assert len(batches) > 4
    assert sum(b["request_counts"]["succeeded"] for b in batches) == 40
    assert results_of(outcome.run_dir)["status"].to_list() == ["ok"] * 40


def test_cancel_ends_the_running_batches_and_records_what_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stop_once_submitted(monkeypatch)
    with serve_in_thread(MockConfig(batch_processing_s=600.0)) as mock:
        outcome = run_batch(tmp_path, mock, prompts(8), run_id="r1")
        assert outcome.exit_code == 130
        monkeypatch.undo()
        result = cancel_run(outcome.run_dir, TEST_KEY)
        batch = listed_batches(mock)[0]
        served = mock.record.attempts()
    assert result.canceled == 1
    assert result.stats.statuses["error"] == 8
    assert batch["processing_status"] == "ended"
    assert batch["request_counts"]["canceled"] == 8
    assert served == []  # nothing processed, nothing billed
    results = results_of(outcome.run_dir)
    assert set(results["error_type"]) == {"canceled"}
    assert set(attempts_of(outcome.run_dir)["outcome"]) == {"canceled"}


def test_demo_in_batch_mode_shows_what_batch_saved(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runner", "demo", "--mode", "batch", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "batches: 1 submitted" in done.stderr
    assert "saved $" in done.stdout
    run_dir = next((tmp_path / "demo").iterdir())
    report = subprocess.run(
        [sys.executable, "-m", "runner", "report", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "streamed they would cost" in report.stdout


def test_a_lost_create_with_several_candidates_stops_and_names_them(tmp_path: Path) -> None:
    rows = prompts(4, prefix="lost")
    with serve_in_thread(MockConfig(batch_processing_s=0.01)) as mock:
        run_dir = tmp_path / "reports" / "input" / "r1"
        run_dir.mkdir(parents=True)
        ledger = BatchLedger(run_dir)  # as a session killed between intent and answer left it
        ledger.write_items(1, [])
        ledger.intent(1, 4)
        headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
        requests = [
            {"custom_id": f"x{i}", "params": {"model": "m", "max_tokens": 5, "messages": []}}
            for i in range(4)
        ]
        for _ in range(2):
            httpx.post(f"{mock.base_url}/v1/messages/batches", json={"requests": requests},
                       headers=headers).raise_for_status()  # fmt: skip
        ids = {b["id"] for b in listed_batches(mock)}
        outcome = run_batch(tmp_path, mock, rows, run_id="r1")
        assert len(listed_batches(mock)) == 2  # nothing more was created
    assert outcome.exit_code == 3
    assert all(batch_id in (outcome.message or "") for batch_id in ids)


def test_a_canceled_batch_keeps_and_bills_what_finished_before_the_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stop_once_submitted(monkeypatch)
    rows = prompts(40, prefix="half")
    with serve_in_thread(MockConfig(batch_processing_s=0.5)) as mock:
        outcome = run_batch(tmp_path, mock, rows, run_id="r1")
        monkeypatch.undo()
        time.sleep(0.25)  # some items finish first; the checks hold for any split
        cancel_run(outcome.run_dir, TEST_KEY)
        succeeded = {a.prompt for a in mock.record.attempts() if a.outcome == "ok"}
    results = results_of(outcome.run_dir).sort("id")
    for row, result in zip(rows, results.iter_rows(named=True), strict=True):
        if row["prompt"] in succeeded:
            assert result["status"] == "ok" and result["cost_usd"] > 0
        else:
            assert (result["status"], result["error_type"]) == ("error", "canceled")


def test_rows_without_an_id_column_are_matched_on_resume_by_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _stop_once_submitted(monkeypatch)
    rows = [{"prompt": p["prompt"]} for p in prompts(10, prefix="noid")]
    rows.append(dict(rows[0]))  # an identical row: a second occurrence, its own item
    with serve_in_thread(MockConfig(batch_processing_s=0.05)) as mock:
        first = run_batch(tmp_path, mock, rows, run_id="r1", id_column=None)
        assert first.exit_code == 130
        # Only this patch: undo() would also take back the test's API key.
        monkeypatch.setattr(BatchBackend, "wait_and_collect", original)
        second = run_batch(tmp_path, mock, rows, run_id="r1", id_column=None)
        succeeded = Counter(a.prompt for a in mock.record.attempts() if a.outcome == "ok")
        assert len(listed_batches(mock)) == 1
    assert second.exit_code == 0
    assert succeeded[rows[0]["prompt"]] == 2 and sum(succeeded.values()) == 11
    assert results_of(second.run_dir)["status"].to_list() == ["ok"] * 11
