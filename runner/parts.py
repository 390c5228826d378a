"""What a Parquet part holds and how it reaches disk: schemas, records, atomic writes.

A finished row travels as a JSON-ready record (journal line first, then a row of a
part); every file a run writes is written to a temporary name, fsynced and renamed,
so a reader sees either the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from runner.errors import LocalFailureError
from runner.models import TOKEN_FIELDS, Attempt, RowResult

RESULT_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "status": pl.String,
    "model": pl.String,
    "output_text": pl.String,
    "stop_reason": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cache_creation_input_tokens": pl.Int64,
    "cache_read_input_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "attempts": pl.Int64,
    "error_type": pl.String,
    "error_message": pl.String,
    "request_id": pl.String,
    "ttft_ms": pl.Float64,
    "latency_ms": pl.Float64,
    "served_model": pl.String,
    "copy_of": pl.String,
    "stop_details": pl.String,
    "tool_calls": pl.String,
    "output_json": pl.String,
    "thinking": pl.String,
    "thinking_tokens": pl.Int64,
}
# Per results row: its identity (what resume matches on), its line in the current
# input (null once it is no longer there) and its request fingerprint.
STATE_SCHEMA: dict[str, Any] = {"key": pl.String, "line": pl.Int64, "fingerprint": pl.String}
ATTEMPT_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "attempt": pl.Int64,
    "started_at": pl.Datetime("us", "UTC"),
    "outcome": pl.String,
    "http_status": pl.Int64,
    "error_type": pl.String,
    "error_message": pl.String,
    "retry_after_s": pl.Float64,
    "wait_s": pl.Float64,
    "request_id": pl.String,
    "latency_ms": pl.Float64,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cache_creation_input_tokens": pl.Int64,
    "cache_read_input_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "fingerprint": pl.String,
    "custom_id": pl.String,
    "key": pl.String,
}


def result_record(result: RowResult) -> dict[str, Any]:
    """A finished row as one JSON-ready record: the results columns plus its state."""
    usage = result.usage
    record: dict[str, Any] = {
        "id": result.id,
        "status": str(result.status),
        "model": result.model,
        "output_text": result.output_text,
        "stop_reason": result.stop_reason,
        "cost_usd": result.cost_usd,
        "attempts": result.attempts,
        "error_type": result.error_type,
        "error_message": result.error_message,
        "request_id": result.request_id,
        "ttft_ms": result.ttft_ms,
        "latency_ms": result.latency_ms,
        "served_model": result.served_model,
        "copy_of": result.copy_of,
        "stop_details": result.stop_details,
        "tool_calls": result.tool_calls,
        "output_json": result.output_json,
        "thinking": result.thinking,
        "thinking_tokens": result.thinking_tokens,
        "key": result.key or result.id,
        "line": result.line,
        "fingerprint": result.fingerprint,
    }
    for name in TOKEN_FIELDS:
        record[name] = getattr(usage, name) if usage is not None else None
    return record


def attempt_record(attempt: Attempt) -> dict[str, Any]:
    """One attempt as a JSON-ready record of the attempts table."""
    # Field by field: dataclasses.asdict deep-copies, a cost seen on every attempt.
    usage = attempt.usage
    record: dict[str, Any] = {
        "id": attempt.row_id,
        "attempt": attempt.number,
        "started_at": int(attempt.started_at * 1_000_000),
        "outcome": str(attempt.outcome),
        "http_status": attempt.http_status,
        "error_type": attempt.error_type,
        "error_message": attempt.error_message,
        "retry_after_s": attempt.retry_after_s,
        "wait_s": attempt.wait_s,
        "request_id": attempt.request_id,
        "latency_ms": attempt.latency_ms,
        "cost_usd": attempt.cost_usd,
        "fingerprint": attempt.fingerprint,
        "custom_id": attempt.custom_id,
        "key": attempt.key or attempt.row_id,
    }
    for name in TOKEN_FIELDS:
        record[name] = getattr(usage, name) if usage is not None else None
    return record


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, fsync it, then rename it over `path`."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomic(path, text.encode())
    fsync_dir(path.parent)


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write a part to a temporary name, fsync it, then rename it over `path`."""
    # Encoded in memory (a part is at most COMPACT_LINES rows), so a full disk shows
    # as the OSError it is rather than as a Parquet library's error.
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    write_atomic(path, buffer.getbuffer())


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """`data` to a temporary name, fsynced and renamed over `path`: whole or not at all.

    A failure leaves no temporary file behind (or one the next start removes) and
    raises LocalFailureError naming the cause and the path.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data, tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise LocalFailureError.from_os_error(exc, path) from None


def write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    """Write every byte of `data` to `fd`, however many short writes that takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:  # a write that makes no progress is a full device
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LocalFailureError.from_os_error(exc, directory) from None


def records_frame(records: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    """Journal records as a frame of exactly `schema`'s columns."""
    # started_at travels as epoch microseconds (JSON-friendly) and becomes a UTC datetime here.
    build = {name: pl.Int64 if name == "started_at" else kind for name, kind in schema.items()}
    frame = pl.DataFrame({name: [r.get(name) for r in records] for name in schema}, schema=build)
    if "started_at" in schema:
        frame = frame.with_columns(pl.col("started_at").cast(schema["started_at"]))
    return frame
