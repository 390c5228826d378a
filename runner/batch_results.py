"""One batch item's result into the store: a finished row, an attempts row, or a resend.

https://docs.anthropic.com/en/api/retrieving-message-batch-results: each line is
`{"custom_id", "result": {"type": ...}}` with `succeeded` (a whole Message),
`errored` (an error response), `canceled` or `expired`. What runner does with each:

- `succeeded`: the row is `ok`, billed at the batch price;
- `errored` `invalid_request_error` (and other refusals): `error`, not sent again;
- `errored` `authentication_error`, `permission_error`, `billing_error`: the row is
  `error` and the run stops as a 401/403 does (exit 3);
- `errored` `api_error`, `overloaded_error`, `rate_limit_error`, `timeout_error`, and
  `expired`: sent again in a later batch, until the row has had `max_attempts` items;
- `canceled`: `error` with error_type `canceled` (a resume sends it again).

Only `succeeded` items are billed: the others carry no usage and a cost of $0.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from runner.batch_ledger import BatchItem, RetrySpool
from runner.errors import ApiError, AttemptFacts, FatalApiError
from runner.models import Attempt, Outcome, RowResult, Status, Usage
from runner.pool import RecordFn
from runner.pricing import PriceTable
from runner.provider import ItemVerdict, item_verdict
from runner.reading import AnswerReader, BadAnswer
from runner.stats import RunStats


class ItemSettler:
    """Turns batch results into records for the store's sink, and resends into a spool."""

    def __init__(
        self, record: RecordFn, prices: PriceTable, stats: RunStats, max_attempts: int
    ) -> None:
        self.record = record
        self.prices = prices
        self.stats = stats
        self.max_attempts = max_attempts
        self.spool: RetrySpool | None = None
        self.fatal: FatalApiError | None = None

    def settle(
        self, item: BatchItem, batch_id: str, custom_id: str, result: dict[str, Any]
    ) -> None:
        """Record one item's result (and its row, unless it is sent again)."""
        kind = result.get("type")
        if kind == "succeeded":
            self._succeeded(item, batch_id, custom_id, result.get("message") or {})
            return
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            error_type = str(error.get("type") or "api_error")
            message = str(error.get("message") or "")
            outcome = Outcome.ERRORED
        elif kind == "expired":
            error_type, outcome = "expired", Outcome.EXPIRED
            message = "the batch expired before this item was processed"
        elif kind == "canceled":
            error_type, outcome = "canceled", Outcome.CANCELED
            message = "the batch was canceled before this item was processed"
        else:
            error_type, outcome = "unknown_result", Outcome.ERRORED
            message = f"unknown result type {kind!r}"
        attempt = self._attempt(item, batch_id, custom_id, outcome, error_type, message)
        verdict = ItemVerdict.AGAIN if kind == "expired" else item_verdict(error_type)
        again = verdict is ItemVerdict.AGAIN
        if again and attempt.number < self.max_attempts and self.spool is not None:
            self.record(None, [attempt])
            self.stats.add_attempt(attempt)
            self.spool.add(_resend(item, attempt.number))
            return
        self._failed(item, attempt, error_type, message, batch_id)
        if verdict is ItemVerdict.FATAL and self.fatal is None:
            facts = AttemptFacts(outcome=outcome, error_type=error_type, request_id=batch_id)
            self.fatal = FatalApiError(f"batch item {custom_id}: {error_type}: {message}", facts)

    def missing(self, item: BatchItem, batch_id: str, custom_id: str) -> None:
        """An item the results never mentioned: treated as expired."""
        self.settle(item, batch_id, custom_id, {"type": "expired"})

    def too_large(self, item: BatchItem, max_bytes: int) -> None:
        """A row whose request alone is over the batch size limit: never sent."""
        message = f"the request alone is over the batch limit of {max_bytes:,} bytes"
        self._finish(
            self._row(item, item.prior, error_type="request_too_large", error_message=message), []
        )

    def refused(self, items: list[BatchItem], exc: ApiError) -> None:
        """The API refused a whole create call (400, 413): every row in it is an error."""
        for item in items:
            error_type = exc.facts.error_type
            self._finish(
                self._row(item, item.prior, error_type=error_type, error_message=exc.message), []
            )

    def _succeeded(
        self, item: BatchItem, batch_id: str, custom_id: str, message: dict[str, Any]
    ) -> None:
        try:
            completion = AnswerReader(time.perf_counter()).take_message(message)
        except BadAnswer as exc:
            # Not shaped as a Message: worth another item, as a server error is.
            error = {"type": "api_error", "message": f"malformed succeeded item: {exc}"}
            self.settle(item, batch_id, custom_id, {"type": "errored", "error": {"error": error}})
            return
        usage, served = completion.usage, completion.served_model
        # Priced by the model that answered; an unpriced model's cost is None, never $0.
        cost = self.prices.batch_cost(served or item.model, usage)
        attempt = self._attempt(item, batch_id, custom_id, Outcome.OK, None, None, usage, cost)
        result = RowResult(
            id=item.row_id,
            key=item.key,
            line=item.line,
            status=Status.OK,
            model=item.model,
            fingerprint=item.fingerprint,
            output_text=completion.text,
            stop_reason=completion.stop_reason,
            usage=usage,
            cost_usd=cost,
            attempts=attempt.number,
            request_id=batch_id,
            served_model=served,
            # A batch item keeps no request: no JSON check or thinking text in batch mode.
            tool_calls=completion.content.tool_calls_json(),
            stop_details=completion.stop_details,
            thinking_tokens=completion.thinking_tokens,
        )
        self._finish(result, [attempt])

    def _failed(
        self, item: BatchItem, attempt: Attempt, error_type: str, message: str, batch_id: str
    ) -> None:
        result = self._row(
            item, attempt.number, error_type=error_type, error_message=message, request_id=batch_id
        )
        self._finish(result, [attempt])

    def _row(self, item: BatchItem, attempts: int, **fields: Any) -> RowResult:
        """An `error` row for `item`."""
        return RowResult(
            id=item.row_id,
            key=item.key,
            line=item.line,
            status=Status.ERROR,
            model=item.model,
            fingerprint=item.fingerprint,
            attempts=attempts,
            **fields,
        )

    def _attempt(
        self,
        item: BatchItem,
        batch_id: str,
        custom_id: str,
        outcome: Outcome,
        error_type: str | None,
        message: str | None,
        usage: Usage | None = None,
        cost: float | None = 0.0,
    ) -> Attempt:
        return Attempt(
            row_id=item.row_id,
            key=item.key,
            number=item.prior + 1,
            started_at=0.0,
            outcome=outcome,
            latency_ms=0.0,
            fingerprint=item.fingerprint,
            error_type=error_type,
            error_message=message,
            request_id=batch_id,
            usage=usage,
            cost_usd=cost,
            custom_id=custom_id,
        )

    def _finish(self, result: RowResult, attempts: list[Attempt]) -> None:
        self.record(result, attempts)
        for attempt in attempts:
            self.stats.add_attempt(attempt)
        self.stats.add_result(result)


def _resend(item: BatchItem, attempts: int) -> BatchItem:
    return replace(item, prior=attempts)
