"""Every total of a run, computed in one place: what `summary.json`, `runner report` (text,
JSON, HTML) and the live display show.

`RunReader` reads a run as it is on disk, parts and journal together, so a report on a
crashed (or live) run counts every finished row. `account` sums it lazily: only the
columns it needs are read, never the output text. `LiveTotals` keeps the same figures
row by row while a run goes. Unpriced rows are counted, never summed as $0:

    ACCOUNT = {"rows": {"ok", "error", "invalid", "total"}, "tokens": TOKENS,
               "cost_usd", "priced_rows", "unpriced_rows", "unpriced_models",
               "spend_usd", "attempts",
               "by_model": {model: {"rows", "tokens", "cost_usd", "unpriced_rows",
                                    "retry_cost_usd"}},
               "retries": {"failed_attempts", **TOKENS, "cost_usd", "by_error_type"}}

A row counts under the model that served it (`served_model`), else the one asked for.
`cost_usd` is None when no row has a price; `spend_usd` adds what failed attempts cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from runner.models import TOKEN_FIELDS, RowResult, Status
from runner.parts import ATTEMPT_SCHEMA, RESULT_SCHEMA, STATE_SCHEMA, records_frame
from runner.store import RunStore

_DIGITS = 10
# What the account reads of the results: never the output text.
ACCOUNT_COLUMNS = ("id", "status", "model", "served_model", *TOKEN_FIELDS, "cost_usd")


class RunReader:
    """A run's results and attempts as lazy frames, journal folded in (read-only)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._store = RunStore(run_dir)
        self._journal = self._store.journal_records()

    def results(self, columns: tuple[str, ...] = ACCOUNT_COLUMNS) -> pl.LazyFrame:
        """One row per row key (only `columns`, `key` and `line`): its latest outcome.

        A row no longer in the input has a null `line`.
        """
        journaled, _ = self._journal
        present = self._result_columns()
        wanted = [name for name in columns if name in present]
        state = ["key", "line"]
        parts = self._store.scan_results(with_state=True, columns=wanted).select(*wanted, *state)
        if not journaled:
            return parts
        recent = (
            records_frame(journaled, RESULT_SCHEMA | STATE_SCHEMA).lazy().select(*wanted, *state)
        )
        # The journal is newer than every part: its version of a row (its key) wins.
        return (
            pl.concat([parts, recent], how="diagonal_relaxed")
            .unique(subset=["key"], keep="last", maintain_order=True)
            .sort("line", nulls_last=True, maintain_order=True)
        )

    def _result_columns(self) -> set[str]:
        """The columns the run's parts have (a run from an older version lacks newer ones)."""
        for path in sorted(self._store.results_dir.glob("part-*.parquet")):
            try:
                return set(pl.read_parquet_schema(path))
            except Exception:  # polars raises several types for a damaged file
                continue
        return set(RESULT_SCHEMA)

    def attempts(self) -> pl.LazyFrame:
        """Every attempt, from the parts and the journal (each once)."""
        _, journaled = self._journal
        parts = self._store.scan_attempts()
        if not journaled:
            return parts
        recent = records_frame(journaled, ATTEMPT_SCHEMA).lazy()
        # A crash between writing a part and deleting its segment leaves both on disk.
        return pl.concat([parts, recent], how="diagonal_relaxed").unique(
            subset=["id", "attempt", "started_at"], keep="first", maintain_order=True
        )


def _not_in_input(results: pl.LazyFrame) -> dict[str, int]:
    """Rows by status whose row left the input (a null `line`): kept, not counted."""
    if "line" not in results.collect_schema().names():
        return {}
    gone = results.filter(pl.col("line").is_null()).group_by("status").len()
    return dict(gone.collect(engine="streaming").iter_rows())


def _gone_count(gone: dict[str, int]) -> dict[str, int]:
    """`not_in_input` for the rows figures, once any row left the input."""
    return {"not_in_input": sum(gone.values())} if gone else {}


def billed_model(results: pl.LazyFrame) -> pl.Expr:
    """The model a row is billed as: the one that served it, else the one asked for."""
    if "served_model" in results.collect_schema().names():
        return pl.coalesce("served_model", "model")
    return pl.col("model")


def account(results: pl.LazyFrame, attempts: pl.LazyFrame) -> dict[str, Any]:
    """Rows by status, tokens and cost per model and in total, and what retries cost."""
    grouped = (
        results.group_by(pl.col("status"), billed_model(results).alias("billed"))
        .agg(
            pl.len().alias("rows"),
            *(pl.col(name).sum() for name in TOKEN_FIELDS),
            pl.col("cost_usd").sum().alias("cost"),
            pl.col("cost_usd").is_not_null().sum().alias("priced"),
        )
        .sort("billed", nulls_last=True)
        .collect(engine="streaming")
    )
    failed = attempts.filter(pl.col("outcome") != "ok").join(
        results.select("id", billed_model(results).alias("billed")).unique("id"),
        on="id",
        how="left",
    )
    # Per model: None where its rows' failed attempts have no price (never $0 for no price).
    retries_by_model = {
        model: (cost if priced else None)
        for model, cost, priced in failed.group_by("billed")
        .agg(pl.col("cost_usd").sum(), pl.col("cost_usd").is_not_null().sum().alias("priced"))
        .collect()
        .iter_rows()
    }
    rows = {status.value: 0 for status in Status}
    by_model: dict[str, dict[str, Any]] = {}
    for entry in grouped.iter_rows(named=True):
        rows[entry["status"]] = rows.get(entry["status"], 0) + entry["rows"]
        if entry["status"] != Status.OK.value:
            continue
        by_model[str(entry["billed"])] = {
            "rows": entry["rows"],
            "tokens": {name: int(entry[name] or 0) for name in TOKEN_FIELDS},
            "cost_usd": round(entry["cost"], _DIGITS) if entry["priced"] else None,
            "unpriced_rows": entry["rows"] - entry["priced"],
            "retry_cost_usd": _retry_cost(retries_by_model, entry["billed"]),
        }
    # Paid rows no longer in the input stay in the spend, but not in the row counts.
    gone = _not_in_input(results)
    for status, count in gone.items():
        rows[status] -= count
    retries = _retries(failed)
    total = _sum_models(by_model)
    spend = [c for c in (total["cost_usd"], retries["cost_usd"]) if c is not None]
    return {
        "rows": {**rows, "total": sum(rows.values()), **_gone_count(gone)},
        **total,
        "spend_usd": round(sum(spend), _DIGITS) if spend else None,
        "attempts": int(attempts.select(pl.len()).collect().item()),
        "by_model": by_model,
        "retries": retries,
    }


def _retry_cost(by_model: dict[Any, float | None], model: Any) -> float | None:
    """What a model's failed attempts cost: 0 with none, None when none is priced."""
    if model not in by_model:
        return 0.0
    cost = by_model[model]
    return None if cost is None else round(cost, _DIGITS)


def batch_account(
    results: pl.LazyFrame, attempts: pl.LazyFrame, batch_multiplier: float | None
) -> dict[str, Any] | None:
    """What Message Batches items cost and saved; None when the run sent none.

    Only `succeeded` items are billed; `standard_cost_usd` is what their rows would have
    cost streamed (the batch discount applies to token prices: cost / multiplier).
    """
    items = attempts.filter(pl.col("custom_id").is_not_null())
    counts = items.select(
        pl.len().alias("items"), (pl.col("outcome") == "ok").sum().alias("billed")
    ).collect()
    if not counts["items"][0]:
        return None
    billed_ids = items.filter(pl.col("outcome") == "ok").select("id").unique()
    rows = (
        results.filter(pl.col("status") == Status.OK.value)
        .join(billed_ids, on="id", how="semi")
        .select(
            pl.len().alias("rows"),
            pl.col("cost_usd").sum().alias("cost"),
            pl.col("cost_usd").is_not_null().sum().alias("priced"),
        )
        .collect()
        .row(0, named=True)
    )
    cost = round(float(rows["cost"] or 0.0), _DIGITS) if rows["priced"] else None
    standard = saved = None
    if cost is not None and batch_multiplier:
        standard = round(cost / batch_multiplier, _DIGITS)
        saved = round(standard - cost, _DIGITS)
    return {
        "items": int(counts["items"][0]),
        "billed_items": int(counts["billed"][0]),
        "rows": int(rows["rows"]),
        "cost_usd": cost,
        "standard_cost_usd": standard,
        "saved_usd": saved,
    }


def batch_text(batch: dict[str, Any]) -> str:
    """One line: what the batch items cost, and what they saved against streaming."""
    return (
        f"batch: {batch['items']:,} items, {batch['billed_items']:,} billed "
        f"(succeeded), {batch['rows']:,} rows at {usd(batch['cost_usd'])}; streamed they "
        f"would cost {usd(batch['standard_cost_usd'])}: saved {usd(batch['saved_usd'])}"
    )


def _sum_models(by_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    priced = [m for m in by_model.values() if m["cost_usd"] is not None]
    unpriced = sorted(name for name, m in by_model.items() if m["unpriced_rows"])
    return {
        "tokens": {
            name: sum(m["tokens"][name] for m in by_model.values()) for name in TOKEN_FIELDS
        },
        "cost_usd": round(sum(m["cost_usd"] for m in priced), _DIGITS) if priced else None,
        "priced_rows": sum(m["rows"] - m["unpriced_rows"] for m in by_model.values()),
        "unpriced_rows": sum(m["unpriced_rows"] for m in by_model.values()),
        "unpriced_models": unpriced,
    }


def _retries(failed: pl.LazyFrame) -> dict[str, Any]:
    """What failed attempts consumed; their cost None only when some failed and none is priced."""
    totals = (
        failed.select(
            pl.len().alias("failed"),
            *(pl.col(name).sum() for name in TOKEN_FIELDS),
            pl.col("cost_usd").sum().alias("cost"),
            pl.col("cost_usd").is_not_null().sum().alias("priced"),
        )
        .collect()
        .row(0, named=True)
    )
    by_error = (
        failed.group_by("error_type")
        .len()
        .sort(["len", "error_type"], descending=True)
        .collect()
        .iter_rows()
    )
    count = int(totals["failed"] or 0)
    cost = round(float(totals["cost"] or 0.0), _DIGITS) if totals["priced"] or not count else None
    return {
        "failed_attempts": count,
        **{name: int(totals[name] or 0) for name in TOKEN_FIELDS},
        "cost_usd": cost,
        "by_error_type": {str(t): n for t, n in by_error},
    }


def cost_text(figures: dict[str, Any]) -> str:
    """`$X`, or `$X for N priced rows; M rows unpriced (models ...)`: never $0 for no price."""
    cost, unpriced = figures["cost_usd"], figures["unpriced_rows"]
    if not unpriced:
        return usd(cost)
    models = ", ".join(figures["unpriced_models"])
    missing = f"{unpriced:,} rows unpriced (models {models})"
    if cost is None:
        return f"n/a: {missing}"
    return f"{usd(cost)} for {figures['priced_rows']:,} priced rows; {missing}"


def usd(value: float | None) -> str:
    """Dollars to the hundredth of a cent, or n/a."""
    return "n/a" if value is None else f"${value:,.4f}"


@dataclass(slots=True)
class LiveTotals:
    """The account's ok-row figures, kept row by row while a run goes (for the display)."""

    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))
    priced_cost: float = 0.0
    priced_rows: int = 0
    unpriced: dict[str, int] = field(default_factory=dict)

    def add(self, result: RowResult) -> None:
        """Count an ok row's tokens and cost (or that it has none)."""
        if result.status is not Status.OK:
            return
        if result.usage is not None:
            for name in TOKEN_FIELDS:
                self.tokens[name] += getattr(result.usage, name)
        if result.cost_usd is None:
            model = str(result.served_model or result.model)
            self.unpriced[model] = self.unpriced.get(model, 0) + 1
        else:
            self.priced_cost += result.cost_usd
            self.priced_rows += 1

    def figures(self) -> dict[str, Any]:
        """The same keys `account` gives for the ok rows' cost."""
        return {
            "tokens": dict(self.tokens),
            "cost_usd": round(self.priced_cost, _DIGITS) if self.priced_rows else None,
            "priced_rows": self.priced_rows,
            "unpriced_rows": sum(self.unpriced.values()),
            "unpriced_models": sorted(self.unpriced),
        }
