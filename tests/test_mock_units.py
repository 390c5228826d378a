"""The mock's stages alone: replies, encoding, cache, limiter, markers, config, and its CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from runner.mock import MockConfig
from runner.mock.cache import PromptCache
from runner.mock.command import mock_server
from runner.mock.encode import encode_stream
from runner.mock.faults import WireError, parse_markers, pick_fault
from runner.mock.ratelimit import RateLimiter
from runner.mock.replies import generate_reply
from runner.mock.wire import parse_count_tokens_request, parse_messages_request


def request(prompt: str = "hello", **fields: object) -> bytes:
    payload = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": prompt}],
    }
    return json.dumps({**payload, **fields}).encode()


def test_reply_is_a_function_of_the_prompt() -> None:
    a = generate_reply(parse_messages_request(request("one")))
    b = generate_reply(parse_messages_request(request("one")))
    c = generate_reply(parse_messages_request(request("two")))
    assert a == b and a.text != c.text
    assert a.output_tokens == sum(len(chunk) for chunk in a.chunks)


def test_stop_sequence_at_the_very_start_shows_nothing() -> None:
    text = generate_reply(parse_messages_request(request("s"))).text
    reply = generate_reply(parse_messages_request(request("s", stop_sequences=[text[0]])))
    assert reply.text == "" and reply.chunks == ()
    assert reply.stop_reason == "stop_sequence" and reply.output_tokens == 1


def test_encoded_deltas_decode_back_to_the_text() -> None:
    for i in range(30):
        reply = generate_reply(parse_messages_request(request(f"enc {i}")))
        events = encode_stream("msg_1", "m", reply, {"input_tokens": 1, "output_tokens": 0})
        decoded = "".join(
            json.loads(raw.split(b"data: ", 1)[1])["delta"]["text"] for raw in events.deltas
        )
        assert decoded == reply.text


def test_reply_shape_follows_length_range_and_tokens_per_delta() -> None:
    for i in range(20):
        parsed = parse_messages_request(request(f"long {i}", max_tokens=1000))
        reply = generate_reply(parsed, reply_tokens=(100, 300), tokens_per_delta=3)
        assert 100 <= reply.output_tokens <= 300
        assert {len(chunk) for chunk in reply.chunks[:-1]} == {3}
        assert 1 <= len(reply.chunks[-1]) <= 3
        assert sum(map(len, reply.chunks)) == reply.output_tokens


def test_count_tokens_request_rejects_max_tokens() -> None:
    with pytest.raises(WireError, match="max_tokens: Extra inputs are not permitted"):
        parse_count_tokens_request(request())


def test_more_than_four_breakpoints_is_refused() -> None:
    block = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(WireError, match="maximum of 4"):
        parse_messages_request(request([block] * 5))  # type: ignore[arg-type]


def test_cache_peek_does_not_write() -> None:
    block = {"type": "text", "text": "cached " * 20, "cache_control": {"type": "ephemeral"}}
    parsed = parse_messages_request(request("q", system=[block]))
    cache = PromptCache()
    assert cache.peek(parsed).cache_creation_input_tokens > 0
    assert cache.use(parsed).cache_creation_input_tokens > 0
    assert cache.peek(parsed).cache_read_input_tokens > 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_buckets_refill_continuously() -> None:
    clock = FakeClock()
    limiter = RateLimiter(MockConfig(rpm=60, itpm=600), clock)
    assert limiter.admit(500) is None
    refusal = limiter.admit(500)
    assert refusal is not None and refusal.retry_after == 40  # 400 tokens at 10 per second
    clock.now = 40.0
    assert limiter.admit(500) is None
    clock.now = 50.0
    assert limiter.headers()["anthropic-ratelimit-input-tokens-remaining"] == "100"


def test_output_bucket_refuses_only_once_empty() -> None:
    clock = FakeClock()
    limiter = RateLimiter(MockConfig(otpm=60), clock)
    assert limiter.admit(10) is None
    limiter.charge_output(90)
    refusal = limiter.admit(10)
    assert refusal is not None and refusal.retry_after == 31  # from -30 back to 1 token


def test_markers_parse_and_apply_in_order() -> None:
    parsed = parse_messages_request(request("[[fault:429:2:retry=3]] then [[fault:drop]]"))
    faults = [pick_fault(parsed, n, MockConfig()) for n in range(1, 5)]
    assert [f.kind if f else None for f in faults] == ["429", "429", "drop", None]
    assert faults[0] is not None and faults[0].headers() == {"retry-after": "3"}
    with pytest.raises(WireError):
        parse_markers("[[fault:500:sometimes]]")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"faults": {"teapot": 0.1}},
        {"faults": {"500": 0.7, "529": 0.7}},
        {"rpm": 0},
        {"reply_tokens": (300, 100)},
        {"tokens_per_delta": -1},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MockConfig(**kwargs)  # type: ignore[arg-type]


def test_help_explains_every_option_with_its_default() -> None:
    result = CliRunner().invoke(mock_server, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--latency-ms",
        "--chunk-delay-ms",
        "--api-key",
        "--seed",
        "--fault",
        "--stall-s",
        "--rpm",
        "--itpm",
        "--otpm",
        "--no-ratelimit-headers",
        "--reply-tokens",
        "--tokens-per-delta",
    ):
        assert option in result.output
    assert result.output.count("[default:") >= 12


def test_bad_fault_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(mock_server, ["--fault", "teapot=1"])
    assert result.exit_code == 2 and "KIND=P" in result.output


def test_command_prints_its_url_first_and_stops_on_sigterm() -> None:
    code = "from runner.mock.command import mock_server; mock_server()"
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--rpm", "100"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("mock API listening on http://127.0.0.1:")
            url = line.split()[-1]
            headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
            reply = httpx.post(f"{url}/v1/messages", content=request(), headers=headers)
            assert reply.status_code == 200
            assert reply.headers["anthropic-ratelimit-requests-remaining"] == "99"
            assert httpx.get(f"{url}/_mock/stats").json()["requests"] == 1
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
