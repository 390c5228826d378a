"""Which ok answers are usable: refusals, truncated, paused and empty answers are not."""

from __future__ import annotations

import polars as pl

from runner.answers import answer_counts, answer_kind


def test_each_unusable_kind_is_named() -> None:
    results = pl.DataFrame(
        {
            "status": ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "error"],
            "stop_reason": [
                "end_turn",
                "refusal",
                "max_tokens",
                "model_context_window_exceeded",
                "pause_turn",
                "end_turn",
                "stop_sequence",
                None,
            ],
            "output_text": ["yes", "I can't", "half a", "half", "", "  \n", "done", None],
        }
    )
    kinds = results.select(answer_kind(results.columns))["answer"].to_list()
    assert kinds == [
        "usable",
        "refusal",
        "truncated",
        "truncated",
        "pause_turn",
        "empty",
        "usable",
        None,
    ]
    assert answer_counts(results.lazy()) == {
        "usable": 2,
        "refusal": 1,
        "truncated": 2,
        "pause_turn": 1,
        "empty": 1,
    }


def test_an_answer_with_only_tool_calls_is_not_empty() -> None:
    results = pl.DataFrame(
        {
            "status": ["ok", "ok"],
            "stop_reason": ["tool_use", "end_turn"],
            "output_text": ["", ""],
            "tool_calls": ['[{"name": "lookup"}]', None],
        }
    )
    kinds = results.select(answer_kind(results.columns))["answer"].to_list()
    assert kinds == ["usable", "empty"]
