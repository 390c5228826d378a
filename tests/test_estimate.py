"""Estimates against the real run they predict, on the bundled mock API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import prompts, write_jsonl

import runner
from runner.cli import cli
from runner.errors import FatalApiError
from runner.estimate import EstimateOptions, estimate, format_estimate
from runner.job import resolve_job
from runner.mock import MockConfig, serve_in_thread
from runner.report import build_report
from runner.run import RunOptions, execute

DEMO = Path(runner.__file__).resolve().parent.parent / "jobs" / "demo.toml"


def real_input(report: dict) -> int:
    tokens = report["tokens"]
    return sum(tokens[k] for k in tokens if k != "output_tokens")


def within(report: dict, bounds: dict) -> bool:
    return bounds["min"] <= report["cost_usd"] <= bounds["max"]


def test_the_demo_estimate_matches_its_real_run(tmp_path: Path, mock_api) -> None:
    job = resolve_job(DEMO, {"base_url": mock_api.base_url})
    figures = estimate(job, EstimateOptions(pilot=24, output_dir=tmp_path / "reports"))
    real = build_report(execute(job, RunOptions(output_dir=tmp_path / "reports")).run_dir)
    assert figures["rows"] == {"to_send": 240, "invalid": 0}
    # Counted by the endpoint, input is exact: input + cache writes + cache reads.
    assert figures["input_tokens"]["total"] == real_input(real)
    assert within(real, figures["cost_usd"])
    assert figures["cost_usd"]["expected"] == pytest.approx(real["cost_usd"], rel=0.15)
    assert figures["batch_cost_usd"]["max"] == pytest.approx(figures["cost_usd"]["max"] * 0.5)
    learned = figures["output_tokens"]["learned_from"]
    assert learned["source"] == "pilot" and learned["rows"] == 24
    assert figures["output_tokens"]["max"] == 240 * 200
    assert figures["wall_time"]["binding"] == "concurrency"


def test_a_cached_system_prompt_is_priced_within_the_bounds(tmp_path: Path, mock_api) -> None:
    path = write_jsonl(tmp_path / "input.jsonl", prompts(40))
    settings = {
        "input": path,
        "id_column": "id",
        "base_url": mock_api.base_url,
        "request.model": "claude-sonnet-5-5",
        "request.max_tokens": 80,
        "request.system": "You summarise harbour-town news for busy readers. " * 30,
        "request.cache_system": True,
        "limits.concurrency": 4,
    }
    job = resolve_job(None, settings)
    figures = estimate(job, EstimateOptions(pilot=5, output_dir=tmp_path / "reports"))
    run = execute(job, RunOptions(output_dir=tmp_path / "reports", run_id="real"))
    real = build_report(run.run_dir)
    assert figures["input_tokens"]["total"] == real_input(real)
    cached = figures["input_tokens"]["cached_system_tokens"]
    tokens = real["tokens"]
    assert cached > 0
    assert tokens["cache_creation_input_tokens"] + tokens["cache_read_input_tokens"] == 40 * cached
    assert within(real, figures["cost_usd"])


def test_offline_states_its_error_and_its_bounds_hold(tmp_path: Path, mock_api) -> None:
    job = resolve_job(DEMO, {"base_url": mock_api.base_url})
    real = build_report(execute(job, RunOptions(output_dir=tmp_path / "reports")).run_dir)
    figures = estimate(job, EstimateOptions(offline=True, output_dir=tmp_path / "reports"))
    stated = figures["input_tokens"]["expected_error"]
    assert stated == 0.3
    assert abs(figures["input_tokens"]["total"] / real_input(real) - 1) <= stated
    # Output learned from the earlier run of the same job.
    assert figures["output_tokens"]["learned_from"]["source"] == "earlier run"
    assert within(real, figures["cost_usd"])
    assert "expect ±30%" in format_estimate(figures)


def test_invalid_rows_are_counted_and_listed(tmp_path: Path) -> None:
    rows = [*prompts(5), {"id": "x"}, {"id": "y", "prompt": " "}, {"id": "000001", "prompt": "dup"}]
    path = write_jsonl(tmp_path / "input.jsonl", rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("[1, 2]\n")
    # "m" has no price; the mock serves it as a reseller's own model.
    with serve_in_thread(MockConfig(models=("m",))) as server:
        job = resolve_job(
            None,
            {"input": path, "id_column": "id", "base_url": server.base_url, "request.model": "m"},
        )
        figures = estimate(job, EstimateOptions(output_dir=tmp_path / "reports"))
    assert figures["rows"] == {"to_send": 5, "invalid": 4}
    assert figures["invalid"] == [
        f"{path}:6: missing field 'prompt'",
        f"{path}:7: empty prompt",
        f"{path}:8: duplicate id 000001 (first on line 2)",
        f"{path}:9: expected a JSON object, found array",
    ]
    assert figures["cost_usd"] == {"min": None, "expected": None, "max": None}  # no price


def test_the_binding_limit_sets_the_wall_time(tmp_path: Path, mock_api) -> None:
    path = write_jsonl(tmp_path / "input.jsonl", prompts(30))
    flags = {"input": path, "base_url": mock_api.base_url, "request.model": "claude-sonnet-5-5"}
    slow = resolve_job(None, {**flags, "limits.requests_per_minute": 10})
    figures = estimate(slow, EstimateOptions(output_dir=tmp_path / "reports"))
    assert figures["wall_time"] == {
        "expected_s": 180.0,
        "binding": "requests_per_minute",
        "meters": {"requests_per_minute": 180.0},
    }
    itpm = resolve_job(None, {**flags, "limits.input_tokens_per_minute": 60})
    wall = estimate(itpm, EstimateOptions(output_dir=tmp_path / "reports"))["wall_time"]
    assert wall["binding"] == "input_tokens_per_minute"
    assert wall["expected_s"] == pytest.approx(
        figures["input_tokens"]["total"], rel=1e-6
    )  # 60 tokens a minute: one second a token


def test_the_cli_prints_json_and_needs_no_key_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    path = write_jsonl(tmp_path / "input.jsonl", prompts(3))
    args = ["estimate", "--input", str(path), "--model", "claude-sonnet-5-5", "--json"]
    result = CliRunner().invoke(cli, [*args, "--offline"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["rows"]["to_send"] == 3 and figures["input_tokens"]["method"] == "offline"
    refused = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert refused.exit_code == 2 and "no API key" in refused.output


def test_a_refused_key_stops_the_estimate(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "input.jsonl", prompts(20))
    with serve_in_thread(MockConfig(api_key="another-key")) as server:
        flags = {"input": path, "base_url": server.base_url, "request.model": "claude-sonnet-5-5"}
        job = resolve_job(None, flags)
        with pytest.raises(FatalApiError, match="401"):
            estimate(job, EstimateOptions(output_dir=tmp_path / "reports"))
        result = CliRunner().invoke(
            cli,
            [
                "estimate",
                "--input",
                str(path),
                "--model",
                "claude-sonnet-5-5",
                "--base-url",
                server.base_url,
            ],
            catch_exceptions=False,
        )
    assert result.exit_code == 3
