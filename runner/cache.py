"""`--cache DIR`: every ok answer kept by request fingerprint, reused by later runs at $0.

    DIR/ab/abcdef0123...json    one answer: text, stop reason, models, usage, cost, when

A fingerprint covers everything sent (model, max_tokens, system, sampling, prompt), so a
hit is the same request. Each entry is written to a temporary name and renamed, so
concurrent runs sharing DIR see whole entries or none (the last writer of the same
answer wins). A hit touches the entry: `runner cache prune DIR --older-than 30d` drops
entries unused for 30 days, `--keep N` all but the N most recently used.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import RunDirError, UsageError
from runner.models import Request, RowResult, Status

_AGE = re.compile(r"^(\d+)([dhm])$")
_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}


@dataclass(slots=True)
class CacheUse:
    """What this session took from the cache and what that saved."""

    reused: int = 0
    saved_usd: float = 0.0
    stored: int = 0


class AnswerCache:
    """Answers on disk by request fingerprint, shared by every run that names the folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.use = CacheUse()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cache {directory}: cannot create: {exc.strerror}") from None

    def _path(self, fingerprint: str) -> Path:
        return self.directory / fingerprint[:2] / f"{fingerprint}.json"

    def answer(self, request: Request) -> RowResult | None:
        """The cached answer to `request` as its row's result ($0), or None."""
        path = self._path(request.fingerprint)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            os.utime(path)  # last used, for prune
        except (OSError, ValueError):
            return None  # absent, or damaged: the request is simply sent
        self.use.reused += 1
        self.use.saved_usd += float(entry.get("cost_usd") or 0.0)
        return RowResult.for_request(
            request,
            Status.OK,
            output_text=entry.get("text"),
            stop_reason=entry.get("stop_reason"),
            cost_usd=0.0,
            served_model=entry.get("served_model"),
            copy_of=f"cache:{entry.get('request_id') or request.fingerprint}",
        )

    def keep(self, request: Request, result: RowResult | None) -> None:
        """Store an ok answer (a copy is not stored again)."""
        if result is None or result.status is not Status.OK or result.copy_of is not None:
            return
        usage = result.usage
        entry: dict[str, Any] = {
            "text": result.output_text,
            "stop_reason": result.stop_reason,
            "model": result.model,
            "served_model": result.served_model,
            "request_id": result.request_id,
            "cost_usd": result.cost_usd,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "stored_at": time.time(),
        }
        path = self._path(request.fingerprint)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RunDirError(f"cache {self.directory}: cannot write: {exc.strerror}") from None
        self.use.stored += 1


def parse_age(text: str) -> float:
    """`30d`, `12h` or `90m` in seconds."""
    match = _AGE.match(text.strip())
    if match is None:
        raise UsageError(f"--older-than {text!r}: give a number and d, h or m (e.g. 30d)")
    return int(match[1]) * _SECONDS[match[2]]


def prune(directory: Path, older_than_s: float | None, keep: int | None) -> tuple[int, int]:
    """Drop entries unused for `older_than_s` and beyond the `keep` most recent: (dropped, kept)."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such cache folder")
    entries = sorted(
        ((path.stat().st_mtime, path) for path in directory.glob("??/*.json")), reverse=True
    )
    now = time.time()
    dropped = 0
    for rank, (used, path) in enumerate(entries):
        too_old = older_than_s is not None and now - used > older_than_s
        too_many = keep is not None and rank >= keep
        if too_old or too_many:
            path.unlink(missing_ok=True)
            dropped += 1
    return dropped, len(entries) - dropped
