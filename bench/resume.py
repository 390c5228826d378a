"""Benchmark: resuming a finished run must decide "nothing left to send" fast, in flat memory.

    python bench/resume.py [--rows 100000]

Builds a run of N rows (and one of N/100 as the baseline) with every row ok,
through the real store but with no session ever ending (as after a `kill -9`
right after the last row), then times `runner run --run-id ...` on it twice as
a subprocess and reads each one's peak RSS:

- "after a crash": no session saw the whole input, so every row is read,
  rendered and checked against the results;
- "finished": the first resume ended cleanly and recorded the run as settled,
  so the second decides from the results alone.

Nothing is sent: the base URL points at a closed port, so a row that was not
recognised as done would show up as an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from measure import run_measured

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
        {"input": input_path, "id_column": "id", "request.model": "claude-sonnet-5-5"},
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
        "--model", "claude-sonnet-5-5", "--base-url", "http://127.0.0.1:9",
        "--output-dir", str(out), "--run-id", "done", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, ANTHROPIC_API_KEY="bench-key")
    started = time.perf_counter()
    log = out / "resume.log"
    with log.open("w") as sink:
        figures = run_measured(cmd, out / "measured.json", stdout=sink, stderr=sink, env=env)
    elapsed = time.perf_counter() - started
    if figures["exit_code"] != 0:
        raise SystemExit(f"resume failed: {log.read_text()}")
    return elapsed, figures["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = (args.rows // 100, args.rows)
        figures: dict[tuple[str, int], tuple[float, float]] = {}
        for rows in sizes:
            input_path, out = build_finished_run(root, rows)
            for case in ("after a crash", "finished"):
                figures[case, rows] = time_resume(input_path, out)
        print(f"{'resume':<14} {'rows':>9} {'wall s':>7} {'peak RSS MB':>12}")
        for (case, rows), (wall, rss) in figures.items():
            print(f"{case:<14} {rows:>9,} {wall:>7.2f} {rss:>12.1f}")
        for case in ("after a crash", "finished"):
            small, large = figures[case, sizes[0]], figures[case, sizes[1]]
            print(
                f"{case}: {sizes[1]:,} / {sizes[0]:,} rows: wall {large[0] / small[0]:.2f}x, "
                f"peak RSS {large[1] / small[1]:.2f}x"
            )


if __name__ == "__main__":
    main()
