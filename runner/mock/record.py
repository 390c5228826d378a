"""What the mock really served, so tests can hold a client's report against it.

The server runs in its own thread; every access goes through one lock and readers
get copies, never the live entries. With a record file (`runner mock-server
--record FILE`) every attempt is also written as one JSON line when it ends, so a
test in another process, or a user, can see exactly what was sent and paid for.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass(slots=True)
class ServedAttempt:
    """One `POST /v1/messages` attempt, or one batch item, as the server saw and answered it."""

    key: str
    prompt: str
    number: int  # 1 for the first time the server saw this request
    request_id: str
    started_at: float
    ended_at: float | None = None
    status: int | None = None  # HTTP status sent; None when the connection was reset
    fault: str | None = None  # the injected fault kind, if any
    error_type: str | None = None  # the Anthropic error type of an error answer
    stream: bool = False
    text: str = ""  # text actually sent in deltas (or in the JSON body)
    usage: dict[str, Any] = field(default_factory=dict)  # usage as reported to the client
    output_tokens_generated: int = 0  # tokens actually sent (what the output bucket paid)
    stop_reason: str | None = None
    completed: bool = False  # the whole answer was sent (message_stop for a stream)
    custom_id: str | None = None  # a batch item's custom_id (request_id is then the batch id)

    @property
    def outcome(self) -> str:
        """A short label: "ok", "fault:KIND", "error:TYPE" or "incomplete"."""
        if self.fault and self.fault != "unknown_event":
            return f"fault:{self.fault}"
        if self.error_type:
            return f"error:{self.error_type}"
        return "ok" if self.completed else "incomplete"

    def as_line(self) -> dict[str, Any]:
        """The record file's line for this attempt (`prompt` is the row marker)."""
        return {
            "prompt": self.prompt,
            "key": self.key,
            "number": self.number,
            "request_id": self.request_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status": self.status,
            "outcome": self.outcome,
            "completed": self.completed,
            "usage": self.usage,
            "output_tokens_generated": self.output_tokens_generated,
        }


class MockRecord:
    """Every attempt served, by request key and by prompt, plus running totals.

    With `keep_attempts=False` (the long-running CLI server) only the totals are kept,
    so memory stays flat however many requests it serves. With `record_path`, each
    finished attempt is appended to that file as one JSON line (flushed at once).
    """

    def __init__(self, keep_attempts: bool = True, record_path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._keep = keep_attempts
        self._sink = record_path.open("a", encoding="utf-8") if record_path else None
        self._attempts: list[ServedAttempt] = []
        self._by_key: dict[str, list[ServedAttempt]] = {}
        self._by_prompt: dict[str, list[ServedAttempt]] = {}
        self._statuses: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._finished = 0

    def add(self, attempt: ServedAttempt) -> None:
        """Start recording an attempt; the server keeps filling it in until it ends."""
        if not self._keep:
            return
        with self._lock:
            self._attempts.append(attempt)
            self._by_key.setdefault(attempt.key, []).append(attempt)
            self._by_prompt.setdefault(attempt.prompt, []).append(attempt)

    def update(self, attempt: ServedAttempt, **changes: Any) -> None:
        """Change fields of a recorded attempt under the lock."""
        with self._lock:
            for name, value in changes.items():
                setattr(attempt, name, value)

    def finish(self, attempt: ServedAttempt, ended_at: float) -> None:
        """Close an attempt and count it in the totals."""
        with self._lock:
            attempt.ended_at = ended_at
            self._finished += 1
            self._statuses[str(attempt.status) if attempt.status is not None else "reset"] += 1
            self._outcomes[attempt.outcome] += 1
            for name in _TOKEN_FIELDS:
                self._tokens[name] += int(attempt.usage.get(name, 0))
            self._tokens["output_tokens_generated"] += attempt.output_tokens_generated
            if self._sink is not None:
                self._sink.write(json.dumps(attempt.as_line(), ensure_ascii=False) + "\n")
                self._sink.flush()

    def close(self) -> None:
        """Close the record file, if any."""
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None

    def clear(self) -> None:
        """Forget everything (the server's `POST /_mock/reset`)."""
        with self._lock:
            self._attempts.clear()
            self._by_key.clear()
            self._by_prompt.clear()
            self._statuses.clear()
            self._outcomes.clear()
            self._tokens.clear()
            self._finished = 0

    def attempts(self) -> list[ServedAttempt]:
        """Every attempt, in arrival order."""
        with self._lock:
            return [replace(a) for a in self._attempts]

    def attempts_for_key(self, key: str) -> list[ServedAttempt]:
        """The attempts of one request key, in arrival order."""
        with self._lock:
            return [replace(a) for a in self._by_key.get(key, ())]

    def attempts_for_prompt(self, prompt: str) -> list[ServedAttempt]:
        """The attempts whose last user message was exactly `prompt`, in arrival order."""
        with self._lock:
            return [replace(a) for a in self._by_prompt.get(prompt, ())]

    def final_for_prompt(self, prompt: str) -> ServedAttempt | None:
        """The last attempt for `prompt`, or None if it was never seen."""
        attempts = self.attempts_for_prompt(prompt)
        return attempts[-1] if attempts else None

    def totals(self) -> dict[str, Any]:
        """Finished requests by status ("reset" when none was sent) and outcome, and tokens.

        Tokens are as reported to clients, plus `output_tokens_generated`: what was
        actually streamed, which a broken stream never reported.
        """
        with self._lock:
            return {
                "requests": self._finished,
                "by_status": dict(sorted(self._statuses.items())),
                "by_outcome": dict(sorted(self._outcomes.items())),
                "tokens": {
                    name: self._tokens[name] for name in (*_TOKEN_FIELDS, "output_tokens_generated")
                },
            }
