"""Benchmark: the ledger of a month of runs (`runner report reports/`) must take under 2 s.

    python bench/ledger.py [--runs 1000] [--rows 200]

Generates RUNS runs of ROWS rows each, spread over 30 days, 5 jobs and 3 models (one
with no price), written through the real Parquet writers, each with its run.json and
the summary.json the accounting module gives it; then times `build_ledger` over the
folder (best of 3) and prints the figure. Then the same with the summaries deleted,
where each run is accounted from its Parquet files instead (the crashed-run path).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.accounting import RunReader, account
from runner.ledger import build_ledger, format_ledger
from runner.parts import (
    ATTEMPT_SCHEMA,
    RESULT_SCHEMA,
    STATE_SCHEMA,
    records_frame,
    write_parquet_atomic,
)

MODELS = (
    ("claude-sonnet-5-5", 2.0, 10.0),
    ("claude-haiku-5-5", 0.10, 0.50),
    ("proxy-x", None, None),
)
JOBS = ("summaries", "labels", "extraction", "translation", "nightly-eval")
START = datetime(2026, 10, 30, 1, 0, tzinfo=UTC)


def generate(root: Path, runs: int, rows: int, seed: int = 7) -> None:
    """Write `runs` runs under root/<job>/<run-id>/."""
    rng = random.Random(seed)
    for n in range(runs):
        job = JOBS[n % len(JOBS)]
        model, price_in, price_out = MODELS[n % len(MODELS)]
        started = START + timedelta(days=n * 30 / runs, minutes=n % 60)
        run_dir = root / job / started.strftime("%Y%m%dT%H%M%SZ") / ""
        run_dir = run_dir.parent / f"{run_dir.name}-{n:04d}"
        results, attempts = [], []
        for line in range(1, rows + 1):
            inp, out = rng.randint(200, 2_000), rng.randint(20, 400)
            cost = None if price_in is None else (inp * price_in + out * price_out) / 1e6
            ok = rng.random() > 0.02
            results.append(
                {
                    "id": str(line),
                    "status": "ok" if ok else "error",
                    "model": model,
                    "output_text": "x" * out if ok else None,
                    "input_tokens": inp if ok else None,
                    "output_tokens": out if ok else None,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cost_usd": cost if ok else None,
                    "attempts": 1,
                    "line": line,
                    "fingerprint": f"f{line}",
                }
            )
            attempts.append(
                {
                    "id": str(line),
                    "attempt": 1,
                    "outcome": "ok" if ok else "http_error",
                    "started_at": int(started.timestamp() * 1e6) + line,
                    "latency_ms": 900.0,
                    "input_tokens": inp,
                    "output_tokens": out if ok else 0,
                    "cost_usd": cost if ok else (None if cost is None else inp * price_in / 1e6),
                }
            )
        for sub in ("results", "state", "attempts"):
            (run_dir / sub).mkdir(parents=True)
        name = "part-000001.parquet"
        write_parquet_atomic(records_frame(results, RESULT_SCHEMA), run_dir / "results" / name)
        write_parquet_atomic(records_frame(results, STATE_SCHEMA), run_dir / "state" / name)
        write_parquet_atomic(records_frame(attempts, ATTEMPT_SCHEMA), run_dir / "attempts" / name)
        info = {
            "run_id": run_dir.name,
            "job": {"name": job},
            "started_at": started.isoformat(),
            "first_started_at": started.isoformat(),
            "ended_at": started.isoformat(),
        }
        (run_dir / "run.json").write_text(json.dumps(info))
        reader = RunReader(run_dir)
        summary = {"exit_code": 0, **account(reader.results(), reader.attempts())}
        (run_dir / "summary.json").write_text(json.dumps(summary))


def best_of(root: Path, times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        began = time.perf_counter()
        build_ledger(root)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-ledger-") as tmp:
        root = Path(tmp) / "reports"
        began = time.perf_counter()
        generate(root, args.runs, args.rows)
        print(
            f"generated {args.runs:,} runs of {args.rows} rows "
            f"in {time.perf_counter() - began:.1f} s"
        )
        seconds = best_of(root)
        print(format_ledger(build_ledger(root)))
        print(f"\nledger of {args.runs:,} runs (from summary.json): {seconds:.3f} s (best of 3)")
        for summary in root.glob("*/*/summary.json"):
            summary.unlink()
        for run_json in root.glob("*/*/run.json"):
            info = json.loads(run_json.read_text())
            info["ended_at"] = None  # as a killed run leaves it
            run_json.write_text(json.dumps(info))
        seconds_raw = best_of(root, 1)
        print(f"ledger of {args.runs:,} runs (no summaries, from Parquet): {seconds_raw:.3f} s")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
