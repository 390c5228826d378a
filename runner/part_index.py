"""Reading results parts by row key: each key's latest version, and whether the parts are
already in input order, with no string column of a whole run held at once.

A part is `results/part-N.parquet` with `state/part-N.parquet` beside it (same rows,
same order). A row is its key (README: row identity); 64-bit hashes compare keys in
memory. Parts are read in number order, so a key's last row is its latest version.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from runner.errors import LocalFailureError
from runner.parts import RESULT_SCHEMA, STATE_SCHEMA

KEY_HASH = pl.col("key").hash().alias("key_hash")


def index_of(part: pl.DataFrame, number: int, extra: tuple[pl.Expr, ...]) -> pl.DataFrame:
    """One part's rows as index rows: key hash, part number, row in part, line, `extra`."""
    return part.with_row_index("row").select(
        KEY_HASH, pl.lit(number, pl.Int64).alias("part"), "row", "line", *extra
    )


def in_order(index: pl.DataFrame, part_rows: int | None = None) -> bool:
    """Whether reading the parts in turn gives every key once, in input order.

    With `part_rows`, also whether they are the parts compaction writes: that many rows
    each but the last, so a run that finished in input order keeps no small parts.
    """
    lines = index["line"]
    ordered = lines.is_null().is_sorted() and lines.drop_nulls().is_sorted()
    if not (ordered and index["key_hash"].n_unique() == index.height):
        return False
    if part_rows is None:
        return True
    sizes = index.group_by("part", maintain_order=True).len()["len"]
    return bool((sizes.head(-1) == part_rows).all())


def check_openable(*paths: Path) -> None:
    """Raise LocalFailureError if a part cannot be opened for a local reason (no file
    handle left, no permission), so it is never taken for a damaged one and sent again."""
    for path in paths:
        try:
            os.close(os.open(path, os.O_RDONLY))
        except FileNotFoundError:
            continue  # a missing file is a damaged part: the reader says so
        except OSError as exc:
            raise LocalFailureError.from_os_error(exc, path) from None


def scan_results_parts(paths: list[Path]) -> pl.LazyFrame:
    """Results parts as one lazy frame of today's columns.

    A part written by an older version lacks the newer columns (served_model, say):
    they read as null, so its rows are kept, never sent and paid for again.
    """
    return pl.scan_parquet(
        paths, schema=RESULT_SCHEMA, missing_columns="insert", extra_columns="ignore"
    )


def read_state(path: Path, results_path: Path, columns: list[str] | None) -> pl.DataFrame:
    """A state part (`columns`); one written before rows had keys gets its rows' ids as keys."""
    state = pl.scan_parquet(path, schema=STATE_SCHEMA, missing_columns="insert").collect()
    if state.height and state["key"].null_count() == state.height:
        ids = pl.read_parquet(results_path, columns=["id"])["id"]
        state = state.with_columns(ids.alias("key"))
    return state if columns is None else state.select(columns)
