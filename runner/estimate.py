"""What a job will cost and how long it will take, before any spend.

Input tokens: every rendered request is counted by the free count_tokens endpoint
(https://docs.claude.com/en/docs/build-with-claude/token-counting), which gives the
total a message reports across input, cache writes and cache reads; `offline` uses
the renderer's characters-per-token estimate instead. Output tokens: at most
`max_tokens` a row; the expected mean comes from a pilot run of the first K rows, or
else from the latest earlier run of the same job. Prompt caching of the system prompt
(https://docs.claude.com/en/docs/build-with-claude/prompt-caching): a cache entry is
only usable once the first response has begun, so each of the first `concurrency`
requests in flight may write it; every later row reads it. The bounds: `min` has one
write and no output, `max` has every row writing the cache and using all of
`max_tokens`. Failed attempts (retries) are not in any of them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import polars as pl
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from runner.accounting import RunReader
from runner.apikey import check_endpoint
from runner.client import count_tokens
from runner.errors import ApiError, RejectedError, RetryableError, UsageError
from runner.inputs import InputReader
from runner.job import Job
from runner.lifecycle import check_model, stale_prices_warning
from runner.models import InputRow, Request, Status, Usage
from runner.pilot import pilot_job
from runner.pricing import PriceTable, describe
from runner.provider import credentials_missing, job_headers
from runner.render import CHARS_PER_TOKEN, Renderer
from runner.report import read_run_json
from runner.run import RunOptions, execute, open_input
from runner.runs import job_runs
from runner.transport import Bounds, new_http_client

log = logging.getLogger("runner")

# The 3.5 characters-a-token rule holds within about 30% for English prose; code,
# numbers and non-Latin scripts can be off by more (measure with the endpoint).
OFFLINE_ERROR = 0.30
# The fields count_tokens accepts; max_tokens, stream and sampling settings are refused.
COUNT_FIELDS = ("model", "system", "messages", "tools", "tool_choice", "thinking")
COUNT_ATTEMPTS = 5
LISTED_INVALID = 100
# run.json keeps the whole table; an estimate names only its source.
_TABLE_DETAIL = ("models", "fees", "inference_geo")


@dataclass(frozen=True, slots=True)
class EstimateOptions:
    """How to estimate, beyond the job itself."""

    offline: bool = False
    pilot: int | None = None
    limit: int | None = None
    output_dir: Path = Path("reports")
    api_key: str | None = None
    count_concurrency: int = 8
    allow_retired: bool = False


@dataclass(slots=True)
class _Counted:
    """Totals of the counting pass over the input."""

    rows: int = 0
    input_tokens: int = 0
    invalid: int = 0
    listed: list[str] = field(default_factory=list)
    system_tokens: int = 0
    failure: ApiError | None = None

    def reject(self, where: str) -> None:
        self.invalid += 1
        if len(self.listed) < LISTED_INVALID:
            self.listed.append(where)


def estimate(job: Job, options: EstimateOptions) -> dict[str, Any]:
    """Rows, tokens, cost (standard and batch) and wall time the job is expected to take."""
    api_key = options.api_key or os.environ.get("ANTHROPIC_API_KEY")
    if credentials_missing(api_key) and (not options.offline or options.pilot):
        raise UsageError("no API key: set ANTHROPIC_API_KEY, or use --offline without --pilot")
    for secret in filter(None, (api_key, os.environ.get("ANTHROPIC_AUTH_TOKEN"))):
        check_endpoint(secret, job.base_url, job.allow_insecure_http)
    renderer, reader = open_input(job)
    prices = PriceTable.load(job.prices, job.price_overrides or None)
    warnings = [
        w
        for w in (
            check_model(prices, str(job.request.model), allow_retired=options.allow_retired),
            stale_prices_warning(prices.builtin_as_of),
        )
        if w
    ]
    pilot = None
    if options.pilot:
        outcome = execute(
            pilot_job(job),
            RunOptions(
                output_dir=options.output_dir,
                limit=options.pilot,
                pilot=True,
                api_key=api_key,
                argv=("estimate", "--pilot", str(options.pilot)),
                allow_retired=options.allow_retired,
            ),
        )
        pilot = outcome.run_dir
    learned = _learn(pilot, "pilot") if pilot else _earlier_run(job, options.output_dir)
    counted = anyio.run(_count_all, job, renderer, reader, options, api_key or "")
    if counted.failure is not None:
        raise counted.failure
    figures = _figures(job, options, prices, counted, learned)
    cap, high = job.limits.max_cost_usd, figures["cost_usd"]["max"]
    if cap is not None and high is not None and high > cap:
        warnings.append(
            f"the maximum cost ${high:,.4f} passes the --max-cost cap ${cap:,.2f}: "
            "the run may stop at the cap (exit 5) before every row is sent"
        )
    return {**figures, "warnings": warnings}


def _learn(run_dir: Path, source: str) -> dict[str, Any] | None:
    """Mean output tokens and latency of a run's ok rows (None if it has none)."""
    # The journal too: a run killed before its first part still taught something.
    ok = (
        RunReader(run_dir)
        .results(("status", "output_tokens", "latency_ms", "cost_usd"))
        .filter(pl.col("status") == Status.OK.value)
        .collect()
    )
    if ok.height == 0:
        return None
    return {
        "source": source,
        "run_dir": str(run_dir),
        "rows": ok.height,
        "mean_output_tokens": float(cast(float, ok["output_tokens"].mean())),
        "mean_latency_ms": float(cast(float, ok["latency_ms"].mean())),
        "cost_usd": round(float(ok["cost_usd"].sum() or 0.0), 10),
    }


def _earlier_run(job: Job, output_dir: Path) -> dict[str, Any] | None:
    """What the latest earlier run of this job with the same model learned."""
    for entry in reversed(job_runs(output_dir / job.name)):  # the latest started first
        run_dir = entry.path
        request = (read_run_json(run_dir).get("job") or {}).get("request") or {}
        if request.get("model") == job.request.model:
            learned = _learn(run_dir, "earlier run")
            if learned is not None:
                return learned
    return None


async def _count_all(
    job: Job, renderer: Renderer, reader: InputReader, options: EstimateOptions, api_key: str
) -> _Counted:
    """Stream the input, render each row and count its input tokens."""
    counted = _Counted()
    cached = bool(job.request.cache_system and job.request.system)
    if options.offline:
        if cached:
            counted.system_tokens = int(len(job.request.system or "") / CHARS_PER_TOKEN)
        for item in _requests(reader, renderer, options.limit, counted):
            counted.rows += 1
            counted.input_tokens += item.estimated_input_tokens
        return counted
    url = httpx.URL(f"{job.base_url}/v1/messages/count_tokens")
    headers = job_headers(job.request, api_key)
    limiter = anyio.CapacityLimiter(options.count_concurrency)
    async with new_http_client(options.count_concurrency, Bounds.of(job)) as http:

        async def count(body: dict[str, Any]) -> int:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(COUNT_ATTEMPTS),
                wait=_wait,
                retry=retry_if_exception_type(RetryableError),
                sleep=anyio.sleep,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await count_tokens(http, url, headers, body)
            raise AssertionError("unreachable: tenacity either returns or reraises")

        async def one(request: Request, token: object, scope: anyio.CancelScope) -> None:
            try:
                # Await first: `counted.input_tokens += await ...` would read the total
                # before the await and lose what other tasks added meanwhile.
                tokens = await count(_count_body(request))
                counted.input_tokens += tokens
                counted.rows += 1
            except RejectedError as exc:
                # The run would get the same refusal: the row will end as an error.
                counted.reject(f"{reader.name}:{request.line}: refused by count_tokens: {exc}")
            except ApiError as exc:
                counted.failure = counted.failure or exc
                scope.cancel()
            finally:
                limiter.release_on_behalf_of(token)

        if cached:
            counted.system_tokens = await _system_tokens(count, renderer)
        async with anyio.create_task_group() as tasks:
            for item in _requests(reader, renderer, options.limit, counted):
                token = object()
                await limiter.acquire_on_behalf_of(token)
                tasks.start_soon(one, item, token, tasks.cancel_scope)
    return counted


def _requests(
    reader: InputReader, renderer: Renderer, limit: int | None, counted: _Counted
) -> Iterator[Request]:
    """The rows' requests in input order; invalid rows are listed as the run logs them."""
    for row in itertools.islice(reader, limit):
        item = renderer.render(row) if isinstance(row, InputRow) else row
        if isinstance(item, Request):
            yield item
        else:
            counted.reject(f"{reader.name}:{item.line}: {item.reason}")


def _count_body(request: Request) -> dict[str, Any]:
    body = json.loads(request.body)
    return {name: body[name] for name in COUNT_FIELDS if name in body}


async def _system_tokens(count: Any, renderer: Renderer) -> int:
    """Tokens of the cached system prompt: a one-word prompt counted with and without it."""
    probe = renderer.render(InputRow("probe", 0, dict.fromkeys(renderer.columns, "x")))
    assert isinstance(probe, Request), "a template filled with 'x' always renders"
    with_system = _count_body(probe)
    without = {k: v for k, v in with_system.items() if k != "system"}
    return max(0, await count(with_system) - await count(without))


def _wait(state: Any) -> float:
    """The server's retry-after if it gave one, else 0.5 s doubling, with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    after = exc.facts.retry_after_s if isinstance(exc, ApiError) else None
    base = after if after is not None else 0.5 * 2 ** (state.attempt_number - 1)
    return min(base, 60.0) * (1 + 0.1 * random.random())


def _figures(
    job: Job,
    options: EstimateOptions,
    prices: PriceTable,
    counted: _Counted,
    learned: dict[str, Any] | None,
) -> dict[str, Any]:
    n, total_in, system = counted.rows, counted.input_tokens, counted.system_tokens
    max_tokens = job.request.max_tokens
    error = OFFLINE_ERROR if options.offline else 0.0
    per_row = None if learned is None else min(learned["mean_output_tokens"], max_tokens)
    expected_out = None if per_row is None else round(per_row * n)
    writes = min(job.limits.concurrency, n)

    def usage(input_scale: float, cache_writes: int, output: int) -> Usage:
        return Usage(
            input_tokens=max(0, round(total_in * input_scale) - system * n),
            output_tokens=output,
            cache_creation_input_tokens=system * cache_writes,
            cache_read_input_tokens=system * (n - cache_writes),
        )

    model = str(job.request.model)
    likely = usage(1.0, writes, expected_out or 0)
    cases = {
        "min": usage(1 - error, min(1, n), 0),
        "expected": likely if expected_out is not None else None,
        "max": usage(1 + error, n, n * max_tokens),
    }

    def priced(price: Any) -> dict[str, float | None]:
        return {k: (None if u is None else price(model, u)) for k, u in cases.items()}

    # Only uncached input counts against ITPM for current models (cache reads do not):
    # https://docs.claude.com/en/api/rate-limits
    itpm_tokens = likely.input_tokens + likely.cache_creation_input_tokens
    return {
        "job": job.name,
        "input": str(job.input),
        "model": model,
        "max_tokens": max_tokens,
        "rows": {"to_send": n, "invalid": counted.invalid},
        "invalid": counted.listed,
        "input_tokens": {
            "total": total_in,
            "method": "offline" if options.offline else "count_tokens",
            "expected_error": error,
            "cached_system_tokens": system,
        },
        "output_tokens": {
            "expected": expected_out,
            "max": n * max_tokens,
            "expected_per_row": None if per_row is None else round(per_row, 3),
            "learned_from": learned,
        },
        "mode": str(job.mode),
        "cost_usd": priced(prices.cost),
        "batch_cost_usd": priced(prices.batch_cost),
        "prices": {
            key: value for key, value in prices.to_dict().items() if key not in _TABLE_DETAIL
        },
        "wall_time": _wall_time(job, n, itpm_tokens, expected_out, learned),
    }


def _wall_time(
    job: Job,
    rows: int,
    input_tokens: int,
    output_tokens: int | None,
    learned: dict[str, Any] | None,
) -> dict[str, Any]:
    """Seconds each limit needs for the whole job; the largest one binds."""
    limits = job.limits
    meters: dict[str, float] = {}
    for name, per_minute, amount in (
        ("requests_per_minute", limits.requests_per_minute, rows),
        ("input_tokens_per_minute", limits.input_tokens_per_minute, input_tokens),
        ("output_tokens_per_minute", limits.output_tokens_per_minute, output_tokens),
    ):
        if per_minute and amount is not None:
            meters[name] = round(amount / per_minute * 60.0, 3)
    if learned is not None:
        # Little's law: `concurrency` rows in flight, each taking the mean latency.
        seconds = rows * learned["mean_latency_ms"] / 1000.0 / limits.concurrency
        meters["concurrency"] = round(seconds, 3)
    binding = max(meters, key=meters.__getitem__) if meters else None
    return {
        "expected_s": meters[binding] if binding else None,
        "binding": binding,
        "meters": meters,
    }


def format_estimate(figures: dict[str, Any]) -> str:
    """The estimate for a terminal."""
    rows, inp, out = figures["rows"], figures["input_tokens"], figures["output_tokens"]
    lines = [
        f"job {figures['job']}: {figures['input']} -> {figures['model']} "
        f"(max_tokens {figures['max_tokens']})",
        f"rows: {rows['to_send']:,} to send, {rows['invalid']:,} invalid",
    ]
    lines += [f"  {where}" for where in figures["invalid"]]
    if rows["invalid"] > len(figures["invalid"]):
        lines.append(f"  ... and {rows['invalid'] - len(figures['invalid']):,} more")
    how = (
        "counted by count_tokens"
        if inp["method"] == "count_tokens"
        else f"estimated offline, expect ±{inp['expected_error']:.0%}"
    )
    lines.append(f"input tokens: {inp['total']:,} ({how})")
    if inp["cached_system_tokens"]:
        lines.append(
            f"  of which {inp['cached_system_tokens']:,} a row is the cached system prompt"
        )
    learned = out["learned_from"]
    expected = "unknown (use --pilot K)" if out["expected"] is None else f"{out['expected']:,}"
    source = f" (from the {learned['source']} {learned['run_dir']})" if learned else ""
    lines.append(f"output tokens: expected {expected}{source}, max {out['max']:,}")
    # A missing figure means no price when even the maximum has none, else an unknown output.
    unknown = "n/a (no price for the model)" if figures["cost_usd"]["max"] is None else "unknown"
    batch = figures.get("mode") == "batch"
    costs = [("cost", "cost_usd"), ("batch cost", "batch_cost_usd")]
    if batch:
        costs = [("cost (batch mode)", "batch_cost_usd"), ("streamed it would cost", "cost_usd")]
    for label, key in costs:
        c = figures[key]
        lines.append(
            f"{label}: expected {_usd(c['expected'], unknown)}, min {_usd(c['min'], unknown)}, "
            f"max {_usd(c['max'], unknown)}"
        )
    if batch:
        full, half = figures["cost_usd"], figures["batch_cost_usd"]
        saved = {
            k: None if full[k] is None or half[k] is None else full[k] - half[k]
            for k in ("expected", "min", "max")
        }
        lines.append(
            f"batch saves: expected {_usd(saved['expected'], unknown)}, "
            f"min {_usd(saved['min'], unknown)}, max {_usd(saved['max'], unknown)}"
        )
    wall = figures["wall_time"]
    if batch:
        # https://docs.anthropic.com/en/docs/build-with-claude/batch-processing
        lines.append("wall time: up to 24 hours (a batch not done by then expires)")
    elif wall["binding"] is None:
        lines.append("wall time: unknown (no rate limits set and no latency measured)")
    else:
        lines.append(f"wall time: {wall['expected_s']:,.1f}s, bound by {wall['binding']}")
        lines += [f"  {name}: {seconds:,.1f}s" for name, seconds in wall["meters"].items()]
    lines += describe(figures["prices"])
    lines.append("(retries are not included: failed attempts cost extra)")
    lines += [f"warning: {warning}" for warning in figures.get("warnings", [])]
    return "\n".join(lines)


def _usd(value: float | None, missing: str) -> str:
    return missing if value is None else f"${value:,.4f}"
