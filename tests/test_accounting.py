"""One account for every total: from parts and journal, lazily, the same as the live count."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from helpers import prompts, run_rows

from runner.accounting import RunReader, account
from runner.models import Attempt, Outcome, RowResult, Status, Usage
from runner.report import build_report, format_report
from runner.store import RunStore


def _row(i: int) -> tuple[RowResult, Attempt]:
    usage = Usage(input_tokens=10 + i, output_tokens=5)
    attempt = Attempt(f"r{i}", 1, 1_700_000_000.0 + i, Outcome.OK, 12.0, "fp", usage=usage)
    result = RowResult(
        f"r{i}", i + 1, Status.OK, "claude-sonnet-5-5", f"fp{i}", "text", "end_turn", usage, 0.001
    )
    return result, attempt


def _open_run(run_dir: Path, rows: range) -> RunStore:
    """A live run's store (locked, open) that has recorded `rows`."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(f'{{"run_id": "{run_dir.name}"}}')
    store = RunStore(run_dir)
    store.open()
    for i in rows:
        result, attempt = _row(i)
        store.record(result, [attempt])
    return store


def test_a_crashed_run_counts_the_rows_only_in_its_journal(tmp_path: Path) -> None:
    run_dir = tmp_path / "reports" / "job" / "run"
    store = _open_run(run_dir, range(3))
    store.flush()  # three rows reach a part
    for i in range(3, 7):
        result, attempt = _row(i)
        store.record(result, [attempt])
    # No close: the process "died" here, four rows are only in the journal.
    report = build_report(run_dir)
    assert report["rows"]["ok"] == 7
    assert report["attempts"] == 7
    assert report["tokens"]["input_tokens"] == sum(10 + i for i in range(7))
    assert report["cost_usd"] == 0.007
    assert "7 ok" in format_report(report)
    store.close()


def test_the_account_never_reads_the_output_text(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(5))
    results = RunReader(outcome.run_dir).results()
    assert "output_text" not in results.collect_schema().names()
    reader = RunReader(outcome.run_dir)
    assert account(reader.results(), reader.attempts())["rows"]["ok"] == 5


def test_the_live_totals_equal_the_account_on_disk(tmp_path: Path, mock_api) -> None:
    outcome = run_rows(tmp_path, mock_api.base_url, prompts(40))
    live = outcome.stats.totals.figures()
    for key in ("tokens", "cost_usd", "priced_rows", "unpriced_rows", "unpriced_models"):
        assert live[key] == outcome.summary[key], key


def test_a_run_written_before_served_model_existed_is_still_read(tmp_path: Path) -> None:
    run_dir = tmp_path / "reports" / "job" / "old"
    _open_run(run_dir, range(3)).close()
    # Rewrite the part as an older version wrote it: no served_model column.
    part = next((run_dir / "results").glob("part-*.parquet"))
    pl.read_parquet(part).drop("served_model").write_parquet(part)
    assert RunStore(run_dir).read_results()["id"].to_list() == ["r0", "r1", "r2"]
    assert build_report(run_dir)["rows"]["ok"] == 3
