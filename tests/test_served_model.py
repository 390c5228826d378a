"""A row is priced by the model that answered (message_start's message.model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import attempts_of, prompts, results_of, run_rows

from runner.mock import MockConfig, serve_in_thread
from runner.models import Usage
from runner.pricing import PriceTable


def test_a_substituted_model_is_billed_at_its_own_price(tmp_path: Path) -> None:
    with serve_in_thread(MockConfig(serve_model="claude-haiku-4-5")) as mock:
        outcome = run_rows(
            tmp_path, mock.base_url, prompts(5), **{"request.model": "claude-opus-4-7"}
        )
    assert outcome.exit_code == 0
    results = results_of(outcome.run_dir)
    assert set(results["model"]) == {"claude-opus-4-7"}  # what was asked for is kept
    assert set(results["served_model"]) == {"claude-haiku-4-5"}
    ok_attempts = attempts_of(outcome.run_dir).filter(outcome="ok")
    costs = dict(zip(results["id"], results["cost_usd"], strict=True))
    for attempt in ok_attempts.iter_rows(named=True):
        assert attempt["cost_usd"] == costs[attempt["id"]]  # the attempt too, at Haiku
    table = PriceTable.load()
    for row in results.iter_rows(named=True):
        usage = Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_creation_input_tokens=row["cache_creation_input_tokens"],
            cache_read_input_tokens=row["cache_read_input_tokens"],
        )
        # Haiku 4.5: $1 in / $5 out per MTok, a fifth of Opus 4.7's $5 / $25.
        hand = (row["input_tokens"] * 1.0 + row["output_tokens"] * 5.0) / 1e6
        assert row["cost_usd"] == pytest.approx(hand, abs=1e-12)
        assert row["cost_usd"] == pytest.approx(table.cost("claude-opus-4-7", usage) / 5, abs=1e-12)
