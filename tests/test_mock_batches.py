"""The mock's Message Batches endpoints through a real server on 127.0.0.1."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runner.mock import MockConfig, MockServer, serve_in_thread

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
# Bounds every wait for a batch to end.
WAIT_S = 10.0


def params(prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt}],
        **fields,
    }


def requests_for(n: int, tag: str = "") -> list[dict[str, Any]]:
    tag = tag or uuid.uuid4().hex[:8]
    return [{"custom_id": f"r{i}", "params": params(f"{tag} prompt {i}")} for i in range(n)]


def wait_ended(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/messages/batches/{batch_id}").json()
        if batch["processing_status"] == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end within {WAIT_S} s")


def results(client: httpx.Client, batch: dict[str, Any]) -> list[dict[str, Any]]:
    answer = client.get(batch["results_url"])
    assert answer.status_code == 200
    return [json.loads(line) for line in answer.text.splitlines()]


@pytest.fixture
def server() -> Iterator[MockServer]:
    with serve_in_thread(MockConfig(batch_processing_s=0.1)) as mock:
        yield mock


@pytest.fixture
def client(server: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=5.0) as c:
        yield c


def test_create_answers_an_in_progress_batch_object(client: httpx.Client) -> None:
    answer = client.post("/v1/messages/batches", json={"requests": requests_for(3)})
    assert answer.status_code == 200
    batch = answer.json()
    assert set(batch) == {
        "id",
        "type",
        "processing_status",
        "request_counts",
        "ended_at",
        "created_at",
        "expires_at",
        "archived_at",
        "cancel_initiated_at",
        "results_url",
    }
    assert batch["type"] == "message_batch"
    assert batch["id"].startswith("msgbatch_")
    assert batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 3,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["results_url"] is None and batch["ended_at"] is None
    assert batch["created_at"].endswith("Z")


def test_ended_batch_reports_counts_and_shuffled_results_matching_the_record(
    client: httpx.Client, server: MockServer
) -> None:
    sent = requests_for(40)
    batch_id = client.post("/v1/messages/batches", json={"requests": sent}).json()["id"]
    batch = wait_ended(client, batch_id)
    assert batch["request_counts"]["succeeded"] == 40
    assert batch["request_counts"]["processing"] == 0
    assert batch["results_url"] == f"{server.base_url}/v1/messages/batches/{batch_id}/results"
    lines = results(client, batch)
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in sent)
    assert [line["custom_id"] for line in lines] != [r["custom_id"] for r in sent]
    by_prompt = {r["params"]["messages"][0]["content"]: r["custom_id"] for r in sent}
    for line in lines:
        message = line["result"]["message"]
        assert line["result"]["type"] == "succeeded"
        prompt = next(p for p, c in by_prompt.items() if c == line["custom_id"])
        served = server.record.final_for_prompt(prompt)
        assert served is not None and served.request_id == batch_id
        assert served.custom_id == line["custom_id"]
        assert message["content"][0]["text"] == served.text
        assert message["usage"]["output_tokens"] == served.usage["output_tokens"]


def test_invalid_params_are_errored_items_at_the_end_not_refused_at_create(
    client: httpx.Client,
) -> None:
    sent = [
        {"custom_id": "good", "params": params("fine")},
        {"custom_id": "bad", "params": {"model": "claude-sonnet-5-5", "messages": []}},
    ]
    answer = client.post("/v1/messages/batches", json={"requests": sent})
    assert answer.status_code == 200
    lines = {
        x["custom_id"]: x["result"]
        for x in results(client, wait_ended(client, answer.json()["id"]))
    }
    assert lines["good"]["type"] == "succeeded"
    assert lines["bad"]["type"] == "errored"
    error = lines["bad"]["error"]
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]


@pytest.mark.parametrize(
    ("requests", "fragment"),
    [
        ([], "at least 1"),
        ([{"custom_id": "has space", "params": {}}], "custom_id"),
        ([{"custom_id": "x" * 65, "params": {}}], "custom_id"),
        ([{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}], "duplicate"),
        ([{"custom_id": "a"}], "params: Field required"),
    ],
)
def test_create_refuses_a_malformed_body(
    client: httpx.Client, requests: list[Any], fragment: str
) -> None:
    answer = client.post("/v1/messages/batches", json={"requests": requests})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert fragment in answer.json()["error"]["message"]


def test_body_over_the_size_limit_is_413() -> None:
    with (
        serve_in_thread(MockConfig(max_batch_bytes=2000)) as mock,
        httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as client,
    ):
        small = client.post("/v1/messages/batches", json={"requests": requests_for(2)})
        assert small.status_code == 200
        big = client.post("/v1/messages/batches", json={"requests": requests_for(40)})
        assert big.status_code == 413
        assert big.json()["error"]["type"] == "request_too_large"


def test_more_requests_than_allowed_is_400() -> None:
    with (
        serve_in_thread(MockConfig(max_batch_requests=5)) as mock,
        httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as client,
    ):
        answer = client.post("/v1/messages/batches", json={"requests": requests_for(6)})
        assert answer.status_code == 400
        assert "at most 5" in answer.json()["error"]["message"]


def test_key_and_version_are_required(server: MockServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=5.0) as bare:
        assert bare.get("/v1/messages/batches").status_code == 401
        answer = bare.get("/v1/messages/batches", headers={"x-api-key": "k"})
        assert answer.status_code == 400


def test_list_is_newest_first_and_pages_with_cursors(client: httpx.Client) -> None:
    ids = [
        client.post("/v1/messages/batches", json={"requests": requests_for(1)}).json()["id"]
        for _ in range(5)
    ]
    first = client.get("/v1/messages/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]
    second = client.get(
        "/v1/messages/batches", params={"limit": 2, "after_id": first["last_id"]}
    ).json()
    assert [b["id"] for b in second["data"]] == [ids[2], ids[1]]
    back = client.get(
        "/v1/messages/batches", params={"limit": 2, "before_id": second["first_id"]}
    ).json()
    assert [b["id"] for b in back["data"]] == [ids[4], ids[3]]
    assert client.get("/v1/messages/batches", params={"limit": 0}).status_code == 400


def test_cancel_ends_the_batch_with_canceled_items_and_keeps_finished_ones() -> None:
    with (
        serve_in_thread(MockConfig(batch_processing_s=30.0)) as mock,
        httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as client,
    ):
        batch_id = client.post("/v1/messages/batches", json={"requests": requests_for(4)}).json()[
            "id"
        ]
        canceling = client.post(f"/v1/messages/batches/{batch_id}/cancel").json()
        assert canceling["processing_status"] == "canceling"
        assert canceling["cancel_initiated_at"] is not None
        batch = wait_ended(client, batch_id)
        assert batch["request_counts"]["canceled"] == 4
        assert {line["result"]["type"] for line in results(client, batch)} == {"canceled"}
        assert mock.record.attempts() == []  # nothing was processed, nothing billed


def test_results_of_a_batch_still_processing_are_refused_and_delete_needs_an_end() -> None:
    with (
        serve_in_thread(MockConfig(batch_processing_s=30.0)) as mock,
        httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as client,
    ):
        batch_id = client.post("/v1/messages/batches", json={"requests": requests_for(1)}).json()[
            "id"
        ]
        assert client.get(f"/v1/messages/batches/{batch_id}/results").status_code == 400
        assert client.delete(f"/v1/messages/batches/{batch_id}").status_code == 400
        client.post(f"/v1/messages/batches/{batch_id}/cancel")
        wait_ended(client, batch_id)
        deleted = client.delete(f"/v1/messages/batches/{batch_id}")
        assert deleted.json() == {"id": batch_id, "type": "message_batch_deleted"}
        assert client.get(f"/v1/messages/batches/{batch_id}").status_code == 404


def test_errored_and_expired_rates_and_fault_markers_shape_the_items() -> None:
    config = MockConfig(batch_processing_s=0.0, batch_errored=0.3, batch_expired=0.3, seed=7)
    with (
        serve_in_thread(config) as mock,
        httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as client,
    ):
        sent = requests_for(60)
        sent.append({"custom_id": "auth", "params": params("x [[fault:401]]")})
        batch_id = client.post("/v1/messages/batches", json={"requests": sent}).json()["id"]
        lines = {x["custom_id"]: x["result"] for x in results(client, wait_ended(client, batch_id))}
        kinds = [r["type"] for r in lines.values()]
        assert {"succeeded", "errored", "expired"} <= set(kinds)
        assert lines["auth"]["error"]["error"]["type"] == "authentication_error"
        errored = {r["error"]["error"]["type"] for c, r in lines.items() if r["type"] == "errored"}
        assert errored <= {"api_error", "overloaded_error", "authentication_error"}
        outcomes = [a.outcome for a in mock.record.attempts()]
        assert outcomes.count("fault:expired") == kinds.count("expired")
        assert outcomes.count("ok") == kinds.count("succeeded")
