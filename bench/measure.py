"""Run one command and write its own CPU time and peak RSS as JSON.

    python bench/measure.py OUT.json [--core N] -- COMMAND...

or, from another benchmark, `run_measured(command, out_json, core)`.

Why a separate process: `os.wait4` reports a child's peak RSS, but Linux counts in
it the memory of the process that forked it (the child holds the parent's pages
until it execs, and exec keeps their high-water mark). A benchmark that has
imported polars or built a large input would add its own size to every figure, so
measured commands are started from this small process instead. Pinning is done
here too, so the command inherits it from a process that never grew.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_measured(
    command: list[str], out_json: Path, core: int | None = None, **popen: Any
) -> dict[str, Any]:
    """Run `command` through this launcher: exit code, CPU seconds and peak RSS in MB."""
    pin = ["--core", str(core)] if core is not None else []
    subprocess.run([sys.executable, __file__, str(out_json), *pin, "--", *command], **popen)
    return json.loads(out_json.read_text())


def main() -> None:
    out, *rest = sys.argv[1:]
    core = None
    if rest[:1] == ["--core"]:
        core, rest = int(rest[1]), rest[2:]
    if rest[:1] != ["--"] or len(rest) < 2:
        raise SystemExit(__doc__)
    if core is not None:
        os.sched_setaffinity(0, {core})
    proc = subprocess.Popen(rest[1:])
    _, status, usage = os.wait4(proc.pid, 0)
    figures = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # KiB on Linux
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(figures, fh)


if __name__ == "__main__":
    main()
