"""The runs of a job: which exist, which was started last, and in what state each was left.

`--resume` and `runner estimate` take the most recently started run by run.json's
`started_at` (the start of its latest session), never the run id that sorts last: a
run named by hand (`--run-id limit1500`) sorts anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.outcome import state_for


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One run of a job as its run.json and summary.json left it."""

    path: Path
    started_at: str  # ISO 8601, UTC: the start of the run's latest session
    state: str  # as summary.json says (finished, interrupted, stopped, budget), or "crashed"

    @property
    def run_id(self) -> str:
        """The run's id: its directory's name."""
        return self.path.name

    def describe(self) -> str:
        """`ID (STATE, started AT)`, as the messages name a run."""
        return f"{self.run_id} ({self.state}, started {self.started_at})"


def job_runs(job_dir: Path) -> list[RunEntry]:
    """The job's runs, oldest start first (unreadable run.json files are skipped)."""
    entries = []
    for path in job_dir.glob("*") if job_dir.is_dir() else ():
        info = _read_json(path / "run.json")
        if info is None:
            continue
        exit_code = (_read_json(path / "summary.json") or {}).get("exit_code")
        state = "crashed"  # its last session never wrote its end
        if info.get("ended_at") is not None and isinstance(exit_code, int):
            state = state_for(exit_code).value
        entries.append(RunEntry(path, str(info.get("started_at") or ""), state))
    return sorted(entries, key=lambda entry: (entry.started_at, entry.run_id))


def latest_run(job_dir: Path, job_name: str) -> RunEntry:
    """The most recently started run of the job; UsageError if it has none."""
    runs = job_runs(job_dir)
    if not runs:
        raise UsageError(f"nothing to resume: no run of job '{job_name}' in {job_dir}")
    return runs[-1]


def existing_run(job_dir: Path, job_name: str, run_id: str) -> RunEntry:
    """The run `run_id` of the job, which must exist; UsageError naming the runs that do."""
    runs = job_runs(job_dir)
    for entry in runs:
        if entry.run_id == run_id:
            return entry
    known = "; ".join(entry.describe() for entry in reversed(runs)) or "none"
    raise UsageError(
        f"--resume: no run '{run_id}' of job '{job_name}' in {job_dir} (runs, newest first: "
        f"{known})"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
