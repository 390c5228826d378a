"""Top costs in a py-spy raw (collapsed stacks) profile: self time and inclusive time per frame.

Usage: py-spy record --format raw -o prof.txt -- python -m runner run ...
       python bench/hotspots.py prof.txt [N]
"""

from __future__ import annotations

import sys
from collections import Counter


def hotspots(path: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per leaf frame (self) and per frame anywhere on a stack."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8") as profile:
        for line in profile:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):  # a recursive frame counts once per stack
                inclusive[frame] += int(count)
    return total, own, inclusive


def main() -> None:
    """Print the top N frames by self time and by inclusive time."""
    total, own, inclusive = hotspots(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title} ({total} samples)")
        for frame, count in counter.most_common(top):
            print(f"{count / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
