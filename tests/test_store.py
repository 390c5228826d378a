"""The run store alone: parts, journal recovery, compaction by row key in input order."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
from pathlib import Path

import polars as pl
import pytest

import runner.store as store_module
from runner.models import RowResult, Status, Usage
from runner.part_index import KEY_HASH
from runner.resume import DoneRows
from runner.store import RunStore, open_store


def _row(line: int, text: str, status: Status = Status.OK) -> RowResult:
    return RowResult(
        id=f"id{line:04d}",
        key=f"id{line:04d}",
        line=line,
        status=status,
        model="m",
        fingerprint="f",
        output_text=text if status is Status.OK else None,
        usage=Usage(input_tokens=line, output_tokens=1) if status is Status.OK else None,
        attempts=1,
    )


def _write_session(run_dir: Path, rows: list[RowResult], per_part: int) -> None:
    with open_store(run_dir) as store:
        for i, row in enumerate(rows):
            store.record(row, [])
            if i % per_part == per_part - 1:
                store.flush()


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "COMPACT_LINES", 7)


def test_compaction_keeps_the_latest_outcome_per_key_in_input_order(
    tmp_path: Path, small_ranges: None
) -> None:
    lines = list(range(1, 41))
    random.Random(3).shuffle(lines)  # rows finish out of order
    _write_session(tmp_path, [_row(n, "first", Status.ERROR) for n in lines], per_part=6)
    _write_session(tmp_path, [_row(n, "second") for n in (5, 17, 33)], per_part=2)
    before = RunStore(tmp_path).read_results(with_state=True)

    with open_store(tmp_path) as store:
        store.compact()
    parts = sorted((tmp_path / "results").glob("part-*.parquet"))
    assert len(parts) == 6  # 40 lines in ranges of 7
    on_disk = pl.read_parquet([str(p) for p in parts])
    assert on_disk["id"].to_list() == [f"id{n:04d}" for n in range(1, 41)]
    assert on_disk.filter(pl.col("status") == "ok")["id"].to_list() == [
        "id0005",
        "id0017",
        "id0033",
    ]
    assert RunStore(tmp_path).read_results(with_state=True).equals(before)


def test_rows_no_longer_in_the_input_are_kept_and_moved_rows_reordered(
    tmp_path: Path, small_ranges: None, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [_row(n, "x") for n in range(1, 21)]
    rows[15] = _row(16, "x", Status.INVALID)
    _write_session(tmp_path, rows, per_part=5)
    # The next session read an input of rows 11..1 (reversed), then 12; 13..20 are gone.
    now = {f"id{n:04d}": 12 - n for n in range(1, 12)} | {"id0012": 12}
    with open_store(tmp_path) as store:
        keys = pl.DataFrame({"key": list(now)}).select(KEY_HASH)["key_hash"]
        store.compact(pl.DataFrame({"key_hash": keys, "line": list(now.values())}))
    results = RunStore(tmp_path).read_results(with_state=True)
    expected = [f"id{n:04d}" for n in (*range(11, 0, -1), 12)]
    # Paid rows no longer in the input stay, last, without a line; the invalid one goes.
    gone = [f"id{n:04d}" for n in (13, 14, 15, 17, 18, 19, 20)]
    assert results["id"].to_list() == expected + gone
    assert results["line"].to_list() == [*range(1, 13), *[None] * 7]
    assert RunStore(tmp_path).scan_results().collect()["id"].to_list() == expected + gone
    assert caplog.records == []  # every part was read as it is, none taken for damaged


def test_a_crash_between_writing_and_deleting_changes_nothing(
    tmp_path: Path, small_ranges: None
) -> None:
    _write_session(tmp_path, [_row(n, "x") for n in reversed(range(1, 30))], per_part=4)
    saved = tmp_path.parent / "saved"
    shutil.copytree(tmp_path, saved)
    expected = RunStore(tmp_path).read_results(with_state=True)
    with open_store(tmp_path) as store:
        store.compact()
    # Put the old parts back beside the compacted ones, as if the deletes never happened.
    for folder in ("results", "state"):
        for part in (saved / folder).glob("part-*.parquet"):
            shutil.copy(part, tmp_path / folder / part.name)
    assert RunStore(tmp_path).read_results(with_state=True).equals(expected)


def test_a_journal_left_by_a_crash_becomes_a_part(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open()
    for n in range(1, 4):
        store.record(_row(n, "kept"), [])
    # Simulate kill -9: the process is gone without closing (its flock goes with it).
    assert store._lock_fd is not None
    fcntl.flock(store._lock_fd, fcntl.LOCK_UN)
    os.close(store._lock_fd)
    assert store._segment_fd is not None
    os.close(store._segment_fd)
    with open(tmp_path / "journal" / "segment-000001.jsonl", "ab") as fh:
        fh.write(b'{"r": {"id": "torn')  # a write cut short
    with open_store(tmp_path) as recovered:
        results = recovered.read_results()
    assert results["output_text"].to_list() == ["kept"] * 3
    assert not list((tmp_path / "journal").glob("*.jsonl"))


def test_a_fresh_run_reads_nothing_to_know_that_nothing_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh run keeps polars' query code out of memory while its streams are open."""

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fresh run read its run directory")

    with open_store(tmp_path / "fresh") as store:
        with monkeypatch.context() as patched:
            patched.setattr(RunStore, "index", no_reading)
            patched.setattr(RunStore, "scan_attempts", no_reading)
            fresh = DoneRows(store)
        assert fresh.empty and fresh.no_longer_in_input() == 0
        store.record(_row(1, "paid"), [])
    # The journal left by that session is a part at the next start: that one reads it.
    with open_store(tmp_path / "fresh") as store:
        resumed = DoneRows(store)
    assert not resumed.empty and resumed.no_longer_in_input() == 1
