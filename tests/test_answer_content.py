"""What an answer says beyond its text, through real runs on the mock: tool calls,
structured JSON (and `runner export --expand-json`), thinking, the serving model; and
the stream parser on events the mock does not send (stop_details, thinking_tokens).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
from conftest import TEST_KEY
from helpers import results_of

from runner.job import resolve_job
from runner.mock import MockConfig, MockServer, serve_in_thread
from runner.reading import AnswerReader
from runner.run import RunOptions, RunOutcome, execute

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "price": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "price", "tags"],
    "additionalProperties": False,
}
STRUCTURED = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
TOOL = {
    "name": "lookup",
    "description": "Look a product up",
    "input_schema": {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
        "required": ["sku", "count"],
    },
}


def run(tmp_path: Path, base_url: str, n: int = 3, **flags: Any) -> RunOutcome:
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": f"item {i}"}) + "\n" for i in range(n))
    )
    settings: dict[str, Any] = {
        "input": path,
        "id_column": "id",
        "base_url": base_url,
        "request.model": "claude-sonnet-5-5",
        "request.max_tokens": 400,
        **flags,
    }
    return execute(
        resolve_job(None, settings), RunOptions(output_dir=tmp_path / "out", run_id="r1")
    )


def test_tool_calls_are_kept_as_json(tmp_path: Path, mock_api: MockServer) -> None:
    outcome = run(tmp_path, mock_api.base_url, **{"request.params": {"tools": [TOOL]}})
    assert outcome.exit_code == 0, outcome.summary
    for row in results_of(outcome.run_dir).iter_rows(named=True):
        assert row["stop_reason"] == "tool_use"
        (call,) = json.loads(row["tool_calls"])
        assert call["name"] == "lookup" and call["id"].startswith("toolu_")
        assert isinstance(call["input"]["sku"], str) and call["input"]["count"] >= 1
        assert row["output_json"] is None


def test_structured_output_is_parsed_and_exported_as_columns(
    tmp_path: Path, mock_api: MockServer
) -> None:
    outcome = run(tmp_path, mock_api.base_url, **{"request.params": STRUCTURED})
    assert outcome.exit_code == 0, outcome.summary
    results = results_of(outcome.run_dir)
    served = {a.prompt: a.text for a in mock_api.record.attempts()}
    for row in results.iter_rows(named=True):
        assert json.loads(row["output_json"]) == json.loads(served[f"item {row['id'][1:]}"])
        assert list(json.loads(row["output_json"])) == ["title", "price", "tags"]  # schema order
    out = tmp_path / "out.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "export", str(outcome.run_dir), "--expand-json",
         "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = pl.read_parquet(out)
    assert exported.columns[-3:] == ["title", "price", "tags"]
    assert exported.schema["price"] == pl.Float64
    first = json.loads(results.sort("id")["output_json"][0])
    assert exported.sort("id").row(0, named=True)["title"] == first["title"]


def test_an_answer_that_is_not_json_is_invalid_output(tmp_path: Path, mock_api: MockServer) -> None:
    # Cut at max_tokens in the middle of the JSON: the API's answer, paid for, unusable.
    outcome = run(
        tmp_path, mock_api.base_url, n=1, **{"request.params": STRUCTURED, "request.max_tokens": 3}
    )
    assert outcome.exit_code == 1
    (row,) = results_of(outcome.run_dir).iter_rows(named=True)
    assert row["status"] == "error" and row["error_type"] == "invalid_output"
    assert row["error_message"].startswith("the answer is not valid JSON")
    assert row["output_text"] == mock_api.record.attempts()[0].text
    assert row["cost_usd"] > 0


def test_thinking_is_kept_when_asked(tmp_path: Path, mock_api: MockServer) -> None:
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    outcome = run(
        tmp_path,
        mock_api.base_url,
        n=1,
        **{"request.params": thinking, "request.max_tokens": 2000, "request.keep_thinking": True},
    )
    assert outcome.exit_code == 0, outcome.summary
    (row,) = results_of(outcome.run_dir).iter_rows(named=True)
    assert row["thinking"] and row["output_text"]
    assert row["output_tokens"] == mock_api.record.attempts()[0].usage["output_tokens"]


def test_the_model_that_answered_is_recorded(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(serve_model="claude-haiku-5-5")) as mock:
        outcome = run(tmp_path, mock.base_url, n=2)
    results = results_of(outcome.run_dir)
    assert set(results["model"]) == {"claude-sonnet-5-5"}
    assert set(results["served_model"]) == {"claude-haiku-5-5"}


def test_stop_details_and_thinking_tokens_from_the_stream() -> None:
    reader = AnswerReader(0.0)
    events = [
        ("message_start", {"type": "message_start", "message": {"model": "m", "usage": {}}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "refusal",
                    "stop_details": {"type": "refusal", "category": "cyber", "explanation": None},
                },
                "usage": {"output_tokens": 7, "thinking_tokens": 5},
            },
        ),
    ]  # fmt: skip
    for kind, data in events:
        assert reader.on_event(kind, json.dumps(data)) is None
    done = reader.on_event("message_stop", "{}")
    assert done is not None
    assert json.loads(done.stop_details or "") == {
        "type": "refusal",
        "category": "cyber",
        "explanation": None,
    }
    assert done.thinking_tokens == 5 and done.content.thinking == "hmm"


def test_estimate_counts_images_through_count_tokens(tmp_path: Path, mock_api: MockServer) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4000))
    path = tmp_path / "img.jsonl"
    path.write_text('{"id": "1", "prompt": "describe", "file": "a.png"}\n')
    command = [
        sys.executable, "-m", "runner", "estimate", "--input", str(path), "--json",
        "--model", "claude-sonnet-5-5", "--base-url", mock_api.base_url,
    ]  # fmt: skip
    env_key = {"ANTHROPIC_API_KEY": TEST_KEY}
    plain = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env(env_key))
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{path}"\nid_column = "id"\n[request]\nattachments = ["file"]\n')
    with_image = subprocess.run(
        [*command, str(job)], capture_output=True, text=True, timeout=60, env=_env(env_key)
    )
    assert plain.returncode == 0 and with_image.returncode == 0, with_image.stderr
    tokens = [json.loads(done.stdout)["input_tokens"]["total"] for done in (plain, with_image)]
    assert tokens[1] > tokens[0] + 80, tokens


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    return {**env, **extra}


def test_the_dataset_example_job_runs_and_exports(tmp_path: Path, mock_api: MockServer) -> None:
    job_file = Path(__file__).parent.parent / "jobs" / "dataset.toml"
    job = resolve_job(job_file, {"base_url": mock_api.base_url})
    outcome = execute(job, RunOptions(output_dir=tmp_path / "out", run_id="r1"))
    assert outcome.exit_code == 0, outcome.summary
    results = results_of(outcome.run_dir)
    assert results.height == 16 and results["output_json"].null_count() == 0
    # Numbers and booleans filled the template as the file wrote them.
    prompts = sorted(a.prompt for a in mock_api.record.attempts())
    assert any("Price: 139.68 USD, rating 4.0/5, in stock: true" in p for p in prompts)
    out = tmp_path / "products.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "export", str(outcome.run_dir), "--expand-json",
         "--columns", "sku,item,title,category,highlights", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = json.loads(out.read_text().splitlines()[0])
    assert list(first) == ["sku", "item", "title", "category", "highlights"]
    assert first["category"] in ("kitchen", "outdoors", "electronics", "home", "fitness")


def test_tool_calls_in_batch_mode(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(batch_processing_s=0.02)) as mock:
        outcome = run(
            tmp_path,
            mock.base_url,
            n=2,
            **{"mode": "batch", "batch.poll_interval": 0.02, "request.params": {"tools": [TOOL]}},
        )
    assert outcome.exit_code == 0, outcome.summary
    for row in results_of(outcome.run_dir).iter_rows(named=True):
        (call,) = json.loads(row["tool_calls"])
        assert call["name"] == "lookup" and set(call["input"]) == {"sku", "count"}


def test_a_refusal_keeps_its_stop_details(tmp_path: Path, mock_api: MockServer) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "bad", "prompt": "write malware [[refusal]]"}\n{"id": "ok", "prompt": "hi"}\n'
    )
    job = resolve_job(
        None,
        {"input": path, "id_column": "id", "base_url": mock_api.base_url,
         "request.model": "claude-sonnet-5-5"},
    )  # fmt: skip
    outcome = execute(job, RunOptions(output_dir=tmp_path / "out"))
    rows = {r["id"]: r for r in results_of(outcome.run_dir).iter_rows(named=True)}
    assert rows["bad"]["stop_reason"] == "refusal"
    assert json.loads(rows["bad"]["stop_details"])["category"] == "cyber"
    assert rows["ok"]["stop_details"] is None
