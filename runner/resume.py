"""Skipping rows already done: what earlier sessions of a run left on disk, batch by batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import polars as pl

from runner import __version__
from runner.inputs import InputReader
from runner.job import Job
from runner.models import InputRow, InvalidRow, Request, Status
from runner.pool import WorkItem
from runner.render import Renderer
from runner.store import RunStore


class DoneRows:
    """What earlier sessions of this run left on disk: the rows to skip, attempts so far.

    A row is its input line: it is done if the latest outcome at its line is `ok` for
    the same id and request fingerprint. Each line is kept as hashes of the two, its
    attempt count and whether it was ok (about 33 bytes, read a range of lines at a
    time), and each batch is matched against the window of lines it covers, so even a
    million done rows stay small and no batch hashes the whole table.
    """

    def __init__(self, store: RunStore) -> None:
        chunks = [
            chunk.select(
                "line",
                *_HASHES,
                (pl.col("status") == Status.OK.value).alias("ok"),
                "attempts",
            )
            for chunk in store.results_in_ranges(columns=["id", "status", "attempts"])
        ]
        self.rows = pl.concat(chunks) if chunks else pl.DataFrame(schema=_ROWS_SCHEMA)
        # Attempts are numbered on across sessions, so the highest number is the count.
        # Only failed ones are needed: a row abandoned mid-retry has no results row.
        self.failed = (
            store.scan_attempts()
            .filter(pl.col("outcome") != "ok")
            .group_by("id")
            .agg(pl.col("attempt").max().alias("failed_prior"))
            .collect(engine="streaming")
        )
        self.empty = self.rows.is_empty() and self.failed.is_empty()
        # Few large batches when resuming, small ones for a fresh run so the first
        # requests go out at once.
        self.batch = 256 if self.empty else 8192

    def triage(self, batch: list[Request]) -> tuple[list[WorkItem], int]:
        """The batch's rows still to send (with their earlier attempts), and how many are done."""
        if self.empty or not batch:  # a batch may hold only invalid rows
            return [WorkItem(request) for request in batch], 0
        lines = self.rows["line"]
        low = lines.search_sorted(batch[0].line, side="left")
        high = lines.search_sorted(batch[-1].line, side="right")
        matched = (
            pl.DataFrame(
                {
                    "line": [r.line for r in batch],
                    "id": [r.row_id for r in batch],
                    "fingerprint": [r.fingerprint for r in batch],
                },
                schema={"line": pl.Int64, "id": pl.String, "fingerprint": pl.String},
            )
            .with_row_index("i")
            .with_columns(_HASHES)
            .join(self.rows.slice(low, high - low), on="line", how="left", suffix="_done")
            .join(self.failed, on="id", how="left")
            .sort("i")  # a join need not keep the batch's order
            .select(
                (
                    pl.col("ok").fill_null(False)
                    & (pl.col("id_hash") == pl.col("id_hash_done"))
                    & (pl.col("fingerprint_hash") == pl.col("fingerprint_hash_done"))
                )
                .fill_null(False)
                .alias("done"),
                pl.max_horizontal(
                    pl.when(pl.col("id_hash") == pl.col("id_hash_done")).then(pl.col("attempts")),
                    pl.col("failed_prior"),
                )
                .fill_null(0)
                .alias("prior"),
            )
        )
        to_send = [
            WorkItem(request, prior)
            for request, done, prior in zip(batch, matched["done"], matched["prior"], strict=True)
            if not done
        ]
        return to_send, len(batch) - len(to_send)


_ROWS_SCHEMA = {
    "line": pl.Int64,
    "id_hash": pl.UInt64,
    "fingerprint_hash": pl.UInt64,
    "ok": pl.Boolean,
    "attempts": pl.Int64,
}


# 64-bit hashes compared at the same line only: a false match needs a collision
# between two requests for one line, about 1 in 2^64 per changed row.
_HASHES = (
    pl.col("id").hash().alias("id_hash"),
    pl.col("fingerprint").hash().alias("fingerprint_hash"),
)


def rows_key(job: Job, input_sha256: str) -> dict[str, str]:
    """What decides every row's request: the input's bytes and the settings that render it.

    A session that ends having seen every row records this key in run.json as
    `settled`. While the key stays the same, every stored outcome still matches its
    row's request, so a resume can tell what is left from the results alone,
    without reading and rendering the whole input again.
    """
    settings: dict[str, Any] = {
        "runner": __version__,
        "input_format": job.input_format,
        "id_column": job.id_column,
        "request": job.to_dict()["request"],
    }
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return {"input_sha256": input_sha256, "request_sha256": hashlib.sha256(encoded).hexdigest()}


def batches(
    reader: InputReader, renderer: Renderer, limit: int | None, size: int = 256
) -> Iterator[tuple[list[Request], list[InvalidRow]]]:
    """Rendered requests and invalid rows, in input order, a batch at a time (`limit` rows)."""
    requests: list[Request] = []
    invalid: list[InvalidRow] = []
    for count, row in enumerate(reader):
        if limit is not None and count >= limit:
            break
        item = renderer.render(row) if isinstance(row, InputRow) else row
        (invalid if isinstance(item, InvalidRow) else requests).append(item)
        if len(requests) + len(invalid) >= size:
            yield requests, invalid
            requests, invalid = [], []
    if requests or invalid:
        yield requests, invalid
