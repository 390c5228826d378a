"""`--dedupe`: identical requests (the same fingerprint) are sent once in a session.

The first row of a fingerprint leads: it is sent. A row with the same fingerprint
while its leader is in flight waits; one that comes after an ok leader is answered at
once. Each gets a copy of the leader's answer: status ok, the same text and stop
reason, `copy_of` naming the leader's row, no tokens and `cost_usd` 0.0 (nothing was
paid for it). A leader that fails leaves its followers unanswered in this session (a
resume sends them). Answers are kept for the last `KEPT_ANSWERS` fingerprints only,
so memory stays bounded; an older duplicate is simply sent again. Off by default:
with sampling (temperature > 0) repeats are intentional samples.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from runner.errors import UsageError
from runner.job import Job, Mode
from runner.models import Request, RowResult, Status

KEPT_ANSWERS = 10_000


class Deduper:
    """Which fingerprints lead, which rows wait on them, and the answers to copy."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Request]] = {}
        self._answers: OrderedDict[str, RowResult] = OrderedDict()
        self.copies = 0

    def lead(self, request: Request) -> bool | RowResult:
        """True: send it. False: it waits for its leader. A RowResult: its copy, now."""
        answer = self._answers.get(request.fingerprint)
        if answer is not None:
            self._answers.move_to_end(request.fingerprint)
            return self._copy(answer, request)
        waiting = self._waiting.get(request.fingerprint)
        if waiting is None:
            self._waiting[request.fingerprint] = []
            return True
        waiting.append(request)
        return False

    def finish(self, request: Request, result: RowResult | None) -> list[RowResult]:
        """The leader finished (None: abandoned): the copies for the rows that waited on it."""
        waiting = self._waiting.pop(request.fingerprint, [])
        if result is None or result.status is not Status.OK:
            return []
        self._answers[request.fingerprint] = result
        if len(self._answers) > KEPT_ANSWERS:
            self._answers.popitem(last=False)
        return [self._copy(result, follower) for follower in waiting]

    def _copy(self, answer: RowResult, request: Request) -> RowResult:
        self.copies += 1
        return replace(
            answer,
            id=request.row_id,
            line=request.line,
            fingerprint=request.fingerprint,
            key=request.identity,
            usage=None,
            cost_usd=0.0,
            attempts=0,
            copy_of=answer.id,
            attempt_log=(),
        )


def check_dedupe(job: Job) -> None:
    """Message Batches send every row in one go: no leader to wait for, no cache to ask."""
    if job.mode is Mode.BATCH and (job.dedupe or job.cache):
        raise UsageError("--dedupe and --cache work with --mode stream only")
