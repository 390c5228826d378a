"""The Message Batches API of the mock: batches, their processing, their results.

Follows https://docs.anthropic.com/en/api/creating-message-batches and its sibling
pages (retrieve, list, cancel, delete, results) and the batch-processing guide:

- a batch holds 1 to 100,000 requests and at most 256 MB of body; a larger body is
  answered 413. Each `custom_id` matches `^[a-zA-Z0-9_-]{1,64}$` and is unique in
  its batch. A request whose `params` the Messages API would refuse is not refused
  at create: it comes back as an `errored` item once the batch has ended;
- `processing_status` goes `in_progress` -> (`canceling` ->) `ended`; the per-item
  counts are reported once the batch has ended (until then every item is
  `processing`), and `results_url` is null until then;
- results are JSONL, one line per item, in no particular order (here: the order the
  items finished in, a seeded shuffle of the request order).

Items finish one after another over `batch_processing_s`; a cancel turns the items
not finished yet into `canceled`. `batch_errored` and `batch_expired` are each item's
probability of ending `errored` (api_error or overloaded_error) or `expired`, and
`[[fault:KIND]]` markers in a prompt map onto the item's result (see `_FAULT_ERRORS`).
This module does no I/O: the routes in server.py call it.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runner.mock.cache import PromptCache
from runner.mock.config import MockConfig
from runner.mock.encode import dumps, error_object, message_object
from runner.mock.faults import parse_markers, pick_fault
from runner.mock.params import check_model
from runner.mock.record import MockRecord, ServedAttempt
from runner.mock.replies import generate_reply
from runner.mock.wire import WireError, load_object, parse_messages_request, reject_extra

RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# A batch's requests expire 24 hours after it is created (its `expires_at`).
EXPIRES_AFTER_S = 24 * 3600
# The list endpoint's page size: default 20, from 1 to 1000.
LIST_DEFAULT, LIST_MAX = 20, 1000
# How long a canceled batch stays `canceling` before it ends.
CANCELING_S = 0.05

# What an item's result is when a fault marker (or --fault) picks that kind for it.
# Stream-only faults (drop, stall, reset, no_stop) have no batch form: the item succeeds.
_FAULT_ERRORS: dict[str, tuple[str, str]] = {
    "400": ("invalid_request_error", "Invalid request (injected by the mock API)"),
    "401": ("authentication_error", "invalid x-api-key"),
    "403": ("permission_error", "Your API key does not have permission to use this model."),
    "404": ("not_found_error", "model: not found"),
    "413": ("invalid_request_error", "Request exceeds the maximum allowed number of bytes."),
    "spend_cap": ("billing_error", "Your credit balance is too low to access the API."),
    "429": ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    "529": ("overloaded_error", "Overloaded"),
    "error_event": ("overloaded_error", "Overloaded"),
    "500": ("api_error", "Internal server error"),
    "503": ("api_error", "Service unavailable"),
    "should_retry_false": ("api_error", "Internal server error"),
    "should_retry_true": ("invalid_request_error", "Invalid request"),
    "408": ("timeout_error", "Request timed out"),
}


class BatchNotFound(WireError):
    """No batch with that id (or it was deleted)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"message batch {batch_id!r} not found", 404, "not_found_error")


@dataclass(slots=True)
class MockBatch:
    """One batch: its requests until they are processed, then its result lines."""

    id: str
    created_at: float
    processing_s: float
    requests: list[tuple[str, Any]]  # (custom_id, params), dropped once processed
    order: list[int]  # item indices in the order they finish
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    lines: list[bytes] = field(default_factory=list)  # result lines, in finishing order
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """How many requests the batch holds."""
        return len(self.order)

    def finished_by(self, moment: float) -> int:
        """How many items have finished processing at `moment`."""
        if self.processing_s <= 0:
            return self.size
        share = (moment - self.created_at) / self.processing_s
        return max(0, min(self.size, int(share * self.size)))


class BatchBook:
    """Every batch one mock server holds, newest last; serves their items on demand."""

    def __init__(
        self, config: MockConfig, record: MockRecord, cache: PromptCache, seen: dict[str, int]
    ) -> None:
        self._config, self._record, self._cache, self._seen = config, record, cache, seen
        self._batches: dict[str, MockBatch] = {}

    def clear(self) -> None:
        """Forget every batch."""
        self._batches.clear()

    def create(self, body: bytes) -> MockBatch:
        """Validate a create body and start a batch; invalid params are kept for `errored`."""
        requests = _parse_create(body, self._config.max_batch_requests)
        batch_id = "msgbatch_mock_" + os.urandom(12).hex()
        order = list(range(len(requests)))
        random.Random(f"{self._config.seed}:{batch_id}").shuffle(order)
        batch = MockBatch(batch_id, time.time(), self._config.batch_processing_s, requests, order)
        self._batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> MockBatch:
        """The batch, brought up to date (ended once its time is up)."""
        batch = self._batches.get(batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        self._advance(batch, time.time())
        return batch

    def page(
        self, limit: int = LIST_DEFAULT, before_id: str | None = None, after_id: str | None = None
    ) -> tuple[list[MockBatch], bool]:
        """One page of batches, newest first, and whether more lie in that direction."""
        newest_first = list(reversed(self._batches))
        if after_id is not None:
            start = _index(newest_first, after_id) + 1
            chosen = newest_first[start : start + limit]
            more = start + limit < len(newest_first)
        elif before_id is not None:
            end = _index(newest_first, before_id)
            chosen = newest_first[max(0, end - limit) : end]
            more = end - limit > 0
        else:
            chosen, more = newest_first[:limit], len(newest_first) > limit
        return [self.get(batch_id) for batch_id in chosen], more

    def cancel(self, batch_id: str) -> MockBatch:
        """Start canceling: items not finished by now will be `canceled`."""
        batch = self.get(batch_id)
        if batch.ended_at is None and batch.cancel_initiated_at is None:
            batch.cancel_initiated_at = time.time()
        return batch

    def delete(self, batch_id: str) -> None:
        """Delete an ended batch; one still processing must be canceled first."""
        batch = self.get(batch_id)
        if batch.ended_at is None:
            raise WireError(
                f"message batch {batch_id} is still processing: cancel it before deleting it"
            )
        del self._batches[batch_id]

    def result_lines(self, batch_id: str) -> list[bytes]:
        """The JSONL lines of an ended batch's results."""
        batch = self.get(batch_id)
        if batch.ended_at is None:
            raise WireError(f"message batch {batch_id} has not ended yet: no results")
        return batch.lines

    def _advance(self, batch: MockBatch, now: float) -> None:
        if batch.ended_at is not None:
            return
        canceled_at = batch.cancel_initiated_at
        if canceled_at is not None and now >= canceled_at + CANCELING_S:
            self._finish(batch, batch.finished_by(canceled_at), canceled_at + CANCELING_S)
        elif canceled_at is None and batch.finished_by(now) == batch.size:
            self._finish(batch, batch.size, batch.created_at + batch.processing_s)

    def _finish(self, batch: MockBatch, processed: int, ended_at: float) -> None:
        """Serve the first `processed` items in finishing order; cancel the rest."""
        counts = dict.fromkeys(RESULT_TYPES, 0)
        for position, index in enumerate(batch.order):
            custom_id, params = batch.requests[index]
            if position < processed:
                result = self._serve(batch.id, custom_id, params)
            else:
                result = {"type": "canceled"}
            counts[result["type"]] += 1
            batch.lines.append(dumps({"custom_id": custom_id, "result": result}) + b"\n")
        batch.requests = []
        batch.counts, batch.ended_at = counts, ended_at

    def _serve(self, batch_id: str, custom_id: str, params: Any) -> dict[str, Any]:
        """One item's result, as the Messages API would have answered its params."""
        request_id = "req_mock_" + os.urandom(12).hex()
        try:
            parsed = parse_messages_request(dumps(params))
            check_model(parsed.model, self._config.models)
            parse_markers(parsed.prompt)  # a malformed marker is the caller's mistake
        except WireError as exc:
            return _errored(exc.error_type, exc.message, request_id)
        number = self._seen.get(parsed.key, 0) + 1
        self._seen[parsed.key] = number
        attempt = ServedAttempt(
            key=parsed.key,
            prompt=parsed.prompt,
            number=number,
            request_id=batch_id,
            started_at=time.time(),
            custom_id=custom_id,
        )
        self._record.add(attempt)
        try:
            kind = self._fault_kind(parsed.key, number, parsed)
            if kind == "expired":
                self._record.update(attempt, fault=kind)
                return {"type": kind}
            if kind in _FAULT_ERRORS:
                error_type, message = _FAULT_ERRORS[kind]
                self._record.update(attempt, status=200, error_type=error_type)
                return _errored(error_type, message, request_id)
            reply = generate_reply(parsed)
            usage = self._cache.use(parsed).as_usage(reply.output_tokens)
            usage["service_tier"] = "batch"
            self._record.update(
                attempt,
                status=200,
                text=reply.text,
                usage=usage,
                output_tokens_generated=reply.output_tokens,
                stop_reason=reply.stop_reason,
                completed=True,
            )
            message_id = "msg_" + request_id.removeprefix("req_")
            return {
                "type": "succeeded",
                "message": message_object(message_id, parsed.model, reply, usage),
            }
        finally:
            self._record.finish(attempt, time.time())

    def _fault_kind(self, key: str, number: int, parsed: Any) -> str | None:
        """A marker's or --fault's kind first, then the item's errored / expired draw."""
        fault = pick_fault(parsed, number, self._config)
        if fault is not None:
            return fault.kind
        config = self._config
        if not (config.batch_errored or config.batch_expired):
            return None
        draw = random.Random(f"{config.seed}:batch:{key}:{number}").random()
        if draw < config.batch_errored:
            return "500" if draw < config.batch_errored / 2 else "529"
        if draw < config.batch_errored + config.batch_expired:
            return "expired"
        return None


def batch_object(batch: MockBatch, base_url: str) -> dict[str, Any]:
    """The batch as the API shows it (a `message_batch` object)."""
    ended = batch.ended_at is not None
    counts = (
        batch.counts if ended else dict.fromkeys(("succeeded", "errored", "canceled", "expired"), 0)
    )
    processing = "ended" if ended else "in_progress"
    if not ended and batch.cancel_initiated_at is not None:
        processing = "canceling"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": processing,
        "request_counts": {"processing": 0 if ended else batch.size, **counts},
        "ended_at": _rfc3339(batch.ended_at),
        "created_at": _rfc3339(batch.created_at),
        "expires_at": _rfc3339(batch.created_at + EXPIRES_AFTER_S),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at),
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def chunks(lines: list[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """The result lines joined into writes of about `size` bytes."""
    buffer: list[bytes] = []
    length = 0
    for line in lines:
        buffer.append(line)
        length += len(line)
        if length >= size:
            yield b"".join(buffer)
            buffer, length = [], 0
    if buffer:
        yield b"".join(buffer)


def _errored(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    error = {"type": "error", "error": error_object(error_type, message), "request_id": request_id}
    return {"type": "errored", "error": error}


def _parse_create(body: bytes, max_requests: int) -> list[tuple[str, Any]]:
    """The (custom_id, params) pairs of a create body; a malformed body is a 400."""
    data = load_object(body)
    reject_extra(data, frozenset({"requests"}))
    requests = data.get("requests")
    if "requests" not in data:
        raise WireError("requests: Field required")
    if not isinstance(requests, list) or not requests:
        raise WireError("requests: List should have at least 1 item")
    if len(requests) > max_requests:
        raise WireError(f"requests: List should have at most {max_requests} items")
    pairs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(requests):
        path = f"requests.{i}"
        if not isinstance(item, dict):
            raise WireError(f"{path}: Input should be a valid dictionary")
        extra = sorted(set(item) - {"custom_id", "params"})
        if extra:
            raise WireError(f"{path}.{extra[0]}: Extra inputs are not permitted")
        for name in ("custom_id", "params"):
            if name not in item:
                raise WireError(f"{path}.{name}: Field required")
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise WireError(f"{path}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'")
        if custom_id in seen:
            raise WireError(f"{path}.custom_id: duplicate custom_id {custom_id!r} in the batch")
        seen.add(custom_id)
        if not isinstance(item["params"], dict):
            raise WireError(f"{path}.params: Input should be a valid dictionary")
        pairs.append((custom_id, item["params"]))
    return pairs


def _index(batches: list[str], batch_id: str) -> int:
    try:
        return batches.index(batch_id)
    except ValueError:
        raise BatchNotFound(batch_id) from None


def _rfc3339(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
