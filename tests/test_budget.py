"""`--max-cost`: the pool stops before the spend can pass the cap, exits 5, and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import prompts, run_rows, write_jsonl

from runner.budget import Budget
from runner.mock import MockConfig, serve_in_thread
from runner.models import Request
from runner.pricing import PriceTable
from runner.stats import RunStats

ROWS = 60
CAP = 0.006


def test_the_budget_stops_dispatching_and_a_higher_cap_finishes(tmp_path: Path) -> None:
    table = PriceTable.load()
    with serve_in_thread(MockConfig(latency_ms=20)) as mock:
        rows = prompts(ROWS)
        flags = {"limits.concurrency": 4, "limits.max_cost_usd": CAP}
        first = run_rows(tmp_path, mock.base_url, rows, run_id="night", **flags)
        assert first.exit_code == 5
        assert "stopped at the budget" in (first.message or "")
        done = first.summary["rows"]["ok"]
        assert 0 < done < ROWS
        spent = first.summary["budget"]["spent_usd"]
        # One in-flight worst case: a request of this job, at most max_tokens (64) out.
        worst = Budget(CAP, table, RunStats(), 0.0).worst_case(
            Request("x", 1, "claude-sonnet-5-5", b"{}", "f", 40, 64)
        )
        assert spent <= CAP + worst
        assert first.summary["spend_usd"] == spent
        again = run_rows(
            tmp_path, mock.base_url, rows, run_id="night", **{**flags, "limits.max_cost_usd": 1.0}
        )
        assert again.exit_code == 0
        assert again.summary["rows"]["ok"] == ROWS
        # Rows the first session finished were not sent again.
        assert mock.record.totals()["requests"] == ROWS


def test_a_cap_on_an_unpriced_model_is_refused(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    command = [sys.executable, "-m", "runner", "run", "--input", str(rows), "--model", "m-x"]
    command += ["--max-cost", "5", "--base-url", "http://127.0.0.1:9"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "--max-cost needs a price for model m-x" in done.stderr


def test_the_estimate_warns_when_its_maximum_passes_the_cap(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(10)])
    command = [sys.executable, "-m", "runner", "estimate", "--input", str(rows), "--offline"]
    command += ["--model", "claude-sonnet-5-5", "--max-tokens", "100", "--max-cost", "0.001"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    # 10 rows x 100 output tokens x $10 / MTok = $0.01 at most, above the $0.001 cap.
    assert any("passes the --max-cost cap $0.00" in w for w in figures["warnings"])
