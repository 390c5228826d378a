"""The ledger across runs: its sums equal the runs' own summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import prompts, run_rows

from runner.ledger import build_ledger, format_ledger, is_ledger


def _runs(tmp_path: Path, base_url: str) -> list:
    outcomes = []
    for job, model, count in (("a", "claude-sonnet-5-5", 6), ("b", "claude-haiku-4-5", 4)):
        for run_id in ("r1", "r2"):
            flags = {"request.model": model, "name": job}
            outcomes.append(
                run_rows(tmp_path, base_url, prompts(count, job + run_id), run_id=run_id, **flags)
            )
    return outcomes


def test_the_ledger_sums_equal_the_runs_summaries(tmp_path: Path, mock_api) -> None:
    outcomes = _runs(tmp_path, mock_api.base_url)
    root = tmp_path / "reports"
    assert is_ledger(root) and not is_ledger(outcomes[0].run_dir)
    ledger = build_ledger(root)
    assert ledger["runs"] == 4
    total = sum(o.summary["cost_usd"] for o in outcomes)
    assert ledger["total"]["cost_usd"] == pytest.approx(total, abs=1e-9)
    assert ledger["total"]["rows"] == 20
    for job in ("a", "b"):
        mine = [o for o in outcomes if o.run_dir.parent.name == job]
        line = ledger["by_job"][job]
        assert line["cost_usd"] == pytest.approx(sum(o.summary["cost_usd"] for o in mine))
        assert line["input_tokens"] == sum(o.summary["tokens"]["input_tokens"] for o in mine)
    assert set(ledger["by_model"]) == {"claude-sonnet-5-5", "claude-haiku-4-5"}
    assert sum(v["cost_usd"] for v in ledger["by_day"].values()) == pytest.approx(total)
    assert "claude-haiku-4-5" in format_ledger(ledger)


def test_since_keeps_the_later_runs_and_the_cli_prints_json(tmp_path: Path, mock_api) -> None:
    outcomes = _runs(tmp_path, mock_api.base_url)
    early = outcomes[0].run_dir / "run.json"
    info = json.loads(early.read_text())
    info["first_started_at"] = info["started_at"] = "2026-10-01T00:00:00+00:00"
    early.write_text(json.dumps(info))
    command = [sys.executable, "-m", "runner", "report", str(tmp_path / "reports")]
    done = subprocess.run(
        [*command, "--since", "2026-11-01", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ledger = json.loads(done.stdout)
    assert ledger["runs"] == 3
    expected = sum(o.summary["cost_usd"] for o in outcomes[1:])
    assert ledger["total"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert "2026-10-01" not in ledger["by_day"]
    html = tmp_path / "ledger.html"
    subprocess.run(
        [sys.executable, "-m", "runner", "report", str(tmp_path / "reports"), "--html", str(html)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    page = html.read_text()
    assert 'id="chart-spend-per-day"' in page and 'id="ledger-model"' in page
