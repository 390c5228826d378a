"""Cost to the cent, checked against what the mock served, and the report against the Parquet."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import TEST_KEY
from helpers import attempts_of, prompts, results_of, run_rows

from runner.cli import cli
from runner.client import stream_message
from runner.mock import MockConfig, MockServer, serve_in_thread
from runner.models import Request
from runner.pricing import PriceTable
from runner.provider import api_headers
from runner.report import active_seconds, build_report, format_report
from runner.transport import Bounds, new_http_client

# Prices chosen so each component is visible on its own in a cost (USD per million tokens).
PRICES = """
[models.claude-sonnet-5-5]
input = 1.0
cache_write_5m = 10.0
cache_write_1h = 100.0
cache_read = 0.01
output = 1000.0
"""
RATES = {
    "input_tokens": 1.0,
    "5m": 10.0,
    "1h": 100.0,
    "cache_read_input_tokens": 0.01,
    "output_tokens": 1000.0,
}
SYSTEM = "You are a meticulous archivist of harbour towns. " * 20


def hand_cost(usage: dict) -> float:
    """The issue's formula, from a usage object exactly as the mock sent it."""
    split = usage.get("cache_creation") or {}
    return (
        usage.get("input_tokens", 0) * RATES["input_tokens"]
        + split.get("ephemeral_5m_input_tokens", 0) * RATES["5m"]
        + split.get("ephemeral_1h_input_tokens", 0) * RATES["1h"]
        + usage.get("cache_read_input_tokens", 0) * RATES["cache_read_input_tokens"]
        + usage.get("output_tokens", 0) * RATES["output_tokens"]
    ) / 1e6


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES, "utf-8")
    return path


def test_cache_heavy_rows_cost_what_the_served_usage_says(
    tmp_path: Path, mock_api, price_file: Path
) -> None:
    rows = prompts(12)
    flags = {"request.system": SYSTEM, "request.cache_system": True, "prices": price_file}
    outcome = run_rows(tmp_path, mock_api.base_url, rows, **{"limits.concurrency": 1, **flags})
    results = results_of(outcome.run_dir)
    seen = {"write": 0, "read": 0}
    for row, result in zip(rows, results.iter_rows(named=True), strict=True):
        served = mock_api.record.final_for_prompt(row["prompt"])
        assert result["cost_usd"] == pytest.approx(hand_cost(served.usage), abs=1e-10)
        seen["write"] += served.usage["cache_creation_input_tokens"] > 0
        seen["read"] += served.usage["cache_read_input_tokens"] > 0
    # One row wrote the cached system prompt and every other row read it.
    assert seen == {"write": 1, "read": 11}


def test_a_one_hour_cache_write_is_priced_at_the_one_hour_rate(mock_api, price_file) -> None:
    prices = PriceTable.load(price_file)
    cached = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 50,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": cached}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "a 5-minute block " * 30,
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
        ],
    }
    request = Request("r", 1, "claude-sonnet-5-5", json.dumps(body).encode(), "f", 10, 50)

    async def send() -> object:
        async with new_http_client(1, Bounds(idle_timeout=10)) as http:
            url = httpx.URL(f"{mock_api.base_url}/v1/messages")
            return await stream_message(http, url, api_headers(TEST_KEY), request)

    completion = anyio.run(send)
    served = mock_api.record.attempts()[-1].usage
    assert served["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert served["cache_creation"]["ephemeral_5m_input_tokens"] > 0
    cost = prices.cost("claude-sonnet-5-5", completion.usage)
    assert cost == pytest.approx(hand_cost(served), abs=1e-10)


def test_failed_attempts_are_priced_and_reported_as_retry_cost(
    tmp_path: Path, mock_api, price_file: Path
) -> None:
    rows = [{"id": "a", "prompt": "tell me [[fault:error_event:2]]"}, *prompts(3)]
    outcome = run_rows(tmp_path, mock_api.base_url, rows, prices=price_file)
    failed = attempts_of(outcome.run_dir).filter(pl.col("outcome") != "ok")
    served = [a for a in mock_api.record.attempts_for_prompt(rows[0]["prompt"]) if a.fault]
    assert failed.height == len(served) == 2
    expected = sum(hand_cost(a.usage) for a in served)
    assert expected > 0  # an error event after message_start: the input was paid for
    assert float(failed["cost_usd"].sum()) == pytest.approx(expected, abs=1e-10)
    report = build_report(outcome.run_dir)
    assert report["retries"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert report["retries"]["failed_attempts"] == 2
    assert report["spend_usd"] == pytest.approx(report["cost_usd"] + expected, abs=1e-9)


@pytest.fixture
def reseller_api() -> Iterator[MockServer]:
    """A mock that also serves models the price table does not know, as a reseller might."""
    with serve_in_thread(MockConfig(models=("m-x", "m-y"))) as server:
        yield server


def test_an_unknown_model_costs_null_with_one_warning(
    tmp_path: Path,
    reseller_api: MockServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = logging.getLogger("runner")
    # Counted at the "runner" logger alone, whether or not the CLI stopped its propagation.
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    try:
        outcome = run_rows(tmp_path, reseller_api.base_url, prompts(5), **{"request.model": "m-x"})
    finally:
        logger.removeHandler(caplog.handler)
    assert results_of(outcome.run_dir)["cost_usd"].null_count() == 5
    warnings = [r for r in caplog.records if "no price for model m-x" in r.getMessage()]
    assert len(warnings) == 1
    report = build_report(outcome.run_dir)
    assert report["cost_usd"] is None and report["unpriced_rows"] == 5
    assert "cost: n/a: 5 rows unpriced (models m-x)" in format_report(report)
    assert outcome.summary["cost_usd"] is None  # never $0 for rows with no price
    assert outcome.summary["unpriced_models"] == ["m-x"]


def test_an_override_file_changes_the_cost(tmp_path: Path, mock_api, price_file: Path) -> None:
    rows = prompts(6)
    standard = run_rows(tmp_path, mock_api.base_url, rows, run_id="standard")
    override = run_rows(tmp_path, mock_api.base_url, rows, run_id="override", prices=price_file)
    a, b = build_report(standard.run_dir), build_report(override.run_dir)
    assert a["tokens"] == b["tokens"]
    tokens = b["tokens"]
    assert b["cost_usd"] == pytest.approx(
        (tokens["input_tokens"] * 1.0 + tokens["output_tokens"] * 1000.0) / 1e6, abs=1e-9
    )
    assert a["cost_usd"] != pytest.approx(b["cost_usd"])
    assert any(str(price_file) in o for o in b["prices"]["overrides"])


def test_report_totals_equal_the_sums_of_the_parquet_rows(tmp_path: Path, mock_api) -> None:
    rows = [
        *prompts(20),
        {"id": "retried", "prompt": "x [[fault:500:2]]"},
        {"id": "refused", "prompt": "y [[fault:400]]"},
        {"id": "blank", "prompt": "  "},
    ]
    outcome = run_rows(tmp_path, mock_api.base_url, rows, **{"request.max_tokens": 300})
    report = build_report(outcome.run_dir)
    results, attempts = results_of(outcome.run_dir), attempts_of(outcome.run_dir)
    ok = results.filter(pl.col("status") == "ok")
    assert report["rows"] == {"ok": 21, "error": 1, "invalid": 1, "total": 23}
    for name, total in report["tokens"].items():
        assert total == ok[name].sum(), name
    assert report["cost_usd"] == pytest.approx(ok["cost_usd"].sum(), abs=1e-9)
    assert report["by_model"]["claude-sonnet-5-5"]["tokens"] == report["tokens"]
    assert report["attempts"] == attempts.height == 24
    assert report["retries"]["by_error_type"] == {"api_error": 2, "invalid_request_error": 1}
    errors = {e["error_type"]: e for e in report["errors"]}
    assert errors["invalid_request_error"]["example_ids"] == ["refused"]
    assert errors["invalid_input"]["rows"] == 1
    latencies = sorted(ok["latency_ms"].to_list())
    rank = 0.9 * (len(latencies) - 1)
    low = int(rank)
    p90 = latencies[low] + (latencies[low + 1] - latencies[low]) * (rank - low)
    assert report["latency_ms"]["p90"] == pytest.approx(p90, abs=1e-3)
    assert report["time"]["rows_per_s"] > 0 and report["time"]["active_s"] > 0
    assert "cooldown" in report["time"]["rate_limit_wait_s"]
    json.dumps(report)  # JSON-ready, as --json prints it


def test_a_job_dir_sums_its_runs_by_run(tmp_path: Path, mock_api) -> None:
    first = run_rows(tmp_path, mock_api.base_url, prompts(4), run_id="night-1")
    second = run_rows(tmp_path, mock_api.base_url, prompts(7, "b"), run_id="night-2")
    report = build_report(first.run_dir.parent)
    assert report["kind"] == "job"
    assert [r["run_id"] for r in report["runs"]] == ["night-1", "night-2"]
    a, b = build_report(first.run_dir), build_report(second.run_dir)
    assert report["total"]["rows"]["ok"] == 11
    for name in report["total"]["tokens"]:
        assert report["total"]["tokens"][name] == a["tokens"][name] + b["tokens"][name]
    assert report["total"]["cost_usd"] == pytest.approx(a["cost_usd"] + b["cost_usd"])
    text = format_report(report)
    assert "night-1" in text and "night-2" in text and "total:" in text


def test_the_cli_prints_the_report_as_text_or_json(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(3))
    runner = CliRunner()
    text = runner.invoke(cli, ["report", str(outcome.run_dir)], catch_exceptions=False)
    assert text.exit_code == 0 and "latency ms" in text.output
    as_json = runner.invoke(cli, ["report", str(outcome.run_dir), "--json"])
    assert json.loads(as_json.output) == json.loads(json.dumps(build_report(outcome.run_dir)))


@pytest.mark.parametrize("make", ["missing", "empty dir", "file"])
def test_a_path_that_is_no_run_is_a_usage_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x"
    if make == "empty dir":
        path.mkdir()
    elif make == "file":
        path.write_text("hi")
    result = CliRunner().invoke(cli, ["report", str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "give a run dir" in result.output


def test_active_seconds_is_the_union_of_the_intervals() -> None:
    assert active_seconds([0, 1, 10], [2, 3, 11]) == 4
    assert active_seconds([], []) == 0


def test_priced_and_unpriced_rows_are_reported_apart(
    tmp_path: Path, reseller_api: MockServer
) -> None:
    priced = run_rows(tmp_path, reseller_api.base_url, prompts(4, "p"), run_id="a")
    unpriced = run_rows(
        tmp_path, reseller_api.base_url, prompts(3, "u"), run_id="b", **{"request.model": "m-y"}
    )
    assert priced.run_dir.parent == unpriced.run_dir.parent  # one job, two runs
    job = build_report(priced.run_dir.parent)
    total = job["total"]
    assert total["priced_rows"] == 4 and total["unpriced_rows"] == 3
    assert total["cost_usd"] == pytest.approx(priced.summary["cost_usd"], abs=1e-12)
    text = format_report(job)
    assert (
        f"${priced.summary['cost_usd']:,.4f} for 4 priced rows; 3 rows unpriced (models m-y)"
        in text
    )
