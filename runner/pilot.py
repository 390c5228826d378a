"""Pilot runs (`runner estimate --pilot K`): kept apart from the job, and paid for once.

A pilot is a real run of the job's first K rows, written under `OUTPUT_DIR/<job>.pilot/`
and tagged `"pilot": true` in its run.json, so it is neither one of the job's runs (its
totals, `--resume`) nor lost (the ledger of a reports folder still counts its spend).
The next new run of the job adopts the latest pilot's answers: it starts with the
pilot's parts as its own, so the usual resume triage skips the rows whose request is
unchanged, and the pilot's run.json records `adopted_by`, so no second run adopts them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.job import Job
from runner.parts import write_json_atomic
from runner.store import RunStore

log = logging.getLogger("runner")

PILOT_SUFFIX = ".pilot"


def pilot_job(job: Job) -> Job:
    """The job a pilot runs as: the same settings, under `<name>.pilot`."""
    return replace(job, name=job.name + PILOT_SUFFIX)


def adopt_pilot(job: Job, output_dir: Path, run_dir: Path) -> str | None:
    """Start the new run `run_dir` with the answers of the job's latest unadopted pilot.

    Returns the pilot's run id, or None when there is none to adopt (or the run exists).
    """
    if (run_dir / "run.json").exists():
        return None
    candidate = _latest_pilot(job, output_dir / (job.name + PILOT_SUFFIX))
    if candidate is None:
        return None
    pilot_dir, info = candidate
    source, target = RunStore(pilot_dir), RunStore(run_dir)
    pairs = (
        (source.results_dir, target.results_dir),
        (source.state_dir, target.state_dir),
        (source.attempts_dir, target.attempts_dir),
    )
    for origin, destination in pairs:
        destination.mkdir(parents=True, exist_ok=True)
        for part in sorted(origin.glob("part-*.parquet")):
            shutil.copy2(part, destination / part.name)
    write_json_atomic(pilot_dir / "run.json", {**info, "adopted_by": str(run_dir)})
    ok = (info.get("counts") or {}).get("ok", 0)
    log.info(
        "reusing the %s answers of pilot run %s: rows whose request is unchanged are not "
        "sent again",
        f"{ok:,}",
        pilot_dir.name,
    )
    return pilot_dir.name


def _latest_pilot(job: Job, pilots_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest finished, unadopted pilot of this job with the same request settings."""
    # As run.json holds it (through JSON), so the two compare equal when unchanged.
    request = json.loads(json.dumps(job.to_dict()["request"], default=str))
    found = []
    for run_dir in pilots_dir.glob("*") if pilots_dir.is_dir() else ():
        try:
            info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        same = (info.get("job") or {}).get("request") == request
        if info.get("pilot") and info.get("ended_at") and not info.get("adopted_by") and same:
            found.append((str(info.get("started_at") or ""), run_dir, info))
    if not found:
        return None
    _, run_dir, info = max(found)
    return run_dir, info
