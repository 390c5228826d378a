"""Which `ok` answers a user can use: the one definition export, summary and reports share.

An `ok` row is one the API answered; it is usable only if the answer is complete. The
stop reasons follow https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons:
`refusal` declined, `max_tokens` and `model_context_window_exceeded` truncated, `pause_turn`
unfinished (send the content back to continue). An answer with no text (and no tool call)
is `empty` whatever its stop reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

from runner.models import Status

USABLE = "usable"
# Each unusable kind, in the order a row is classified (the first that applies).
UNUSABLE_KINDS = ("refusal", "truncated", "pause_turn", "empty")
# How outputs for people name each unusable kind.
UNUSABLE_WORDS = {
    "refusal": "refused",
    "truncated": "cut at max_tokens",
    "pause_turn": "paused (pause_turn)",
    "empty": "empty",
}
_STOP_REASON_KIND = {
    "refusal": "refusal",
    "max_tokens": "truncated",
    "model_context_window_exceeded": "truncated",
    "pause_turn": "pause_turn",
}


def answer_kind(columns: Iterable[str]) -> pl.Expr:
    """`usable` or the unusable kind of each `ok` row (null for other rows), as `answer`.

    `columns` are the result columns present: a `tool_calls` column, where there is one,
    makes an answer with only tool calls non-empty.
    """
    text = pl.col("output_text").fill_null("").str.strip_chars()
    empty = text == ""
    if "tool_calls" in set(columns):
        empty = empty & pl.col("tool_calls").is_null()
    stop = pl.col("stop_reason")
    kind: Any = pl.when(pl.col("status") != Status.OK.value).then(pl.lit(None, pl.String))
    for reason, name in _STOP_REASON_KIND.items():
        kind = kind.when(stop == reason).then(pl.lit(name))
    return kind.when(empty).then(pl.lit("empty")).otherwise(pl.lit(USABLE)).alias("answer")


def answer_counts(results: pl.LazyFrame) -> dict[str, int]:
    """Ok rows by answer kind: `usable` and every unusable kind, zeros included."""
    counts = dict.fromkeys((USABLE, *UNUSABLE_KINDS), 0)
    frame = (
        results.select(answer_kind(results.collect_schema().names()))
        .drop_nulls()
        .group_by("answer")
        .len()
        .collect(engine="streaming")
    )
    for kind, count in frame.iter_rows():
        counts[kind] = count
    return counts


def answers_text(answers: dict[str, int], ok: int) -> str:
    """`N usable of M ok`, with each kind of unusable answer there is: as every output says it."""
    unusable = [f"{answers[k]:,} {UNUSABLE_WORDS[k]}" for k in UNUSABLE_KINDS if answers[k]]
    text = f"{answers[USABLE]:,} usable of {ok:,} ok"
    return text + (f" ({', '.join(unusable)})" if unusable else "")
