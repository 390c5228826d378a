"""The worker pool: a bounded queue of requests, N workers, retries, and an orderly stop."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx
from anyio.abc import ObjectReceiveStream
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from runner.budget import Budget
from runner.cache import AnswerCache
from runner.client import Completion, stream_message
from runner.content import with_answer_content
from runner.dedupe import Deduper
from runner.errors import (
    ApiError,
    ConnectError,
    FatalApiError,
    HttpRetryableError,
    LocalFailureError,
    ModelNotFoundError,
    RetryableError,
    UnreachableError,
)
from runner.limiter import RateLimiter
from runner.models import Attempt, Outcome, Request, RowResult, Status, Usage
from runner.pricing import PriceTable
from runner.reach import Reachability
from runner.stats import RunStats
from runner.transport import ApiClient

log = logging.getLogger("runner")

# Backoff without a retry-after: 0.5 s, 1 s, 2 s ... capped at 30 s, plus up to 1 s of jitter.
_backoff = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=1.0)
# Statuses whose retry-after pauses the whole pool, not only the worker that got it.
_POOL_PAUSE_STATUSES = frozenset({429, 529})

RecordFn = Callable[[RowResult | None, list[Attempt]], None]


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A request to send, with the attempts earlier runs already made for its row."""

    request: Request
    prior_attempts: int = 0


class StopControl:
    """Stops dispatching; in-flight rows finish within a grace period, then are cancelled."""

    def __init__(self) -> None:
        self.stopping = False
        self.fatal: FatalApiError | None = None
        self.local_failure: LocalFailureError | None = None
        self.workers_scope: anyio.CancelScope | None = None
        self._deadline_task_started = False
        self._task_group: anyio.abc.TaskGroup | None = None

    def bind(self, task_group: anyio.abc.TaskGroup) -> anyio.CancelScope:
        """Start controlling: the timer runs in `task_group`; returns the workers' scope."""
        self._task_group = task_group
        self.workers_scope = anyio.CancelScope()
        return self.workers_scope

    def fail_locally(self, exc: LocalFailureError) -> None:
        """A local failure (disk full, no file handles) stops the run now (exit 4)."""
        if self.local_failure is None:
            self.local_failure = exc
        self.stop(0)

    def stop(self, grace: float) -> None:
        """Take no new rows; cancel what is still in flight after `grace` seconds."""
        self.stopping = True
        if self.workers_scope is None or self._task_group is None:
            return
        if grace <= 0:
            self.workers_scope.cancel()
            return
        if not self._deadline_task_started:
            self._deadline_task_started = True
            self._task_group.start_soon(self._cancel_after, grace)

    async def _cancel_after(self, grace: float) -> None:
        await anyio.sleep(grace)
        if self.workers_scope is not None:
            self.workers_scope.cancel()


class _Abandoned(Exception):
    """The run is stopping: this row's next attempt is not made."""


class WorkerPool:
    """Sends each request with retries and hands every finished row to `record`."""

    def __init__(
        self,
        http: ApiClient,
        url: str,
        headers: httpx.Headers,
        limiter: RateLimiter,
        prices: PriceTable,
        record: RecordFn,
        stats: RunStats,
        control: StopControl,
        *,
        max_attempts: int,
        max_retry_after: float,
        fatal_grace: float,
        budget: Budget | None = None,
        dedupe: Deduper | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.http = http
        self.url = httpx.URL(url)
        self.headers = headers
        self.limiter = limiter
        self.prices = prices
        self.record = record
        self.stats = stats
        self.control = control
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.fatal_grace = fatal_grace
        self.budget = budget
        self.dedupe = dedupe
        self.cache = cache
        self.reach = Reachability(self.url)
        self.succeeded = False  # some attempt returned a whole answer

    async def worker(self, queue: ObjectReceiveStream[WorkItem]) -> None:
        """Take rows from the queue until it closes or the run stops."""
        async with queue:
            async for item in queue:
                # Once stopping, the rest of the queue is drained unsent (those rows stay
                # for a resume): the producer stops at its next row, while a queue left
                # with no reader would fail the send it is waiting in.
                if self.control.stopping:
                    continue
                try:
                    await self._handle(item)
                except LocalFailureError as exc:
                    # Disk full, no file handles: stop at once, nothing more can be kept.
                    self.control.fail_locally(exc)

    async def _handle(self, item: WorkItem) -> bool:
        """Answer one row: a copy (dedupe, cache) or a request; False once the budget stops it."""
        request = item.request
        lead = True if self.dedupe is None else self.dedupe.lead(request)
        if isinstance(lead, RowResult):
            self._record_copies([lead])
            return True
        if not lead:
            return True  # answered when its leader is
        result = self.cache.answer(request) if self.cache is not None else None
        if result is not None:
            self._record_copies([result])
        elif self.budget is None:
            result = await self.process(item)
        else:
            reservation = await self.budget.reserve(request)
            if reservation is None:
                # The cap is near: send nothing new, let what is in flight finish.
                self.control.stop(math.inf)
                return False
            try:
                result = await self.process(item)
            finally:
                self.budget.release(reservation)
        if self.cache is not None:
            self.cache.keep(request, result)
        if self.dedupe is not None:
            self._record_copies(self.dedupe.finish(request, result))
        return True

    def _record_copies(self, copies: list[RowResult]) -> None:
        for copy in copies:
            self.record(copy, [])
            self.stats.add_result(copy)

    async def process(self, item: WorkItem) -> RowResult | None:
        """Send one row until it succeeds, fails for good, or the run stops."""
        request = item.request
        attempts: list[Attempt] = []
        self.stats.in_flight += 1
        try:
            completion = await self._send_with_retries(request, item.prior_attempts, attempts)
        except _Abandoned:
            return None  # every attempt made was journaled before its retry wait
        except ApiError as exc:
            stop = self._stops_the_run(request, exc)
            if stop is not None:
                # The run's fault, not the row's: the row stays untouched for the next run.
                self.record(None, attempts[-1:])
                self.control.fatal = self.control.fatal or stop
                self.control.stop(self.fatal_grace)
                return None
            result = self._failed(request, item.prior_attempts, attempts, exc)
            self.record(result, attempts[-1:])
            self.stats.add_result(result)
            if isinstance(exc, FatalApiError):
                self.control.fatal = self.control.fatal or exc
                self.control.stop(self.fatal_grace)
            return result
        finally:
            self.stats.in_flight -= 1
        result = RowResult.for_request(
            request,
            Status.OK,
            output_text=completion.text,
            stop_reason=completion.stop_reason,
            usage=completion.usage,
            # Priced by the model that answered; `model` stays the one asked for.
            cost_usd=self.prices.cost(completion.served_model or request.model, completion.usage),
            served_model=completion.served_model,
            attempts=item.prior_attempts + len(attempts),
            request_id=completion.request_id,
            ttft_ms=completion.ttft_ms,
            latency_ms=completion.latency_ms,
        )
        result = with_answer_content(result, request, completion)
        self.record(result, attempts[-1:])
        self.stats.add_result(result)
        return result

    def _stops_the_run(self, request: Request, exc: ApiError) -> FatalApiError | None:
        """The fatal error when `exc` is about the whole run rather than this row."""
        if isinstance(exc, FatalApiError):
            return exc if isinstance(exc, UnreachableError) else None
        if isinstance(exc, ModelNotFoundError) and not self.succeeded:
            return FatalApiError(
                f"model {request.model!r} not found at {self.url} ({exc.message}): check the "
                "model id, it may be retired; no row was marked failed",
                exc.facts,
            )
        if isinstance(exc, ConnectError) and not self.reach.answered:
            return self.reach.stop(exc)
        return None

    async def _send_with_retries(
        self, request: Request, prior: int, attempts: list[Attempt]
    ) -> Completion:
        retrying: list[str] = []  # why this row waits for its next attempt, if it does

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            delay = _backoff(state)
            retry_after = exc.facts.retry_after_s if isinstance(exc, ApiError) else None
            if retry_after is not None:
                # The server knows best; a little jitter keeps the pool from waking as one.
                delay = min(retry_after, self.max_retry_after) * (1 + 0.1 * random.random())
            if isinstance(exc, ConnectError):
                delay = self.reach.retry_delay(delay)
            if state.attempt_number < self.max_attempts:
                attempts[-1] = replace(attempts[-1], wait_s=round(delay, 3))
                reason = attempts[-1].error_type or str(attempts[-1].outcome)
                self.stats.retrying[reason] += 1
                retrying.append(reason)
            return delay

        retrier = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait,
            retry=retry_if_exception_type(RetryableError),
            # A failed attempt is journaled as soon as it ends, not when its row does: a
            # kill -9 during the retries then loses none of what they cost. The last
            # attempt of a row is journaled with the row.
            before_sleep=lambda state: self.record(None, attempts[-1:]),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrier:
                with attempt:
                    while retrying:
                        self.stats.retrying[retrying.pop()] -= 1
                    if self.control.stopping and attempts:
                        raise _Abandoned
                    return await self._attempt(request, prior + len(attempts) + 1, attempts)
        finally:
            while retrying:
                self.stats.retrying[retrying.pop()] -= 1
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(self, request: Request, number: int, attempts: list[Attempt]) -> Completion:
        ticket = await self.limiter.admit(request)
        started_at = time.time()
        started = time.perf_counter()
        try:
            completion = await stream_message(
                self.http, self.url, self.headers, request, self._on_response
            )
        except ApiError as exc:
            facts = exc.facts
            self.limiter.settle(ticket, facts.usage)
            if isinstance(exc, HttpRetryableError) and facts.http_status in _POOL_PAUSE_STATUSES:
                retry_after = facts.retry_after_s
                if retry_after is not None:
                    retry_after = min(retry_after, self.max_retry_after)
                self.limiter.on_overloaded(facts.http_status, retry_after)
            self._log_attempt(
                attempts,
                request,
                number,
                started_at,
                (time.perf_counter() - started) * 1000.0,
                facts.outcome,
                facts.usage,
                http_status=facts.http_status,
                error_type=facts.error_type,
                error_message=exc.message,
                retry_after_s=facts.retry_after_s,
                request_id=facts.request_id,
            )
            if isinstance(exc, ConnectError):
                unreachable = self.reach.connect_failed(exc)
                if unreachable is not None:
                    raise unreachable from None
            raise
        except BaseException:
            # Cancelled mid-stream: give the ticket back; the attempt is lost in flight.
            self.limiter.settle(ticket, None)
            raise
        self.limiter.settle(ticket, completion.usage)
        self.succeeded = True
        self._log_attempt(
            attempts,
            request,
            number,
            started_at,
            completion.latency_ms,
            Outcome.OK,
            completion.usage,
            served_model=completion.served_model,
            http_status=200,
            request_id=completion.request_id,
        )
        return completion

    def _on_response(self, response: httpx.Response) -> None:
        """Response headers arrived: the endpoint is reachable, and they carry rate limits."""
        self.reach.answer()
        self.limiter.observe(response)

    def _log_attempt(
        self,
        attempts: list[Attempt],
        request: Request,
        number: int,
        started_at: float,
        latency_ms: float,
        outcome: Outcome,
        usage: Usage | None,
        served_model: str | None = None,
        **details: Any,
    ) -> None:
        attempt = Attempt(
            row_id=request.row_id,
            number=number,
            started_at=started_at,
            outcome=outcome,
            latency_ms=latency_ms,
            fingerprint=request.fingerprint,
            key=request.identity,
            usage=usage,
            # No usage reported: the attempt failed before any token was billed ($0).
            cost_usd=self.prices.cost(served_model or request.model, usage or Usage()),
            **details,
        )
        attempts.append(attempt)
        self.stats.add_attempt(attempt)

    def _failed(
        self, request: Request, prior: int, attempts: list[Attempt], exc: ApiError
    ) -> RowResult:
        return RowResult.for_request(
            request,
            Status.ERROR,
            attempts=prior + len(attempts),
            error_type=exc.facts.error_type,
            error_message=exc.message,
            request_id=exc.facts.request_id,
        )
