"""A pilot (`estimate --pilot K`) is tagged, kept out of the job's runs, and paid once."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from helpers import prompts, write_jsonl

from runner.cli import cli
from runner.mock import MockConfig, serve_in_thread

ROWS, PILOT = 20, 5


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_pilot_is_tagged_kept_apart_and_its_answers_reused(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS, prefix="pilot"))
    out = tmp_path / "reports"
    with serve_in_thread(MockConfig()) as mock:
        common = ["--input", str(input_path), "--id-column", "id", "--base-url", mock.base_url]
        common += ["--model", "claude-sonnet-5-5", "--max-tokens", "64"]
        common += ["--output-dir", str(out)]
        _invoke("estimate", *common, "--pilot", str(PILOT))
        (pilot_dir,) = (out / "in.pilot").iterdir()
        info = json.loads((pilot_dir / "run.json").read_text("utf-8"))
        assert info["pilot"] is True and info["counts"]["ok"] == PILOT
        # Not one of the job's runs: nothing to resume, nothing in the job's totals.
        assert not (out / "in").exists()

        _invoke("run", *common, "--run-id", "night")
        sent = [a.prompt for a in mock.record.attempts() if a.stream]
        # The pilot's rows were paid once, by the pilot: the real run sent the rest.
        assert len(sent) == len(set(sent)) == ROWS
        summary = json.loads((out / "in" / "night" / "summary.json").read_text("utf-8"))
        assert summary["rows"]["ok"] == ROWS and summary["this_session"]["rows_skipped"] == PILOT
        adopted = json.loads((pilot_dir / "run.json").read_text("utf-8"))
        assert adopted["adopted_by"].endswith("night")

        # A later new run pays for every row: the pilot's answers went to one run only.
        _invoke("run", *common, "--run-id", "again")
        assert len([a for a in mock.record.attempts() if a.stream]) == 2 * ROWS

    job = json.loads(_invoke("report", str(out / "in"), "--json"))
    assert [run["run_id"] for run in job["runs"]] == ["again", "night"]
    assert job["total"]["rows"]["ok"] == 2 * ROWS
