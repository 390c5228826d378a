"""The requests people have, through real runs on the mock: per-row fields, conversations,
Message Batches request lines, attachments, passthrough parameters, headers; and what the
mock refuses as the real API does.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import results_of

from runner.errors import JobFileError
from runner.job import load_job_file, resolve_job
from runner.mock import MockConfig, MockServer, serve_in_thread
from runner.run import RunOptions, RunOutcome, execute

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + b"0 obj << >> endobj\n" * 200


def run(tmp_path: Path, mock: MockServer, input_path: Path, **flags: Any) -> RunOutcome:
    settings: dict[str, Any] = {
        "input": input_path,
        "base_url": mock.base_url,
        "request.model": "claude-sonnet-5-5",
        "request.max_tokens": 64,
        **flags,
    }
    return execute(resolve_job(None, settings), RunOptions(output_dir=tmp_path / "out"))


def rows_by_id(outcome: RunOutcome) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in results_of(outcome.run_dir).iter_rows(named=True)}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_columns_set_model_system_and_max_tokens_per_row(
    tmp_path: Path, mock_api: MockServer
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "id,prompt,model,max_tokens,system\n"
        "a,first question,claude-haiku-5-5,3,Be brief.\n"
        "b,second question,,,\n"  # empty cells keep the job's values
    )
    outcome = run(tmp_path, mock_api, path, id_column="id")
    assert outcome.exit_code == 0, outcome.summary
    rows = rows_by_id(outcome)
    assert rows["a"]["model"] == rows["a"]["served_model"] == "claude-haiku-5-5"
    assert rows["a"]["output_tokens"] <= 3
    assert rows["b"]["served_model"] == "claude-sonnet-5-5"
    served = {a.prompt: a for a in mock_api.record.attempts()}
    assert served["first question"].usage["output_tokens"] == rows["a"]["output_tokens"]
    # The system prompt is part of the input the mock counted.
    assert (
        served["first question"].usage["input_tokens"]
        > served["second question"].usage["input_tokens"] - 2
    )


def test_a_messages_column_is_the_whole_conversation(tmp_path: Path, mock_api: MockServer) -> None:
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": [{"type": "text", "text": "And times 3?"}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"id": "c1", "messages": conversation}])
    outcome = run(tmp_path, mock_api, path, id_column="id")
    assert outcome.exit_code == 0, outcome.summary
    (served,) = mock_api.record.attempts()
    assert served.prompt == "And times 3?"
    assert rows_by_id(outcome)["c1"]["output_text"] == served.text


def test_message_batches_request_lines_run_as_they_are(
    tmp_path: Path, mock_api: MockServer
) -> None:
    lines = [
        {
            "custom_id": "req-1",
            "params": {
                "model": "claude-haiku-5-5",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "batch line one"}],
            },
        },
        {
            "custom_id": "req-2",
            "params": {
                "model": "claude-sonnet-5-5",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "batch line two"}],
            },
        },
    ]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    outcome = run(tmp_path, mock_api, path, **{"request.model": None})
    assert outcome.exit_code == 0, outcome.summary
    rows = rows_by_id(outcome)
    assert set(rows) == {"req-1", "req-2"}
    assert rows["req-1"]["served_model"] == "claude-haiku-5-5"
    assert sorted(a.prompt for a in mock_api.record.attempts()) == [
        "batch line one",
        "batch line two",
    ]


def test_images_and_pdfs_from_paths_and_urls(tmp_path: Path, mock_api: MockServer) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "paper.pdf").write_bytes(PDF)
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    rows = [
        {"id": "img", "prompt": "describe", "file": "cat.png"},
        {"id": "pdf", "prompt": "summarise", "file": "paper.pdf"},
        {"id": "url", "prompt": "what is it", "file": "https://example.com/a.jpg"},
        {"id": "text", "prompt": "plain"},
        {"id": "bad", "prompt": "describe", "file": "fake.png"},
        {"id": "gone", "prompt": "describe", "file": "missing.png"},
    ]
    path = write_jsonl(tmp_path / "media.jsonl", rows)
    outcome = run(tmp_path, mock_api, path, id_column="id", **{"request.attachments": ["file"]})
    assert outcome.exit_code == 1
    results = rows_by_id(outcome)
    text_tokens = results["text"]["input_tokens"]
    for name in ("img", "pdf", "url"):
        assert results[name]["status"] == "ok"
        assert results[name]["input_tokens"] > text_tokens + 80, name  # counted as input
    assert results["bad"]["status"] == "invalid"
    assert "not a PNG, JPEG, GIF, WebP image or a PDF" in results["bad"]["error_message"]
    assert results["gone"]["error_message"] == "attachment missing.png: no such file"


def test_tools_structured_output_and_thinking_pass_through(
    tmp_path: Path, mock_api: MockServer
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "prompt": "weather in Paris?"}])
    tool = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
    outcome = run(
        tmp_path,
        mock_api,
        path,
        id_column="id",
        **{"request.params": {"tools": [tool], "tool_choice": {"type": "any"}}},
    )
    assert outcome.exit_code == 0, outcome.summary
    assert rows_by_id(outcome)["1"]["stop_reason"] == "tool_use"

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
        "required": ["name", "price"],
        "additionalProperties": False,
    }
    params = {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    outcome = run(tmp_path, mock_api, path, id_column="id", **{"request.params": params})
    answer = json.loads(rows_by_id(outcome)["1"]["output_text"])
    assert set(answer) == {"name", "price"} and isinstance(answer["price"], float)

    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    outcome = run(
        tmp_path,
        mock_api,
        path,
        id_column="id",
        **{"request.params": thinking, "request.max_tokens": 2000},
    )
    assert outcome.exit_code == 0, outcome.summary


def test_job_file_passes_new_parameters_and_catches_typos(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        'input = "in.jsonl"\n[request]\nmodel = "claude-sonnet-5-5"\n'
        '[request.params]\nservice_tier = "auto"\nbrand_new_option = 1\n'
        '[request.params.metadata]\nuser_id = "u1"\n'
    )
    settings = load_job_file(job)
    assert settings["request.params"]["brand_new_option"] == 1
    job.write_text(
        'input = "in.jsonl"\n[request]\nmodel = "m"\n[request.params]\ntool_choise = "auto"\n'
    )
    with pytest.raises(
        JobFileError, match=r"request.params.tool_choise' \(did you mean 'tool_choice'"
    ):
        load_job_file(job)


def test_bearer_token_version_and_betas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    token = "proxy-token-0123456789"
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", token)
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "prompt": "hello"}])
    with serve_in_thread(MockConfig(api_key=token)) as mock:
        outcome = run(tmp_path, mock, path, **{"request.anthropic_beta": ["some-beta-2025"]})
        assert outcome.exit_code == 0, outcome.summary
        # Sampling parameters are gone under 2026-10-21: the mock refuses them as the API does.
        outcome = run(
            tmp_path,
            mock,
            path,
            **{"request.anthropic_version": "2026-10-21", "request.temperature": 0.5},
        )
    row = rows_by_id(outcome)["1"]
    assert row["status"] == "error" and row["attempts"] == 1
    assert row["error_message"].endswith("temperature: Extra inputs are not permitted")
    assert token not in json.dumps(outcome.summary)


@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"model": "claude-nonexistent-9"}, 404, "not_found_error", "model: claude-nonexistent-9"),
        (
            {
                "model": "claude-opus-4-6",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Sure,"},
                ],
            },
            400,
            "invalid_request_error",
            "does not support assistant message prefill",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
            "messages.0.content.0.source.type: Input should be 'base64' or 'url'",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 100}},
            400,
            "invalid_request_error",
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        ({"tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tool_choice"),
        (
            {"output_config": {"format": {"type": "json"}}},
            400,
            "invalid_request_error",
            "output_config.format.type: Input should be 'json_schema'",
        ),
    ],
)
def test_the_mock_refuses_what_the_api_refuses(
    mock_api: MockServer, body: dict[str, Any], status: int, error_type: str, message: str
) -> None:
    import httpx

    request = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        **body,
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{mock_api.base_url}/v1/messages", json=request, headers=headers)
    assert response.status_code == status
    answer = response.json()
    assert answer["type"] == "error" and answer["error"]["type"] == error_type
    assert message in answer["error"]["message"]
    assert answer["request_id"]


def test_an_image_in_count_tokens(mock_api: MockServer) -> None:
    import httpx

    image = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        },
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    url = f"{mock_api.base_url}/v1/messages/count_tokens"
    plain = {"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "hi"}]}
    with_image = {
        "model": "claude-sonnet-5-5",
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}],
    }
    counted = [
        httpx.post(url, json=b, headers=headers).json()["input_tokens"] for b in (plain, with_image)
    ]
    assert counted[1] > counted[0] + 80
    assert pl.Series(counted).is_sorted()
