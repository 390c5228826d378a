"""`--dedupe`: identical requests are sent once, the others are copies at $0."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import results_of, run_rows

from runner.mock import MockConfig, serve_in_thread


def _rows() -> list[dict[str, str]]:
    # 12 rows, 4 distinct prompts, repeats both near (in flight together) and far apart.
    return [{"id": f"{i:03d}", "prompt": f"prompt {i % 4}"} for i in range(12)]


@pytest.mark.parametrize("id_column", ["id", None], ids=["ids", "no-ids"])
def test_identical_requests_are_sent_once_and_copied(tmp_path: Path, id_column: str) -> None:
    rows = _rows() if id_column else [{"prompt": r["prompt"]} for r in _rows()]
    with serve_in_thread(MockConfig(latency_ms=30)) as mock:
        outcome = run_rows(tmp_path, mock.base_url, rows, dedupe=True, id_column=id_column)
        sent = mock.record.totals()["requests"]
    assert outcome.exit_code == 0
    assert sent == 4  # the mock's own count: one request per distinct prompt
    results = results_of(outcome.run_dir).sort("id")
    assert results["status"].to_list() == ["ok"] * 12
    leaders = results.filter(results["copy_of"].is_null())
    copies = results.filter(results["copy_of"].is_not_null())
    assert leaders.height == 4 and copies.height == 8
    texts = dict(zip(leaders["id"], leaders["output_text"], strict=True))
    for row in copies.iter_rows(named=True):
        assert row["output_text"] == texts[row["copy_of"]]
        assert row["cost_usd"] == 0.0 and row["input_tokens"] is None
    assert outcome.summary["cost_usd"] == pytest.approx(sum(leaders["cost_usd"]), abs=1e-12)


def test_without_dedupe_every_row_is_sent(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig()) as mock:
        outcome = run_rows(tmp_path, mock.base_url, _rows())
        assert mock.record.totals()["requests"] == 12
    assert results_of(outcome.run_dir)["copy_of"].null_count() == 12
