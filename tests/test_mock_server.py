"""The mock API through a real server on 127.0.0.1: wire shapes, caching, errors, faults, limits."""

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


def unique(text: str = "prompt") -> str:
    """A prompt no other test sends, so attempt counts and the cache do not leak between tests."""
    return f"{text} {uuid.uuid4().hex}"


def body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
        **fields,
    }


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs; every event of the mock has exactly one event and one data line."""
    events = []
    for block in raw.decode("utf-8").split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def stream_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta")


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    with serve_in_thread(MockConfig()) as server:
        yield server


@pytest.fixture(scope="module")
def client(mock: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.base_url, headers=HEADERS, timeout=5.0) as c:
        yield c


def test_base_url_is_local_without_trailing_slash(mock: MockServer) -> None:
    assert mock.base_url.startswith("http://127.0.0.1:")
    assert not mock.base_url.endswith("/")


def test_stream_has_the_documented_event_sequence_and_shapes(client: httpx.Client) -> None:
    response = client.post("/v1/messages", json=body(unique(), stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_mock_")
    events = parse_sse(response.content)
    names = [e for e, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert all(data["type"] == name for name, data in events)
    message = events[0][1]["message"]
    assert message["role"] == "assistant" and message["model"] == "claude-sonnet-5-5"
    assert message["id"].startswith("msg_") and message["content"] == []
    usage = message["usage"]
    assert usage["output_tokens"] == 1
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert all(d["delta"]["type"] == "text_delta" for e, d in events if e == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] >= 5


def test_non_stream_reply_matches_the_stream(client: httpx.Client) -> None:
    prompt = unique()
    streamed = parse_sse(client.post("/v1/messages", json=body(prompt, stream=True)).content)
    message = client.post("/v1/messages", json=body(prompt)).json()
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": stream_text(streamed)}]
    assert message["usage"]["output_tokens"] == streamed[-2][1]["usage"]["output_tokens"]
    assert message["usage"]["input_tokens"] == streamed[0][1]["message"]["usage"]["input_tokens"]


def test_replies_are_deterministic_and_exercise_utf8_and_escapes(client: httpx.Client) -> None:
    texts = set()
    for _ in range(2):
        texts.add(client.post("/v1/messages", json=body("same prompt, same reply")).text)
    assert len({json.loads(t)["content"][0]["text"] for t in texts}) == 1
    corpus = "".join(
        client.post("/v1/messages", json=body(f"variety {i}")).json()["content"][0]["text"]
        for i in range(20)
    )
    for needle in ('"', "\\", "\n", "日本語", "🙂", "é"):
        assert needle in corpus


def test_output_is_capped_at_max_tokens(client: httpx.Client) -> None:
    prompt = unique()
    full = client.post("/v1/messages", json=body(prompt, max_tokens=4096)).json()
    capped = client.post("/v1/messages", json=body(prompt, max_tokens=3)).json()
    assert capped["usage"]["output_tokens"] == 3
    assert capped["stop_reason"] == "max_tokens"
    assert full["stop_reason"] == "end_turn"
    assert full["content"][0]["text"].startswith(capped["content"][0]["text"])


def test_message_delta_output_is_cumulative_total(client: httpx.Client) -> None:
    events = parse_sse(client.post("/v1/messages", json=body(unique(), stream=True)).content)
    deltas = [d for e, d in events if e == "content_block_delta"]
    assert len(deltas) >= 2
    assert events[-2][1]["usage"]["output_tokens"] >= len(deltas)


def test_stop_sequence_ends_the_reply(client: httpx.Client) -> None:
    prompt = unique()
    text = client.post("/v1/messages", json=body(prompt)).json()["content"][0]["text"]
    stop = text.split()[2] if len(text.split()) > 3 else text[-2:]
    reply = client.post("/v1/messages", json=body(prompt, stop_sequences=[stop])).json()
    assert reply["stop_reason"] == "stop_sequence" and reply["stop_sequence"] == stop
    assert stop not in reply["content"][0]["text"]


def test_count_tokens_equals_the_input_a_message_reports(client: httpx.Client) -> None:
    prompt = {
        "system": [
            {"type": "text", "text": "Be brief. " * 40, "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": unique("Größe 日本語")}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": unique()},
        ],
    }
    counted = client.post(
        "/v1/messages/count_tokens", json={"model": "claude-sonnet-5-5", **prompt}
    ).json()
    usage = client.post(
        "/v1/messages", json={"model": "claude-sonnet-5-5", "max_tokens": 9, **prompt}
    ).json()["usage"]
    total = (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
    )
    assert counted == {"input_tokens": total}


def test_cache_is_created_then_read(client: httpx.Client) -> None:
    system = [
        {
            "type": "text",
            "text": unique("long shared context ") * 30,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = client.post("/v1/messages", json=body(unique(), system=system)).json()["usage"]
    second = client.post("/v1/messages", json=body(unique(), system=system)).json()["usage"]
    assert first["cache_creation_input_tokens"] > 0 and first["cache_read_input_tokens"] == 0
    assert (
        first["cache_creation"]["ephemeral_1h_input_tokens"] == first["cache_creation_input_tokens"]
    )
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] > 0


def test_second_breakpoint_reads_the_first_and_writes_the_rest(client: httpx.Client) -> None:
    shared = {"type": "text", "text": unique() * 20, "cache_control": {"type": "ephemeral"}}
    client.post("/v1/messages", json=body(unique(), system=[shared]))
    turn = {
        "role": "user",
        "content": [{"type": "text", "text": unique() * 5, "cache_control": {"type": "ephemeral"}}],
    }
    usage = client.post(
        "/v1/messages",
        json={
            "model": "claude-sonnet-5-5",
            "max_tokens": 5,
            "system": [shared],
            "messages": [turn],
        },
    ).json()["usage"]
    assert usage["cache_read_input_tokens"] > 0
    assert (
        usage["cache_creation"]["ephemeral_5m_input_tokens"]
        == usage["cache_creation_input_tokens"]
        > 0
    )
    assert usage["input_tokens"] == 0


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "k"}, 400, "invalid_request_error"),
    ],
)
def test_missing_key_or_version_is_refused(
    mock: MockServer, headers: dict[str, str], status: int, error_type: str
) -> None:
    response = httpx.post(f"{mock.base_url}/v1/messages", json=body("x"), headers=headers)
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == error_type
    assert response.headers["request-id"].startswith("req_mock_")


def test_bearer_token_is_accepted(mock: MockServer) -> None:
    headers = {"authorization": "Bearer k", "anthropic-version": "2023-06-01"}
    assert (
        httpx.post(f"{mock.base_url}/v1/messages", json=body("x"), headers=headers).status_code
        == 200
    )


def test_configured_api_key_must_match() -> None:
    with serve_in_thread(MockConfig(api_key="right")) as server:
        url = f"{server.base_url}/v1/messages"
        wrong = httpx.post(url, json=body("x"), headers=HEADERS)
        right = httpx.post(url, json=body("x"), headers={**HEADERS, "x-api-key": "right"})
    assert wrong.status_code == 401 and right.status_code == 200


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (body("x", colour="blue"), "colour"),
        (
            {"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (body("x", max_tokens=0), "max_tokens"),
        (body("x", model=""), "model"),
        ({"model": "claude-sonnet-5-5", "max_tokens": 5, "messages": []}, "messages"),
        (
            {
                "model": "claude-sonnet-5-5",
                "max_tokens": 5,
                "messages": [{"role": "bot", "content": "x"}],
            },
            "role",
        ),
        (body("x", temperature=3), "temperature"),
        (body("x", system=[{"type": "image"}]), "system.0"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(
    client: httpx.Client, payload: dict[str, Any], fragment: str
) -> None:
    response = client.post("/v1/messages", json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]
    assert response.headers["request-id"]


def test_too_large_and_too_long_prompts() -> None:
    with serve_in_thread(MockConfig(max_request_bytes=2000, context_window=100)) as server:
        url = f"{server.base_url}/v1/messages"
        large = httpx.post(url, json=body("x" * 5000), headers=HEADERS)
        long = httpx.post(url, json=body("y" * 1000), headers=HEADERS)
    assert large.status_code == 413 and large.json()["error"]["type"] == "request_too_large"
    assert long.status_code == 400
    assert long.json()["error"]["message"] == "prompt is too long: 253 tokens > 100 maximum"


def test_record_and_stats_show_what_was_served(client: httpx.Client, mock: MockServer) -> None:
    prompt = unique("[[fault:500:2]]")
    statuses = [
        client.post("/v1/messages", json=body(prompt, stream=True)).status_code for _ in range(3)
    ]
    final = client.post("/v1/messages", json=body(prompt, stream=True))
    assert statuses == [500, 500, 200]
    attempts = mock.record.attempts_for_prompt(prompt)
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert [a.outcome for a in attempts] == ["fault:500", "fault:500", "ok", "ok"]
    last = mock.record.final_for_prompt(prompt)
    assert last is not None and last.request_id == final.headers["request-id"]
    events = parse_sse(final.content)
    assert last.text == stream_text(events)
    assert last.usage["output_tokens"] == events[-2][1]["usage"]["output_tokens"]
    assert last.stop_reason == "end_turn" and last.completed
    stats = client.get("/_mock/stats").json()
    assert stats["requests"] >= 4 and stats["by_status"]["500"] >= 2
    assert set(stats["tokens"]) >= {"input_tokens", "output_tokens"}


def test_reset_endpoint_forgets_attempts_and_record() -> None:
    with serve_in_thread() as server, httpx.Client(base_url=server.base_url, headers=HEADERS) as c:
        prompt = "[[fault:529]] reset me"
        assert c.post("/v1/messages", json=body(prompt)).status_code == 529
        assert c.post("/_mock/reset").json() == {"ok": True}
        assert server.record.attempts() == []
        assert c.post("/v1/messages", json=body(prompt)).status_code == 529
        assert c.get("/_mock/stats").json()["requests"] == 1


def test_unknown_paths_get_the_api_error_shape(client: httpx.Client) -> None:
    response = client.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert response.headers["request-id"].startswith("req_mock_")


def test_stats_count_streams_in_flight_and_their_peak() -> None:
    # Streams of 200 deltas 50 ms apart: both are surely open when the stats are read.
    config = MockConfig(chunk_delay_ms=50, reply_tokens=(200, 200), tokens_per_delta=1)
    with serve_in_thread(config) as server:
        url = server.base_url
        with httpx.Client(base_url=url, headers=HEADERS) as stats:
            for _ in range(2):  # the peak of the second round is read after a reset
                with (
                    httpx.Client(base_url=url, headers=HEADERS) as a,
                    httpx.Client(base_url=url, headers=HEADERS) as b,
                ):
                    open_streams = []  # kept: a dropped iterator closes its response
                    for client in (a, b):
                        request = body(unique("open"), stream=True, max_tokens=300)
                        response = client.send(
                            client.build_request("POST", "/v1/messages", json=request), stream=True
                        )
                        open_streams.append(response.iter_raw())
                        next(open_streams[-1])
                    during = stats.get("/_mock/stats").json()
                # Closing the clients cuts both connections; the mock then ends both handlers.
                for _ in range(200):
                    after = stats.get("/_mock/stats").json()
                    if after["in_flight"] == 0:
                        break
                    time.sleep(0.01)
                assert (during["in_flight"], during["peak_in_flight"]) == (2, 2)
                assert (after["in_flight"], after["peak_in_flight"]) == (0, 2)
                stats.post("/_mock/reset")
