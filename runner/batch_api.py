"""The Message Batches endpoints, spoken exactly as documented, and their errors translated.

https://docs.anthropic.com/en/api/creating-message-batches and its siblings:
`POST /v1/messages/batches` (create), `GET .../{id}` (retrieve: poll until
`processing_status` is `ended`), `GET /v1/messages/batches` (list, newest first,
paged by `after_id`), `POST .../{id}/cancel`, and the results as JSONL from the
batch's `results_url`, which is never built by hand.

Every call but create is retried on a retryable failure. Create has no idempotency
key: if its answer is lost after the body went out, the server may or may not hold
the batch, so `CreateUnconfirmed` is raised and the caller finds out by listing.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import anyio
import httpx

from runner.errors import ApiError, AttemptFacts, ConnectError, RetryableError, RunnerError
from runner.models import Outcome
from runner.provider import BATCHES_PATH, http_error

T = TypeVar("T")

# How often a poll, list or results download is tried before the run stops (exit 3).
CALL_ATTEMPTS = 8
# Backoff between those tries: 1 s, 2 s, 4 s ... capped, plus jitter.
BACKOFF_CAP_S = 60.0
# The list endpoint's largest page.
LIST_PAGE = 1000


class CreateUnconfirmed(RunnerError):
    """The create call's body went out but no answer came back: a batch may exist."""

    exit_code = 3


class BatchApi:
    """The Batches endpoints of one base URL with one set of headers."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: httpx.Headers) -> None:
        self._http = http
        self._root = base_url + BATCHES_PATH
        self._headers = httpx.Headers(headers)
        self._headers["accept"] = "application/json"

    async def create(self, body: bytes) -> dict[str, Any]:
        """Create a batch once; an unconfirmed create raises CreateUnconfirmed, never retries."""
        try:
            response = await self._http.post(self._root, content=body, headers=self._headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing reached the server: safe for the caller to try again.
            raise _connect_error(exc) from None
        except httpx.TransportError as exc:
            raise CreateUnconfirmed(
                f"creating a batch: no answer after the request was sent ({type(exc).__name__})"
            ) from None
        return _json(response)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch object now."""
        return await retried(lambda: self._call("GET", f"{self._root}/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the API to cancel a batch; it goes `canceling`, then `ended`."""
        return await retried(lambda: self._call("POST", f"{self._root}/{batch_id}/cancel"))

    async def created_since(self, cutoff: datetime) -> list[dict[str, Any]]:
        """Every batch created at or after `cutoff`, newest first (pages until older ones)."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE}
            if after is not None:
                params["after_id"] = after
            page = await retried(partial(self._call, "GET", self._root, params))
            batches = page.get("data") or []
            for batch in batches:
                if parse_time(batch["created_at"]) < cutoff:
                    return found
                found.append(batch)
            if not page.get("has_more") or not batches:
                return found
            after = page.get("last_id") or batches[-1]["id"]

    async def results(self, results_url: str) -> AsyncIterator[dict[str, Any]]:
        """The result lines of an ended batch, as they stream in (one download, not retried)."""
        try:
            async with self._http.stream("GET", results_url, headers=self._headers) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode("utf-8", "replace")
                    raise http_error(response, body)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise _connect_error(exc) from None
        except json.JSONDecodeError as exc:
            raise ConnectError(
                f"batch results: a line is not JSON ({exc})",
                AttemptFacts(outcome=Outcome.DROPPED, error_type="invalid_results"),
            ) from None

    async def _call(
        self, method: str, url: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, params=params, headers=self._headers)
        except httpx.TransportError as exc:
            raise _connect_error(exc) from None
        return _json(response)


async def retried(call: Callable[[], Awaitable[T]], attempts: int = CALL_ATTEMPTS) -> T:
    """Await `call` until it succeeds or fails for good; the last failure is raised."""
    for number in range(1, attempts + 1):
        try:
            return await call()
        except RetryableError as exc:
            if number == attempts:
                raise
            delay = min(BACKOFF_CAP_S, 2.0 ** (number - 1)) + random.random()
            if exc.facts.retry_after_s is not None:
                delay = min(exc.facts.retry_after_s, BACKOFF_CAP_S)
            await anyio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def parse_time(value: str) -> datetime:
    """An RFC 3339 time of the API (`...Z` or with an offset)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise http_error(response, response.text)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ConnectError(
            f"the batches endpoint answered 200 without a JSON object: {response.text[:200]!r}",
            AttemptFacts(outcome=Outcome.HTTP_ERROR, http_status=200, error_type="bad_answer"),
        )
    return data


def _connect_error(exc: httpx.TransportError) -> ApiError:
    outcome = Outcome.TIMEOUT if isinstance(exc, httpx.TimeoutException) else Outcome.CONNECT_ERROR
    return ConnectError(
        f"batches endpoint: {type(exc).__name__}: {exc}",
        AttemptFacts(outcome=outcome, error_type=str(outcome)),
    )
