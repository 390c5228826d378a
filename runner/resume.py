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

    Kept as Arrow tables and checked a batch at a time with a join, so resuming a
    large run needs no per-row Python objects.
    """

    def __init__(self, store: RunStore) -> None:
        results = store.read_results(with_state=True, columns=["id", "status"])
        self.done = results.filter(pl.col("status") == Status.OK.value).select("id", "fingerprint")
        self.attempts = store.read_attempts(columns=["id"]).group_by("id").len("prior")
        self.empty = self.done.is_empty() and self.attempts.is_empty()
        # Each join hashes the whole done table: few large batches when resuming, small
        # ones for a fresh run so the first requests go out at once.
        self.batch = 256 if self.empty else 8192

    def triage(self, batch: list[Request]) -> tuple[list[WorkItem], int]:
        """The batch's rows still to send (with their earlier attempts), and how many are done."""
        if self.empty:
            return [WorkItem(request) for request in batch], 0
        frame = pl.DataFrame(
            {
                "id": [r.row_id for r in batch],
                "fingerprint": [r.fingerprint for r in batch],
                "i": range(len(batch)),
            },
            schema={"id": pl.String, "fingerprint": pl.String, "i": pl.Int64},
        )
        done = set(frame.join(self.done, on=["id", "fingerprint"], how="semi")["i"])
        prior = dict(frame.join(self.attempts, on="id").select("i", "prior").iter_rows())
        to_send = [
            WorkItem(request, prior.get(i, 0)) for i, request in enumerate(batch) if i not in done
        ]
        return to_send, len(done)


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
