"""Benchmark: resuming a finished run must decide "nothing left to send" fast, in flat memory.

    python bench/resume.py [--rows 100000]

Builds a finished run of N rows (and one of N/100 as the baseline) through the
real store, then times `runner run --run-id ...` on it as a subprocess and reads
its peak RSS. Nothing is sent: the base URL points at a closed port, so a row
that was not recognised as done would show up as an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.inputs import InputReader
from runner.job import resolve_job
from runner.models import RowResult, Status, Usage
from runner.render import Renderer
from runner.store import open_store


def build_finished_run(root: Path, rows: int) -> tuple[Path, Path]:
    """An input file and a completed run of it, written through RunStore."""
    input_path = root / f"in{rows}.jsonl"
    with input_path.open("w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"{i:07d}", "prompt": f"resume bench row {i}"}) + "\n")
    job = resolve_job(
        None,
        {"input": input_path, "id_column": "id", "request.model": "claude-sonnet-4-5"},
    )
    renderer = Renderer(job.request)
    run_dir = root / "out" / input_path.stem / "done"
    run_dir.mkdir(parents=True)
    with open_store(run_dir) as store:
        for row in InputReader(input_path, id_column="id", columns_needed=renderer.columns):
            request = renderer.render(row)
            store.record(
                RowResult(
                    id=request.row_id,
                    line=request.line,
                    status=Status.OK,
                    model=request.model,
                    fingerprint=request.fingerprint,
                    output_text="a short reply",
                    usage=Usage(input_tokens=12, output_tokens=4),
                    attempts=0,
                ),
                [],
            )
            if store.flush_due():
                store.flush()
        store.compact()
    return input_path, root / "out"


def time_resume(input_path: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `runner run` on the finished run."""
    cmd = [
        sys.executable, "-m", "runner", "run", "--input", str(input_path), "--id-column", "id",
        "--model", "claude-sonnet-4-5", "--base-url", "http://127.0.0.1:9",
        "--output-dir", str(out), "--run-id", "done", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, ANTHROPIC_API_KEY="bench-key")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 reaps the child and gives its own resource usage (peak RSS in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"resume failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures = {}
        for rows in (args.rows // 100, args.rows):
            input_path, out = build_finished_run(root, rows)
            figures[rows] = time_resume(input_path, out)
        small, large = figures[args.rows // 100], figures[args.rows]
        print(f"{'rows':>9} {'resume wall s':>14} {'peak RSS MB':>12}")
        for rows, (wall, rss) in figures.items():
            print(f"{rows:>9,} {wall:>14.2f} {rss:>12.1f}")
        print(
            f"ratio {args.rows:,} / {args.rows // 100:,}: wall {large[0] / small[0]:.2f}x, "
            f"peak RSS {large[1] / small[1]:.2f}x"
        )


if __name__ == "__main__":
    main()
