"""Streams shaped like the real API's: runner against the SDK and a floor, per event.

`python bench/streams.py` runs both profiles (see bench/README.md); `--profile 500` or
`--profile 2000` one of them, `--rows N` scales the rows down for a quick look.
Every repetition runs each side once, in a rotating order, against the same mock
(`bench/run.py`'s method: own process, pinned cores, results checked against the
mock's record). The floor (`bench/floor.py`) is a bare asyncio reader of the same
streams, so `µs/event` shows how far each client is from what reading costs at all.
While a client runs, the mock's in-flight count is polled, for the time to full
concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from run import HERE, MOCK_BUSY_LIMIT, Mock, Sample, run_client, write_input

# The sides, in the order of the first repetition; later ones rotate it.
SIDES = ("runner", "sdk", "floor")
POLL_S = 0.1
# "Full" is this share of the concurrency in flight at the mock: once streams end, the
# slots they free are refilled, but a poll can always catch a few between two requests.
FULL_SHARE = 0.95


@dataclass(frozen=True)
class Profile:
    """A stream shape, and the job run against it."""

    rows: int
    concurrency: int
    latency_ms: float  # to the first byte
    chunk_delay_ms: float  # between events
    reply_tokens: tuple[int, int] = (100, 300)
    tokens_per_delta: int = 3

    def mock_options(self) -> list[str]:
        """The mock-server flags that shape its streams like this."""
        low, high = self.reply_tokens
        return [
            "--latency-ms",
            str(self.latency_ms),
            "--chunk-delay-ms",
            str(self.chunk_delay_ms),
            "--reply-tokens",
            str(low),
            str(high),
            "--tokens-per-delta",
            str(self.tokens_per_delta),
        ]


PROFILES = {
    # 0.8 s to the first byte, then 3 tokens every 20 ms: about 70 events in 2 s.
    "500": Profile(rows=3000, concurrency=500, latency_ms=800, chunk_delay_ms=20),
    # 2 s to the first byte and about 10 s an answer (67 events 120 ms apart).
    "2000": Profile(rows=6000, concurrency=2000, latency_ms=2000, chunk_delay_ms=120),
}


class InFlightPoller:
    """Polls the mock's in-flight count in a thread: the time from the first request to full."""

    def __init__(self, mock: Mock, target: int) -> None:
        self.mock, self.target = mock, target
        self.first: float | None = None
        self.full_after_s: float | None = None
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            in_flight = self.mock.call("GET", "/_mock/stats")["in_flight"]
            now = time.perf_counter()
            if in_flight and self.first is None:
                self.first = now
            self.peak = max(self.peak, in_flight)
            full = in_flight >= FULL_SHARE * self.target
            if full and self.full_after_s is None and self.first is not None:
                self.full_after_s = now - self.first


@dataclass(frozen=True)
class StreamSample:
    """One client run on a profile, with the figures per token and per event."""

    sample: Sample
    events: int
    full_after_s: float | None
    peak_in_flight: int

    @property
    def cpu_per_1k_tokens(self) -> float:
        """Client CPU ms per 1,000 output tokens."""
        return self.sample.cpu_s * 1e6 / self.sample.output_tokens

    @property
    def us_per_event(self) -> float:
        """Client CPU µs per SSE event (everything the process did, start-up included)."""
        return self.sample.cpu_s * 1e6 / self.events


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"


def _ratios(samples: list[StreamSample], side: str, metric: str) -> list[float]:
    """`side`/SDK for each repetition (samples come in repetitions of len(SIDES))."""
    per_rep = [samples[i : i + len(SIDES)] for i in range(0, len(samples), len(SIDES))]
    out = []
    for rep in per_rep:
        by_side = {s.sample.side: s for s in rep}
        out.append(_metric(by_side[side], metric) / _metric(by_side["sdk"], metric))
    return out


def _metric(s: StreamSample, metric: str) -> float:
    return getattr(s, metric) if hasattr(s, metric) else getattr(s.sample, metric)


_METRICS = {
    "wall_s": "wall s",
    "cpu_s": "client CPU s",
    "peak_rss_mb": "peak RSS MB",
    "cpu_per_1k_tokens": "CPU ms/1k tokens",
    "us_per_event": "µs/event",
}


def print_profile(
    name: str, samples: list[StreamSample], fixed: dict[str, float]
) -> dict[str, Any]:
    """The table of one profile: medians (min-max) per side, and ratios to the SDK."""
    print(f"\nprofile {name}: {PROFILES[name]}")
    print(f"{'metric':<18}" + "".join(f"{side:>24}" for side in SIDES) + f"{'runner/sdk':>24}")
    table: dict[str, Any] = {}
    for metric, label in _METRICS.items():
        row = {
            side: [_metric(s, metric) for s in samples if s.sample.side == side] for side in SIDES
        }
        ratio = _ratios(samples, "runner", metric)
        table[metric] = row | {"runner/sdk": ratio}
        cells = "".join(f"{_spread(row[side]):>24}" for side in SIDES)
        print(f"{label:<18}{cells}{_spread(ratio):>24}")
    full = [s.full_after_s for s in samples if s.sample.side == "runner"]
    peak = [s.peak_in_flight for s in samples if s.sample.side == "runner"]
    print(f"runner at {FULL_SHARE:.0%} of its concurrency after (s): {full}; peak in flight {peak}")
    print(
        f"peak RSS on {FIXED_ROWS} rows: "
        + ", ".join(f"{side} {mb:.1f} MB" for side, mb in fixed.items())
    )
    busy = max(s.sample.mock_busy for s in samples)
    print(f"mock busy (max of one core): {busy:.0%}")
    if busy > MOCK_BUSY_LIMIT:
        print(f"warning: the mock used over {MOCK_BUSY_LIMIT:.0%} of its core: it may be the limit")
    return table


# Rows of the run that shows each client's fixed memory: imports, and for runner the
# Parquet parts, compaction and summary, whatever the concurrency.
FIXED_ROWS = 10


def run_profile(
    name: str, rows: int | None, reps: int, work: Path
) -> tuple[list[StreamSample], dict[str, float]]:
    """Every repetition of one profile, each side once per repetition, in rotating order.

    Also the peak RSS of runner and the SDK on `FIXED_ROWS` rows of the same streams:
    what each costs before it holds any stream open.
    """
    profile = PROFILES[name]
    rows = rows or profile.rows
    cores = sorted(os.sched_getaffinity(0))
    mock_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    input_path = work / f"streams-{rows}.jsonl"
    write_input(input_path, rows)
    mock = Mock(mock_core, profile.mock_options())
    samples: list[StreamSample] = []
    events = 0
    try:
        for rep in range(reps):
            order = SIDES[rep % len(SIDES) :] + SIDES[: rep % len(SIDES)]
            got: dict[str, tuple[Sample, InFlightPoller]] = {}
            for side in order:
                with InFlightPoller(mock, profile.concurrency) as poller:
                    try:
                        sample = run_client(
                            side,
                            mock,
                            client_core,
                            input_path,
                            rows,
                            profile.concurrency,
                            1024,
                            work,
                        )
                    except SystemExit as failed:  # a row lost: this repetition is not counted
                        print(f"{name} rep {rep} {side}: {failed}", flush=True)
                        break
                got[side] = (sample, poller)
                events = sample.events or events
                print(
                    f"{name} rep {rep} {side:>6}: wall {sample.wall_s:6.1f} s, "
                    f"CPU {sample.cpu_s:6.1f} s, {sample.peak_rss_mb:6.1f} MB, "
                    f"mock busy {sample.mock_busy:.0%}, full after {poller.full_after_s}",
                    flush=True,
                )
            if len(got) < len(SIDES):
                continue
            # Every side reads the same streams; the floor counted their events.
            for side in SIDES:
                sample, poller = got[side]
                samples.append(StreamSample(sample, events, poller.full_after_s, poller.peak))
        fixed_input = work / f"streams-{FIXED_ROWS}.jsonl"
        write_input(fixed_input, FIXED_ROWS)
        fixed = {
            side: run_client(
                side, mock, client_core, fixed_input, FIXED_ROWS, FIXED_ROWS, 1024, work
            ).peak_rss_mb
            for side in ("runner", "sdk")
        }
    finally:
        mock.stop()
    return samples, fixed


def main() -> None:
    """Parse options, run the profiles, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), nargs="+", default=["500", "2000"])
    parser.add_argument("--rows", type=int, default=None, help="default: the profile's")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="runner-streams-") as tmp:
        for name in args.profile:
            samples, fixed = run_profile(name, args.rows, args.reps, Path(tmp))
            if not samples:
                print(f"\nprofile {name}: no repetition had every row ok")
                continue
            results[name] = {
                "profile": asdict(PROFILES[name]) | {"rows": args.rows or PROFILES[name].rows},
                "table": print_profile(name, samples, fixed),
                "fixed_peak_rss_mb": fixed,
                "samples": [
                    asdict(s.sample) | {"events": s.events, "full_after_s": s.full_after_s}
                    for s in samples
                ],
            }
    report = {
        "commit": commit,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "reps": args.reps,
        "profiles": results,
    }
    path = args.json or HERE / "results" / f"streams-{commit or 'unknown'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
