"""runner against the official SDK's streaming pattern, on the bundled mock: speed, CPU, memory.

One command (see bench/README.md): `python bench/run.py` (full) or `--quick` (smoke).
Each client runs as its own subprocess, pinned to one core while the mock has the other,
so its CPU time and peak RSS are its own (started through bench/measure.py, so the
figures do not include this process's memory). Runs alternate runner/SDK
and every one is checked against the mock's record: no row lost, tokens exact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
from measure import run_measured

HERE = Path(__file__).resolve().parent
MODEL = "claude-sonnet-5-5"
# Above this share of one core the mock itself may be what limits throughput.
MOCK_BUSY_LIMIT = 0.85


@dataclass(frozen=True)
class Sample:
    """One client run: what it did and what it cost."""

    side: str
    rows: int
    concurrency: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    mock_busy: float
    output_tokens: int = 0
    events: int = 0  # SSE events read, as counted by the floor reader (bench/floor.py)

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.rows / self.wall_s

    @property
    def cpu_per_1k(self) -> float:
        """Client CPU seconds per 1,000 requests."""
        return self.cpu_s * 1000.0 / self.rows


def _pin(core: int | None) -> Any:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


class Mock:
    """The bundled mock API in its own process, on its own core."""

    def __init__(self, core: int | None, options: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "mock-server", "--port", "0", *(options or [])],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_pin(core),
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        if not self.url.startswith("http://"):
            raise SystemExit(f"mock did not start: {self.url!r}")

    def cpu_s(self) -> float:
        """CPU seconds the mock has used so far (/proc/PID/stat utime + stime)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, path: str) -> dict[str, Any]:
        """GET /_mock/stats or POST /_mock/reset."""
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """End the mock process."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


def write_input(path: Path, rows: int) -> None:
    """N JSONL rows with distinct prompts, written in blocks so generating 1M rows is quick."""
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, rows, 10_000):
            out.write(
                "".join(
                    f'{{"id": "r{i:07d}", "prompt": "Write one line about item {i}."}}\n'
                    for i in range(start, min(rows, start + 10_000))
                )
            )


def run_client(
    side: str,
    mock: Mock,
    core: int | None,
    input_path: Path,
    rows: int,
    concurrency: int,
    max_tokens: int,
    work: Path,
) -> Sample:
    """Run one side as a subprocess and check what it got against the mock's record."""
    mock.call("POST", "/_mock/reset")
    out_dir = work / f"{side}-{concurrency}-{time.monotonic_ns()}"
    if side == "runner":
        command = [
            sys.executable,
            "-m",
            "runner",
            "run",
            "--input",
            str(input_path),
            "--base-url",
            mock.url,
            "--model",
            MODEL,
            "--max-tokens",
            str(max_tokens),
            "--concurrency",
            str(concurrency),
            "--quiet",
            "--output-dir",
            str(out_dir),
        ]
    else:
        command = [
            sys.executable,
            str(HERE / _SCRIPTS[side]),
            str(input_path),
            mock.url,
            MODEL,
            str(concurrency),
            str(max_tokens),
        ]
    env = {**os.environ, "ANTHROPIC_API_KEY": "bench-dummy-key"}
    log = work / "client.log"
    mock_before = mock.cpu_s()
    started = time.perf_counter()
    with log.open("w") as sink:
        figures = run_measured(
            command, work / "measured.json", core, stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    wall = time.perf_counter() - started
    mock_busy = (mock.cpu_s() - mock_before) / wall
    output = log.read_text()
    if figures["exit_code"] != 0:
        raise SystemExit(f"{side} exited {figures['exit_code']}:\n{output[-2000:]}")
    got = _runner_totals(out_dir) if side == "runner" else json.loads(output.splitlines()[-1])
    _check(side, got, mock.call("GET", "/_mock/stats"), rows)
    return Sample(
        side,
        rows,
        concurrency,
        wall,
        figures["cpu_s"],
        figures["peak_rss_mb"],
        mock_busy,
        got["output_tokens"],
        got.get("events", 0),
    )


# The other sides: the SDK's own pattern, and the floor (a bare asyncio reader).
_SCRIPTS = {"sdk": "sdk_baseline.py", "floor": "floor.py"}


def _runner_totals(out_dir: Path) -> dict[str, int]:
    results = pl.scan_parquet(out_dir / "*" / "*" / "results" / "*.parquet")
    row = (
        results.select(
            ok=(pl.col("status") == "ok").sum(),
            errors=(pl.col("status") != "ok").sum(),
            ids=pl.col("id").n_unique(),
            input_tokens=pl.col("input_tokens").sum(),
            output_tokens=pl.col("output_tokens").sum(),
        )
        .collect()
        .row(0, named=True)
    )
    return {k: int(v) for k, v in row.items()}


def _check(side: str, got: dict[str, int], served: dict[str, Any], rows: int) -> None:
    """No row lost, none sent twice, tokens exactly as the mock counted them."""
    problems = []
    if got["ok"] != rows or got["errors"] or got.get("ids", rows) != rows:
        problems.append(f"rows ok {got['ok']}, errors {got['errors']}, of {rows}")
    if served["requests"] != rows or served["by_status"] != {"200": rows}:
        problems.append(f"mock served {served['by_status']}")
    for name in ("input_tokens", "output_tokens"):
        if got[name] != served["tokens"][name]:
            problems.append(f"{name}: {got[name]} != mock's {served['tokens'][name]}")
    if problems:
        raise SystemExit(f"{side}: wrong results: " + "; ".join(problems))


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(samples: list[Sample], concurrency: int) -> dict[str, Any]:
    """Medians per side and runner/SDK ratios over the alternating pairs."""
    ours = [s for s in samples if s.side == "runner" and s.concurrency == concurrency]
    sdk = [s for s in samples if s.side == "sdk" and s.concurrency == concurrency]
    pairs = list(zip(ours, sdk, strict=True))
    return {
        "concurrency": concurrency,
        "runner": {k: _spread([getattr(s, k) for s in ours]) for k in _METRICS},
        "sdk": {k: _spread([getattr(s, k) for s in sdk]) for k in _METRICS},
        "ratio": {k: _spread([getattr(a, k) / getattr(b, k) for a, b in pairs]) for k in _METRICS},
        "mock_busy_max": max(s.mock_busy for s in ours + sdk),
    }


_METRICS = ("rps", "cpu_per_1k", "peak_rss_mb")


def print_table(table: list[dict[str, Any]], memory: list[Sample]) -> None:
    """The table a person reads; the JSON file holds the same numbers."""
    print(f"\n{'conc':>5} {'metric':<16} {'runner':>9} {'sdk':>9} {'ratio (min-max)':>22}")
    names = {"rps": "requests/s", "cpu_per_1k": "CPU s/1k req", "peak_rss_mb": "peak RSS MB"}
    for entry in table:
        for key, name in names.items():
            r, s, q = entry["runner"][key], entry["sdk"][key], entry["ratio"][key]
            print(
                f"{entry['concurrency']:>5} {name:<16} {r['median']:>9.2f} {s['median']:>9.2f} "
                f"{q['median']:>7.2f} ({q['min']:.2f}-{q['max']:.2f})"
            )
        print(f"{'':>5} mock busy (max of one core): {entry['mock_busy_max']:.0%}")
    if memory:
        print("\nmemory against input size (runner, small replies):")
        for s in memory:
            print(f"  {s.rows:>9,} rows: peak RSS {s.peak_rss_mb:7.1f} MB, {s.rps:7.1f} req/s")
        print(f"  ratio largest/smallest: {memory[-1].peak_rss_mb / memory[0].peak_rss_mb:.2f}")


def main() -> None:
    """Parse options, run everything, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 min)")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--memory-max-tokens", type=int, default=5)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--json", type=Path, default=None, help="default bench/results/<commit>.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.reps, args.memory_rows = 1000, 1, [2_000, 20_000]
    cores = sorted(os.sched_getaffinity(0))
    mock_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    mock = Mock(mock_core)
    samples: list[Sample] = []
    memory: list[Sample] = []
    try:
        with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
            work = Path(tmp)
            if not args.skip_speed:
                input_path = work / "speed.jsonl"
                write_input(input_path, args.rows)
                for rep in range(args.reps):
                    for concurrency in args.concurrency:
                        # Alternate which side goes first, so drift hits both alike.
                        sides = ("runner", "sdk") if rep % 2 == 0 else ("sdk", "runner")
                        for side in sides:
                            sample = run_client(
                                side,
                                mock,
                                client_core,
                                input_path,
                                args.rows,
                                concurrency,
                                args.max_tokens,
                                work,
                            )
                            samples.append(sample)
                            print(
                                f"rep {rep} {side:>6} c={concurrency:<4} {sample.rps:7.1f} req/s "
                                f"{sample.cpu_per_1k:6.2f} CPU s/1k {sample.peak_rss_mb:6.1f} MB "
                                f"mock busy {sample.mock_busy:.0%}",
                                flush=True,
                            )
            for rows in sorted(args.memory_rows):
                input_path = work / f"memory-{rows}.jsonl"
                write_input(input_path, rows)
                sample = run_client(
                    "runner",
                    mock,
                    client_core,
                    input_path,
                    rows,
                    max(args.concurrency),
                    args.memory_max_tokens,
                    work,
                )
                input_path.unlink()
                memory.append(sample)
                print(f"memory {rows:>9,} rows: {sample.peak_rss_mb:.1f} MB", flush=True)
    finally:
        mock.stop()
    table = [summarize(samples, c) for c in args.concurrency] if samples else []
    print_table(table, memory)
    if any(entry["mock_busy_max"] > MOCK_BUSY_LIMIT for entry in table):
        print(f"warning: the mock used over {MOCK_BUSY_LIMIT:.0%} of its core: it may be the limit")
    report = {
        "commit": commit,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": len(cores),
        "pinned": mock_core is not None,
        "load_average": os.getloadavg(),
        "rows": args.rows,
        "reps": args.reps,
        "table": table,
        "memory": [asdict(s) | {"rps": s.rps} for s in memory],
        "samples": [asdict(s) | {"rps": s.rps, "cpu_per_1k": s.cpu_per_1k} for s in samples],
    }
    path = args.json or HERE / "results" / f"{commit or 'unknown'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
