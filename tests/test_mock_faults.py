"""Every fault kind by marker, the random faults, and the rate limits, through a real server."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from runner.mock import MockConfig, MockServer, serve_in_thread

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def body(prompt: str, stream: bool = True, **fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 300,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
        **fields,
    }


def marked(marker: str) -> str:
    """A unique prompt carrying `marker`."""
    return f"{marker} please write {uuid.uuid4().hex}"


def event_names(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]


def raw_exchange(base_url: str, payload: dict[str, Any], timeout: float = 5.0) -> bytes:
    """Send one request over a bare socket and read until the server closes or resets it."""
    host, port = base_url.removeprefix("http://").split(":")
    data = json.dumps(payload).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nx-api-key: k\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


@contextmanager
def serving(config: MockConfig) -> Iterator[httpx.Client]:
    """A client of a fresh mock server with `config`."""
    with (
        serve_in_thread(config) as server,
        httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=5.0) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    with serve_in_thread(MockConfig(stall_s=0.3)) as server:
        yield server


@pytest.fixture(scope="module")
def client(mock: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as c:
        yield c


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("429", 429, "rate_limit_error"),
        ("529", 529, "overloaded_error"),
        ("500", 500, "api_error"),
        ("503", 503, "api_error"),
        ("408", 408, "timeout_error"),
        ("400", 400, "invalid_request_error"),
        ("401", 401, "authentication_error"),
        ("403", 403, "permission_error"),
        ("404", 404, "not_found_error"),
        ("413", 413, "request_too_large"),
        ("spend_cap", 429, "rate_limit_error"),
        ("should_retry_false", 500, "api_error"),
        ("should_retry_true", 400, "invalid_request_error"),
    ],
)
def test_http_fault_fails_the_first_attempt_only(
    client: httpx.Client, kind: str, status: int, error_type: str
) -> None:
    prompt = marked(f"[[fault:{kind}]]")
    first = client.post("/v1/messages", json=body(prompt))
    second = client.post("/v1/messages", json=body(prompt))
    assert first.status_code == status
    assert first.json()["type"] == "error" and first.json()["error"]["type"] == error_type
    assert first.headers["request-id"].startswith("req_mock_")
    assert second.status_code == 200 and "message_stop" in event_names(second.content)
    if kind == "429":
        assert first.headers["retry-after"] == "1"
    if kind == "spend_cap":
        assert first.json()["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
        assert "retry-after" not in first.headers
    if kind.startswith("should_retry"):
        assert first.headers["x-should-retry"] == kind.removeprefix("should_retry_")


def test_marker_counts_all_and_retry_after(client: httpx.Client) -> None:
    twice = marked("[[fault:429:2:retry=7]]")
    codes = [client.post("/v1/messages", json=body(twice)) for _ in range(3)]
    assert [r.status_code for r in codes] == [429, 429, 200]
    assert codes[0].headers["retry-after"] == "7"
    always = marked("[[fault:529:all]]")
    assert {client.post("/v1/messages", json=body(always)).status_code for _ in range(3)} == {529}


def test_markers_are_consumed_in_order(client: httpx.Client) -> None:
    prompt = marked("[[fault:500]] [[fault:529:2]]")
    codes = [client.post("/v1/messages", json=body(prompt)).status_code for _ in range(4)]
    assert codes == [500, 529, 529, 200]


def test_malformed_marker_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/messages", json=body(marked("[[fault:nonsense]]")))
    assert response.status_code == 400 and "nonsense" in response.json()["error"]["message"]


def test_reset_aborts_before_any_headers(mock: MockServer) -> None:
    prompt = marked("[[fault:reset]]")
    assert raw_exchange(mock.base_url, body(prompt)) == b""
    assert raw_exchange(mock.base_url, body(prompt)).startswith(b"HTTP/1.1 200")
    assert mock.record.attempts_for_prompt(prompt)[0].outcome == "fault:reset"


def test_drop_cuts_the_stream_mid_body(mock: MockServer) -> None:
    prompt = marked("[[fault:drop]]")
    raw = raw_exchange(mock.base_url, body(prompt))
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"content_block_delta" in raw
    assert b"message_stop" not in raw and not raw.endswith(b"0\r\n\r\n")
    served = mock.record.final_for_prompt(prompt)
    assert served is not None and served.text and not served.completed
    assert served.usage["output_tokens"] == 1  # only message_start's usage was reported


def test_drop_without_stream_cuts_the_json_body(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/messages", json=body(marked("[[fault:drop]]"), stream=False))


def test_error_event_ends_the_stream_with_an_error(client: httpx.Client) -> None:
    response = client.post("/v1/messages", json=body(marked("[[fault:error_event]]")))
    names = event_names(response.content)
    assert response.status_code == 200
    assert "content_block_delta" in names and names[-1] == "error"
    data = response.content.decode().rstrip().split("\n")[-1].removeprefix("data: ")
    assert json.loads(data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_no_stop_ends_cleanly_after_message_delta(client: httpx.Client) -> None:
    names = event_names(client.post("/v1/messages", json=body(marked("[[fault:no_stop]]"))).content)
    assert names[-1] == "message_delta" and "message_stop" not in names


def test_stall_goes_silent_then_closes(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/v1/messages", json=body(marked("[[fault:stall]]")))
    assert time.monotonic() - started >= 0.25
    names = event_names(response.content)
    assert "content_block_delta" in names and "message_stop" not in names


def test_unknown_event_is_inserted_in_an_ok_stream(client: httpx.Client, mock: MockServer) -> None:
    prompt = marked("[[fault:unknown_event]]")
    names = event_names(client.post("/v1/messages", json=body(prompt)).content)
    assert "future_event" in names and names[-1] == "message_stop"
    served = mock.record.final_for_prompt(prompt)
    assert served is not None and served.outcome == "ok"


def test_random_faults_are_reproducible_for_a_seed() -> None:
    def outcomes(seed: int) -> list[int]:
        config = MockConfig(seed=seed, faults={"500": 0.3, "529": 0.2})
        with (
            serve_in_thread(config) as server,
            httpx.Client(base_url=server.base_url, headers=HEADERS) as c,
        ):
            return [c.post("/v1/messages", json=body(f"row {i}")).status_code for i in range(30)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert {500, 529, 200} <= set(first)


def test_requests_per_minute_limit_gives_429_with_headers() -> None:
    with serving(MockConfig(rpm=2, itpm=100_000, otpm=100_000)) as c:
        answers = [c.post("/v1/messages", json=body(f"rpm {i}")) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert answers[0].headers["anthropic-ratelimit-requests-limit"] == "2"
    assert answers[0].headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    for meter in ("requests", "input-tokens", "output-tokens", "tokens"):
        for field in ("limit", "remaining", "reset"):
            assert f"anthropic-ratelimit-{meter}-{field}" in refused.headers
    assert refused.headers["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_output_tokens_are_charged_after_the_fact() -> None:
    with serving(MockConfig(otpm=5)) as c:
        first = c.post("/v1/messages", json=body("otpm first"))
        second = c.post("/v1/messages", json=body("otpm second"))
    assert first.status_code == 200  # the bucket was full; the reply drove it negative
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1


def test_input_tokens_limit_and_no_headers_mode() -> None:
    config = MockConfig(itpm=100, ratelimit_headers=False)
    with serving(config) as c:
        first = c.post("/v1/messages", json=body("a" * 300))
        second = c.post("/v1/messages", json=body("b" * 300))
    assert first.status_code == 200 and second.status_code == 429
    assert "retry-after" in second.headers
    assert not any(h.startswith("anthropic-ratelimit") for h in first.headers)
    assert not any(h.startswith("anthropic-ratelimit") for h in second.headers)


def test_chunk_delay_sends_deltas_as_separate_writes() -> None:
    with serving(MockConfig(chunk_delay_ms=20, latency_ms=50)) as c:
        started = time.monotonic()
        with c.stream("POST", "/v1/messages", json=body("slow one", max_tokens=8)) as r:
            arrivals = [time.monotonic() - started for _ in r.iter_raw()]
    assert arrivals[0] >= 0.04
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] >= 0.02
