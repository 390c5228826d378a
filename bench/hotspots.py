"""Top costs in a py-spy raw (collapsed stacks) profile: self time and inclusive time per frame.

Usage: py-spy record --gil --format raw -o prof.txt -- python -m runner run ...
       python bench/hotspots.py prof.txt [N] [--under FRAME]

`--gil` samples only the thread holding the GIL, so idle threads do not count as cost.
`--under FRAME` splits the time spent below the innermost frame containing FRAME
(e.g. `stream_message`) by the frame it called, to see where a layer's time goes.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator


def hotspots(path: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per leaf frame (self) and per frame anywhere on a stack."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(path):
        total += count
        own[frames[-1]] += count
        for frame in set(frames):  # a recursive frame counts once per stack
            inclusive[frame] += count
    return total, own, inclusive


def under(path: str, target: str) -> tuple[int, Counter[str]]:
    """Total samples, and the samples below the innermost frame matching `target` by callee."""
    callees: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(path):
        total += count
        hits = [i for i, frame in enumerate(frames) if target in frame]
        if hits:
            i = hits[-1]
            callees[frames[i + 1] if i + 1 < len(frames) else "(self)"] += count
    return total, callees


def _stacks(path: str) -> Iterator[tuple[list[str], int]]:
    with open(path, encoding="utf-8") as profile:
        for line in profile:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            yield stack.split(";"), int(count)


def main() -> None:
    """Print the top N frames by self and inclusive time, or the split under one frame."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("top", nargs="?", type=int, default=20)
    parser.add_argument("--under", default=None, metavar="FRAME")
    args = parser.parse_args()
    if args.under:
        total, callees = under(args.profile, args.under)
        print(f"--- under {args.under}: {sum(callees.values()) / total:.1%} of {total} samples")
        for frame, count in callees.most_common(args.top):
            print(f"{count / total:6.1%}  {frame}")
        return
    total, own, inclusive = hotspots(args.profile)
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title} ({total} samples)")
        for frame, count in counter.most_common(args.top):
            print(f"{count / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
