"""The rate limiter: its arithmetic with a fake clock, then real runs against the mock's limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from helpers import prompts, run_rows, write_jsonl

from runner.buckets import (
    BURST_S,
    LEARN_MAX_CUT,
    RAMP_FLOOR,
    RAMP_S,
    Aimd,
    Bucket,
    RateLearner,
    ramp,
)
from runner.job import Limits
from runner.limiter import CONCURRENCY_DECREASE, START_DOUBLING_S, RateLimiter
from runner.mock import MockConfig, ServedAttempt, serve_in_thread
from runner.models import Request, Usage


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _request(estimate: int = 100, max_tokens: int = 64) -> Request:
    return Request("r1", 1, "claude-sonnet-5-5", b"{}", "fp", estimate, max_tokens)


# --- the pure arithmetic -------------------------------------------------------------


def test_bucket_refills_continuously_up_to_its_burst_capacity() -> None:
    bucket = Bucket("rpm", now=0.0)
    assert bucket.wait_s(1_000_000) == 0.0  # no limit: nothing to wait for
    bucket.set_limit(60, "configured", now=0.0)  # one a second
    assert bucket.capacity == pytest.approx(BURST_S)
    assert bucket.level == pytest.approx(BURST_S * RAMP_FLOOR)
    assert bucket.wait_s(1) == pytest.approx(1 - BURST_S * RAMP_FLOOR)
    bucket.advance(60.0, 1.0)
    assert bucket.level == pytest.approx(BURST_S)  # a minute idle fills only the burst
    bucket.charge(BURST_S + 1)
    assert bucket.level == pytest.approx(-1)
    assert bucket.wait_s(1) == pytest.approx(2.0)
    bucket.advance(61.0, 0.5)  # the second before is refilled at the old scale
    assert bucket.level == pytest.approx(0.0)
    assert bucket.wait_s(1) == pytest.approx(2.0)  # half the rate from now on
    bucket.charge(-10)  # an overestimate refunded may exceed the burst for a while
    assert bucket.level == pytest.approx(10)
    bucket.sync(3)
    assert bucket.level == pytest.approx(3)
    bucket.sync(50)
    assert bucket.level == pytest.approx(3)  # the server never talks us into more


def test_a_need_larger_than_the_bucket_waits_for_a_full_bucket() -> None:
    bucket = Bucket("itpm", now=0.0)
    bucket.set_limit(600, "configured", now=0.0)  # 10 a second, 20 at most
    bucket.charge(bucket.level)
    assert bucket.wait_s(1000) == pytest.approx(2.0)


def test_ramp_rises_from_its_floor_to_the_whole_limit() -> None:
    assert ramp(0) == RAMP_FLOOR
    assert ramp(RAMP_S / 2) == pytest.approx((1 + RAMP_FLOOR) / 2)
    assert ramp(RAMP_S) == ramp(1e9) == 1.0


def test_backoff_cuts_multiplicatively_and_recovers_linearly() -> None:
    backoff = Aimd(_at=0.0)
    backoff.cut(0.0)
    backoff.cut(0.0)
    assert backoff.value == pytest.approx(0.49)
    backoff.advance(5.0)
    assert backoff.value == pytest.approx(0.74)
    backoff.advance(100.0)
    assert backoff.value == 1.0


def test_learner_goes_just_under_the_rate_the_server_accepted() -> None:
    learner = RateLearner()
    for i in range(15):
        learner.success(i * 0.1)
    assert learner.overloaded(1.5, started=0.0) is None  # too little history to measure
    for i in range(15, 100):
        learner.success(i * 0.1)  # the server accepts ten a second
    rate = learner.overloaded(10.0, started=0.0)
    assert rate == pytest.approx(9.0, rel=0.05)
    assert learner.overloaded(11.0, started=0.0) == rate  # one cut per interval at most
    learner.advance(15.0)
    assert learner.rate is not None and learner.rate > rate  # probing upward again
    for i in range(150, 160):
        learner.success(i * 0.1)  # the server stalls: one success a second for 5 s
    assert learner.overloaded(11.0 + 5.0, started=0.0) == pytest.approx(learner._base)
    assert learner._base >= rate * LEARN_MAX_CUT  # one cut takes only so much


# --- the limiter with a fake clock ----------------------------------------------------


@pytest.mark.anyio
async def test_input_charge_is_corrected_by_usage_and_cache_reads_do_not_count() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(concurrency=4, input_tokens_per_minute=60_000), clock)
    before = limiter.buckets["itpm"].level
    ticket = await limiter.admit(_request(estimate=100))
    assert limiter.buckets["itpm"].level == pytest.approx(before - 100)
    usage = Usage(input_tokens=30, cache_creation_input_tokens=20, cache_read_input_tokens=500)
    limiter.settle(ticket, usage)
    limiter.settle(ticket, usage)  # settling twice changes nothing
    assert limiter.buckets["itpm"].level == pytest.approx(before - 50)
    assert limiter.in_flight == 0
    # The next estimate goes through the factor learned from the real count.
    assert limiter.snapshot()["input_token_factor"] == {"claude-sonnet-5-5": 0.5}


@pytest.mark.anyio
async def test_output_is_charged_at_the_mean_seen_and_corrected_with_what_was_generated() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(concurrency=4, output_tokens_per_minute=600_000), clock)
    otpm = limiter.buckets["otpm"]
    ticket = await limiter.admit(_request(max_tokens=64))
    assert ticket.output_tokens == 64  # nothing seen yet: all of max_tokens
    limiter.settle(ticket, Usage(input_tokens=10, output_tokens=10))
    level = otpm.level
    ticket = await limiter.admit(_request(max_tokens=64))
    assert ticket.output_tokens == 37  # (64 prior + 10 seen) / 2
    assert otpm.level == pytest.approx(level - 37)
    limiter.settle(ticket, None)  # nothing reported generated: refunded
    assert otpm.level == pytest.approx(level)


def test_headers_replace_the_configured_limits_and_resync_the_level() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(concurrency=4, requests_per_minute=100_000), clock)
    response = httpx.Response(
        200,
        headers={
            "anthropic-ratelimit-requests-limit": "600",
            "anthropic-ratelimit-requests-remaining": "3",
            "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-reset": "2000-01-01T00:00:00Z",
        },
    )
    limiter.observe(response)
    meters = limiter.snapshot()["meters"]
    assert meters["rpm"] == {**meters["rpm"], "limit": 600.0, "source": "headers", "fill": 3}
    assert meters["otpm"]["limit"] == 8000.0 and meters["otpm"]["source"] == "headers"
    assert meters["itpm"]["limit"] is None  # no header, no limit invented


def test_a_429_pauses_and_lowers_the_concurrency_once_per_pause() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(concurrency=32, requests_per_minute=600), clock)
    limiter.concurrency = 20
    limiter.on_overloaded(429, 2.0)
    limiter.on_overloaded(429, 2.0)  # a request already in flight: the same event
    snap = limiter.snapshot()
    assert snap["concurrency"] == 14
    assert snap["cooldown_s"] == pytest.approx(2.0)
    assert snap["overloaded"] == {"429": 2}
    assert limiter.backoff.value == pytest.approx(0.7)


# --- real runs against the mock's limits ----------------------------------------------


def _drain_input_tokens(base_url: str, tokens: int) -> None:
    """Spend about `tokens` of the mock's input-token bucket with one big prompt."""
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "drain " + "x" * (tokens * 4)}],
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{base_url}/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 200


def _served(record_attempts: list[ServedAttempt]) -> list[ServedAttempt]:
    return sorted(
        (a for a in record_attempts if not a.prompt.startswith("drain")),
        key=lambda a: a.started_at,
    )


def _max_in_window(times: list[float], weights: list[float], window: float) -> float:
    """The most weight that started within any `window` seconds."""
    pairs = list(zip(times, weights, strict=True))
    return max(
        sum(w for t, w in pairs[i:] if t < start + window) for i, (start, _) in enumerate(pairs)
    )


def _sized_rows(n: int, size: int) -> list[dict[str, str]]:
    return [{"id": f"{i:04d}", "prompt": f"row {i} " + "y" * size} for i in range(n)]


def test_told_input_limit_is_never_exceeded_on_a_drained_server(tmp_path: Path) -> None:
    itpm = 60_000  # 1,000 tokens a second; each row is about 100
    # No headers, as behind many proxies: the configured limit is all the runner knows.
    config = MockConfig(itpm=itpm, latency_ms=20, ratelimit_headers=False)
    with serve_in_thread(config) as server:
        _drain_input_tokens(server.base_url, itpm - 1_000)
        outcome = run_rows(
            tmp_path,
            server.base_url,
            _sized_rows(40, 400),
            **{"limits.input_tokens_per_minute": itpm},
        )
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0
    assert [a.status for a in served].count(429) == 0
    starts = [a.started_at for a in served]
    tokens = [float(a.usage.get("input_tokens", 0)) for a in served]
    # Any 2 s: what 2 s refill, plus our burst, plus what the drain left the server.
    assert _max_in_window(starts, tokens, 2.0) <= itpm / 60 * (2 + BURST_S) + 1_000
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    limiter = summary["limiter"]
    assert limiter["meters"]["itpm"]["source"] == "configured"
    assert limiter["waiting_s"]["itpm"] > 0


def test_headers_override_a_configured_limit_that_is_too_high(tmp_path: Path) -> None:
    rpm = 600  # ten a second
    with serve_in_thread(MockConfig(rpm=rpm, latency_ms=10)) as server:
        outcome = run_rows(
            tmp_path, server.base_url, prompts(60), **{"limits.requests_per_minute": 100_000}
        )
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0
    meters = outcome.summary["limiter"]["meters"]
    assert meters["rpm"]["limit"] == rpm and meters["rpm"]["source"] == "headers"
    starts = [a.started_at for a in served]
    # Any second: ten, plus a burst of BURST_S, plus the first few sent before any header.
    allowed = rpm / 60 * (1 + BURST_S) + 4
    assert _max_in_window(starts, [1.0] * len(starts), 1.0) <= allowed
    assert len(starts) > allowed  # so the check above could have failed


def test_without_headers_or_limits_the_rate_is_learned_from_429s(tmp_path: Path) -> None:
    itpm = 60_000  # about ten rows a second
    config = MockConfig(itpm=itpm, latency_ms=20, ratelimit_headers=False)
    with serve_in_thread(config) as server:
        _drain_input_tokens(server.base_url, itpm)
        outcome = run_rows(tmp_path, server.base_url, _sized_rows(80, 400))
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0  # every row made it: no 429 storm exhausted the retries
    refused = [a.status for a in served].count(429)
    assert 0 < refused < len(served) * 0.3
    rpm = outcome.summary["limiter"]["meters"]["rpm"]
    assert rpm["source"] == "learned"
    true_rpm = itpm / served[-1].usage["input_tokens"]
    assert true_rpm / 2 < rpm["limit"] < true_rpm * 2


def test_a_429_pauses_the_whole_pool_for_its_retry_after(tmp_path: Path) -> None:
    rows = prompts(40)
    rows[3]["prompt"] = "[[fault:429:1:retry=2]] " + rows[3]["prompt"]
    with serve_in_thread(MockConfig(latency_ms=20)) as server:
        outcome = run_rows(tmp_path, server.base_url, rows, **{"limits.concurrency": 4})
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0
    refused = next(a for a in served if a.status == 429)
    assert refused.ended_at is not None
    paused = [a for a in served if refused.ended_at + 0.3 < a.started_at < refused.ended_at + 1.7]
    assert paused == []
    later = [a for a in served if a.started_at > refused.ended_at]
    assert len(later) > 20  # most rows were still waiting: the pool, not one worker, paused


def test_rate_limit_headers_behind_a_gateway_prefix_are_read() -> None:
    limiter = RateLimiter(Limits(concurrency=4))
    headers = {
        "llm_provider-anthropic-ratelimit-requests-limit": "120",
        "llm_provider-anthropic-ratelimit-requests-remaining": "100",
        "llm_provider-anthropic-ratelimit-input-tokens-limit": "nan",  # ignored, not adopted
    }
    limiter.observe(httpx.Response(200, headers=headers))
    meters = limiter.snapshot()["meters"]
    assert (meters["rpm"]["limit"], meters["rpm"]["source"]) == (120, "headers")
    assert meters["itpm"]["source"] is None


def test_long_streams_do_not_hold_back_the_start(tmp_path: Path) -> None:
    # Streams of about 4 s: the pool must open all 16 slots as headers arrive, not as
    # streams end (it used to send 1 request, then 2 once it ended, ...).
    with serve_in_thread(MockConfig(chunk_delay_ms=100)) as server:
        outcome = run_rows(tmp_path, server.base_url, prompts(16), **{"request.max_tokens": 160})
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0
    first_end = min(a.ended_at for a in served if a.ended_at is not None)
    assert [a for a in served if a.started_at > first_end] == []


def test_a_529_without_retry_after_does_not_pause_the_pool(tmp_path: Path) -> None:
    rows = prompts(60)
    rows[3]["prompt"] = "[[fault:529]] " + rows[3]["prompt"]
    with serve_in_thread(MockConfig(latency_ms=20)) as server:
        outcome = run_rows(tmp_path, server.base_url, rows, **{"limits.concurrency": 4})
        served = _served(server.record.attempts())
    assert outcome.exit_code == 0
    overloaded = next(a for a in served if a.status == 529)
    # Other rows went on while that row backed off on its own (a 1 s pool pause used to
    # hold every row: nothing started in the second after a 529).
    soon = overloaded.ended_at + 0.9
    assert [a for a in served if overloaded.ended_at < a.started_at < soon] != []


def test_a_huge_retry_after_is_capped_by_max_retry_after(tmp_path: Path) -> None:
    rows = prompts(10)
    rows[2]["prompt"] = "[[fault:429:1:retry=3600]] " + rows[2]["prompt"]
    write_jsonl(tmp_path / "input.jsonl", rows)
    (tmp_path / "job.toml").write_text(
        f'input = "{tmp_path / "input.jsonl"}"\nid_column = "id"\n'
        '[request]\nmodel = "claude-sonnet-5-5"\n[retry]\nmax_retry_after = 1\n'
    )
    with serve_in_thread(MockConfig(latency_ms=20)) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(tmp_path / "job.toml"), "--quiet",
             "--base-url", server.base_url, "--output-dir", str(tmp_path / "reports")],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    # Uncapped, the whole pool would have paused for an hour: the timeout would fire.
    assert proc.returncode == 0, proc.stderr.decode()


def test_the_cap_doubles_on_a_clock_from_the_first_success_until_pushed_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Limits(concurrency=2000), clock)

    async def admit(count: int) -> None:
        with anyio.fail_after(5):  # a request the cap holds back would wait for ever here
            for _ in range(count):
                await limiter.admit(_request())

    anyio.run(admit, 1)  # the first request goes alone: its answer may bring limits
    assert limiter.snapshot()["concurrency"] == 1
    limiter.observe(httpx.Response(200))  # its headers: the endpoint works
    clock.now += 11 * START_DOUBLING_S
    anyio.run(admit, 1999)  # 2 ** 11 >= 2000: every slot is open
    assert limiter.in_flight == 2000 and limiter.snapshot()["concurrency"] == 2000

    pushed = RateLimiter(Limits(concurrency=2000), clock)
    pushed.observe(httpx.Response(200))
    clock.now += 3 * START_DOUBLING_S
    assert pushed.snapshot()["concurrency"] == 8
    pushed.on_overloaded(429, None)  # pushed back: only answers open slots from here
    clock.now += 11 * START_DOUBLING_S
    assert pushed.snapshot()["concurrency"] == int(8 * CONCURRENCY_DECREASE)
