"""Log lines for people and for machines: the handler, the run's context, the start line.

Text lines read `runner: ...`; when stderr is not a terminal (cron, CI, a pipe) each one
starts with an ISO 8601 UTC timestamp, so a log file says when. JSON lines carry `ts`,
`level`, `message`, the run's `run_id` and `job` once a run knows them, and the figures
of progress, start and summary lines as fields. The API key is masked in every line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from runner.apikey import mask

log = logging.getLogger("runner")

# The run this process is working on: on every JSON line, null until known (see bind_run).
_NO_RUN: dict[str, str | None] = {"run_id": None, "job": None}
_context = dict(_NO_RUN)


def iso_time(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC to the second, the form every log line and report uses."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Masking(logging.Formatter):
    """Masks the API key in each whole formatted line, message and fields alike."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return mask(self._inner.format(record))


class _TextFormatter(logging.Formatter):
    """`runner: message`, after a timestamp when the lines go to a file rather than a person."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        line = f"runner: {record.getMessage()}"
        return f"{iso_time(record.created)} {line}" if self.timestamps else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "message": record.getMessage(),
                **_context,
                # Progress, start and summary lines carry their figures as fields.
                **getattr(record, "fields", {}),
            },
            ensure_ascii=False,
        )


def setup_logging(
    quiet: bool = False, log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Log lines on stderr: `runner: ...` for people, JSON lines for log collectors."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    inner = (
        _JsonFormatter() if log_format == "json" else _TextFormatter(timestamps=not stream.isatty())
    )
    handler.setFormatter(_Masking(inner))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    _context.update(_NO_RUN)


def bind_run(run_id: str | None, job: str) -> None:
    """Name the run every later JSON line belongs to."""
    _context.update(run_id=run_id, job=job)


def emit(level: int, message: str, fields: dict[str, Any]) -> None:
    """A line with figures as JSON fields, through the run's handler even below its level."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    record.fields = fields
    log.handle(record)


def _limit(value: int | None) -> str:
    return f"{value:,}" if value is not None else "none"


def log_start(job: Any, run_dir: Any, input_rows: int | None, *, resumed: bool) -> None:
    """The first line of a run: which run, job, input, mode, model, pool and limits."""
    limits = job.limits
    meters = {
        "rpm": limits.requests_per_minute,
        "itpm": limits.input_tokens_per_minute,
        "otpm": limits.output_tokens_per_minute,
    }
    mode = str(getattr(job, "mode", None) or "stream")
    models = [str(job.request.model)]
    rows = f"{input_rows:,} rows" if input_rows is not None else "rows counted as read"
    max_cost = getattr(job, "max_cost", None)
    if mode == "batch":  # the pool and the rate limits play no part: the batches do
        pace = f"batches of {job.batch.size:,}, polled every {job.batch.poll_interval:g}s"
    else:
        pace = f"concurrency {limits.concurrency}, " + (
            ", ".join(f"{name} {_limit(v)}" for name, v in meters.items())
            if any(v is not None for v in meters.values())
            else "no rate limits given"
        )
    message = (
        f"{'resume' if resumed else 'start'}: run {run_dir.name}, job {job.name}, "
        f"input {job.input} ({rows}), mode {mode}, model {', '.join(models)}, {pace}"
        + f", max attempts {job.retry.max_attempts}"
        + (f", max cost ${max_cost:,.2f}" if max_cost is not None else "")
        + f", endpoint {job.base_url}, report {run_dir}"
    )
    fields = {
        "event": "start",
        "resumed": resumed,
        "input": str(job.input),
        "input_rows": input_rows,
        "mode": mode,
        "models": models,
        "concurrency": limits.concurrency,
        "limits": meters,
        "max_attempts": job.retry.max_attempts,
        "max_cost_usd": max_cost,
        "base_url": job.base_url,
        "report": str(run_dir),
    }
    log.info(message, extra={"fields": fields})
