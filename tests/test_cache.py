"""`--cache DIR`: a later run of the same requests reuses the answers at $0, counted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import prompts, results_of, run_rows

from runner.mock import MockConfig, serve_in_thread


def test_a_second_run_reuses_every_answer_and_says_what_it_saved(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    rows = prompts(8)
    with serve_in_thread(MockConfig()) as mock:
        first = run_rows(tmp_path, mock.base_url, rows, run_id="one", cache=cache)
        assert mock.record.totals()["requests"] == 8
        # Two more rows: only they are sent; the eight known requests come from the cache.
        second = run_rows(tmp_path, mock.base_url, prompts(10), run_id="two", cache=cache)
        assert mock.record.totals()["requests"] == 10
    assert first.summary["cache"] == {
        "reused": 0,
        "saved_usd": 0.0,
        "stored": 8,
    }
    assert second.summary["cache"]["reused"] == 8 and second.summary["cache"]["stored"] == 2
    assert second.summary["cache"]["saved_usd"] == pytest.approx(first.summary["cost_usd"])
    one, two = results_of(first.run_dir).sort("id"), results_of(second.run_dir).sort("id")
    reused = two.filter(two["copy_of"].is_not_null())
    assert reused["id"].to_list() == one["id"].to_list()
    assert reused["output_text"].to_list() == one["output_text"].to_list()
    assert set(reused["cost_usd"]) == {0.0}
    assert all(c.startswith("cache:") for c in reused["copy_of"])


def test_prune_drops_unused_answers_and_keeps_a_bound(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve_in_thread(MockConfig()) as mock:
        run_rows(tmp_path, mock.base_url, prompts(6), cache=cache)
    entries = sorted(cache.glob("??/*.json"))
    old = time.time() - 40 * 86_400
    for path in entries[:2]:
        os.utime(path, (old, old))
    command = [sys.executable, "-m", "runner", "cache", "prune", str(cache)]
    done = subprocess.run(
        [*command, "--older-than", "30d"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "dropped 2 answers, kept 4" in done.stdout
    done = subprocess.run(
        [*command, "--keep", "1"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "dropped 3 answers, kept 1" in done.stdout
    bad = subprocess.run([*command, "--older-than", "soon"], capture_output=True, text=True)
    assert bad.returncode == 2 and "30d" in bad.stderr
