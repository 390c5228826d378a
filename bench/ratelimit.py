"""Benchmark: does `runner` drain a job in the time the rate limits allow, without 429 storms?

For each scenario one meter binds (requests, input tokens or output tokens per minute).
Each run gets a fresh mock API in its own process, whose binding bucket is first drained
by a burst of requests (so the run starts from an organisation in steady state, not from
a full minute of credit), then `runner run` drains the rows (in-process, right after the
drain, the way `runner run` calls it). Printed per
run: the theoretical minimum (the binding meter's total / its limit, less the refill the
server got between the drain and the first attempt), the achieved time (first attempt sent to last
attempt ended), their ratio, and the share of attempts answered 429.

Modes: `told` passes the limits (as --rpm/--itpm/--otpm do; the mock sends headers too),
`headers` tells nothing (the mock's anthropic-ratelimit-* headers are all there is), `429`
tells nothing and the mock sends no headers (429s and retry-after only).

    python bench/ratelimit.py            # about 30 s of theoretical drain per run, 9 runs
    python bench/ratelimit.py --quick    # about 10 s per run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl

from runner.job import resolve_job
from runner.run import RunOptions, execute

MODEL = "claude-sonnet-5-5"
CONCURRENCY = 32
LATENCY_MS = 100
CHUNK_DELAY_MS = 5
# The mock's replies are 5..120 tokens, uniform; cut at max_tokens.
MEAN_OUTPUT_TOKENS = 62.5
DRAIN_MAX_REQUESTS = 5000
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Scenario:
    """Limits under which one meter binds, and the shape of its prompts."""

    name: str
    rpm: int
    itpm: int
    otpm: int
    prompt_bytes: int
    max_tokens: int

    def rows_for(self, seconds: float) -> int:
        """Rows whose binding meter needs about `seconds` at its limit."""
        per_row = {
            "rpm": (1.0, self.rpm),
            "itpm": (self.prompt_bytes / 4 + 3, self.itpm),
            "otpm": (MEAN_OUTPUT_TOKENS, self.otpm),
        }
        amount, limit = per_row[self.name]
        return max(10, round(seconds * limit / 60 / amount))


SCENARIOS = (
    Scenario("rpm", rpm=600, itpm=2_000_000, otpm=400_000, prompt_bytes=40, max_tokens=64),
    Scenario("itpm", rpm=1_200, itpm=150_000, otpm=400_000, prompt_bytes=2_000, max_tokens=64),
    Scenario("otpm", rpm=1_200, itpm=2_000_000, otpm=15_000, prompt_bytes=40, max_tokens=256),
)
MODES = ("told", "headers", "429")


def _prompt(i: int, size: int, tag: str) -> str:
    head = f"{tag} {i}: "
    return head + "lorem ipsum dolor sit amet "[: max(1, size - len(head))] * (size // 27 + 1)


def _write_rows(path: Path, scenario: Scenario, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            prompt = _prompt(i, scenario.prompt_bytes, "row")[: scenario.prompt_bytes]
            out.write(json.dumps({"id": f"{i:06d}", "prompt": prompt}) + "\n")


def _start_mock(scenario: Scenario, headers: bool) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "runner", "mock-server", "--port", "0"]
    cmd += ["--latency-ms", str(LATENCY_MS), "--chunk-delay-ms", str(CHUNK_DELAY_MS)]
    cmd += ["--rpm", str(scenario.rpm), "--itpm", str(scenario.itpm)]
    cmd += ["--otpm", str(scenario.otpm)]
    if not headers:
        cmd.append("--no-ratelimit-headers")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http" not in line:
        proc.kill()
        raise RuntimeError(f"the mock did not start: {line!r}")
    return proc, line.split()[-1]


async def _drain(url: str, scenario: Scenario) -> int:
    """Send the scenario's requests until the first 429: the binding bucket is then empty."""
    sent = 0
    refused = anyio.Event()
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}

    async def one(http: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": MODEL,
            "max_tokens": scenario.max_tokens,
            "messages": [{"role": "user", "content": _prompt(i, scenario.prompt_bytes, "drain")}],
        }
        response = await http.post(f"{url}/v1/messages", json=body, headers=headers)
        if response.status_code == 429:
            refused.set()

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while not refused.is_set() and sent < DRAIN_MAX_REQUESTS:
            sent += 1
            await one(http, sent)

    with anyio.move_on_after(DRAIN_TIMEOUT_S):
        async with httpx.AsyncClient(timeout=30.0) as http, anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker, http)
    return sent


def _run(
    url: str, scenario: Scenario, mode: str, rows: int, workdir: Path, drained_at: float
) -> dict[str, Any]:
    input_path = workdir / f"{scenario.name}-{mode}.jsonl"
    _write_rows(input_path, scenario, rows)
    settings: dict[str, Any] = {
        "input": input_path,
        "id_column": "id",
        "base_url": url,
        "request.model": MODEL,
        "request.max_tokens": scenario.max_tokens,
        "limits.concurrency": CONCURRENCY,
    }
    if mode == "told":
        settings["limits.requests_per_minute"] = scenario.rpm
        settings["limits.input_tokens_per_minute"] = scenario.itpm
        settings["limits.output_tokens_per_minute"] = scenario.otpm
    # In-process, right after the drain, so the server refills little before the run starts.
    options = RunOptions(output_dir=workdir / "reports", run_id="bench", api_key="bench-key")
    run_dir = execute(resolve_job(None, settings), options).run_dir
    results = pl.read_parquet(run_dir / "results" / "*.parquet")
    attempts = pl.read_parquet(run_dir / "attempts" / "*.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    ok = results.filter(pl.col("status") == "ok")
    totals = {
        "rpm": float(ok.height),
        "itpm": float((ok["input_tokens"] + ok["cache_creation_input_tokens"]).sum()),
        "otpm": float(ok["output_tokens"].sum()),
    }
    limits = {"rpm": scenario.rpm, "itpm": scenario.itpm, "otpm": scenario.otpm}
    starts = [t.timestamp() for t in attempts["started_at"]]
    ends = [s + ms / 1000.0 for s, ms in zip(starts, attempts["latency_ms"], strict=True)]
    achieved = max(ends) - min(starts)
    # The server's buckets refilled while `runner` started up: that much is already paid.
    credit_s = max(0.0, min(starts) - drained_at)
    minimum = {name: totals[name] / limits[name] * 60.0 - credit_s for name in totals}
    binding = max(minimum, key=lambda name: minimum[name])
    refused = attempts.filter(pl.col("http_status") == 429).height
    return {
        "scenario": scenario.name,
        "mode": mode,
        "rows": rows,
        "ok": ok.height,
        "binding": binding,
        "theoretical_s": round(minimum[binding], 2),
        "achieved_s": round(achieved, 2),
        "ratio": round(achieved / minimum[binding], 3),
        "attempts": attempts.height,
        "share_429": round(refused / attempts.height, 4),
        "startup_credit_s": round(credit_s, 2),
        "waiting_s": summary.get("limiter", {}).get("waiting_s"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every scenario in every mode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="theoretical drain per run")
    parser.add_argument("--quick", action="store_true", help="about 10 s per run")
    parser.add_argument("--rows", type=int, default=None, help="rows per run (overrides)")
    parser.add_argument("--scenario", choices=[s.name for s in SCENARIOS], action="append")
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    seconds = 10.0 if args.quick else args.seconds
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        for scenario in SCENARIOS:
            if args.scenario and scenario.name not in args.scenario:
                continue
            for mode in args.mode or MODES:
                rows = args.rows or scenario.rows_for(seconds)
                proc, url = _start_mock(scenario, headers=mode != "429")
                try:
                    drained = anyio.run(_drain, url, scenario)
                    started = time.monotonic()
                    row = _run(url, scenario, mode, rows, Path(tmp), time.time())
                    row["drain_requests"] = drained
                    row["wall_s"] = round(time.monotonic() - started, 2)
                finally:
                    proc.terminate()
                    proc.wait(10)
                table.append(row)
                print(_format(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


def _format(row: dict[str, Any]) -> str:
    return (
        f"{row['scenario']:>5} {row['mode']:>7}  binds={row['binding']:<4} "
        f"rows={row['ok']:>4}/{row['rows']:<4} theoretical={row['theoretical_s']:>6.1f}s "
        f"achieved={row['achieved_s']:>6.1f}s ratio={row['ratio']:.3f} "
        f"429={row['share_429'] * 100:5.2f}% ({row['attempts']} attempts)"
    )


if __name__ == "__main__":
    sys.exit(main())
