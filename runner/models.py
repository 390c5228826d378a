"""The values that flow between the stages: rows, requests, usage, attempts, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Final state of one input row in the results."""

    OK = "ok"
    ERROR = "error"
    INVALID = "invalid"


class Outcome(StrEnum):
    """How one HTTP attempt ended (the attempts table's `outcome`)."""

    OK = "ok"
    HTTP_ERROR = "http_error"
    MIDSTREAM_ERROR = "midstream_error"
    DROPPED = "dropped"
    EOF_WITHOUT_STOP = "eof_without_stop"
    STALLED = "stalled"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    # A Message Batches item's result type other than `succeeded` (which is OK).
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"
    MALFORMED = "malformed"
    TOO_LARGE = "response_too_large"


@dataclass(frozen=True, slots=True)
class InputRow:
    """One readable input record: its id, its line in the file, and its columns."""

    id: str
    line: int
    columns: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """An input record that cannot be sent; `reason` says why, `line` says where."""

    id: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Request:
    """A rendered Messages API request for one row, ready to send."""

    row_id: str
    line: int
    model: str
    # The Messages API params as JSON, without `stream`: the stream backend adds it
    # (provider.streaming), the batch backend sends them as they are.
    body: bytes
    fingerprint: str
    estimated_input_tokens: int
    max_tokens: int
    # Set by resume.py when the input has no id column: fingerprint and occurrence number.
    key: str = ""
    # The request asked for JSON (structured outputs): the answer must parse as JSON.
    wants_json: bool = False
    # The job keeps the answer's thinking text.
    keep_thinking: bool = False

    @property
    def identity(self) -> str:
        """What makes the row "already done" across sessions (README: row identity).

        The id when the input has an id column, else the request fingerprint with an
        occurrence number, so identical rows without ids each run once. Never the line.
        """
        return self.key or self.row_id


# The four token counts of a usage, as the API and the results table name them.
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the API reported it (cache creation split by TTL when known)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The 5-minute / 1-hour split of cache_creation_input_tokens, from
    # message_start's usage.cache_creation; all 5-minute when the API omits it.
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    # Billed per request (usage.server_tool_use), and where inference ran (usage.inference_geo).
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    inference_geo: str | None = None

    @property
    def total_tokens(self) -> int:
        """The seed's "total tokens": input plus output."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt (or one Message Batches item) for one row: a row of the attempts table."""

    row_id: str
    number: int
    started_at: float
    outcome: Outcome
    latency_ms: float
    fingerprint: str
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    retry_after_s: float | None = None
    wait_s: float | None = None
    request_id: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    custom_id: str | None = None  # a batch item's custom_id (request_id is then the batch id)
    key: str = ""  # the row's identity (Request.identity); "" reads as the row id


@dataclass(frozen=True, slots=True)
class RowResult:
    """The outcome of one input row: one row of the results table."""

    id: str
    line: int
    status: Status
    model: str | None
    fingerprint: str = ""
    output_text: str | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    attempts: int = 0
    served_model: str | None = None
    # --dedupe: the id of the row whose answer this one copies (sent once, paid once).
    copy_of: str | None = None
    stop_details: str | None = None  # JSON
    tool_calls: str | None = None  # JSON: [{"id", "name", "input"}, ...]
    output_json: str | None = None  # the structured answer, compact JSON
    thinking: str | None = None
    thinking_tokens: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    attempt_log: tuple[Attempt, ...] = field(default=())
    key: str = ""  # the row's identity (Request.identity); "" reads as the row id

    @classmethod
    def for_request(cls, request: Request, status: Status, **fields: Any) -> RowResult:
        """The result of a sent (or answered) request: its row's id, line, model and identity."""
        return cls(
            id=request.row_id,
            line=request.line,
            status=status,
            model=request.model,
            fingerprint=request.fingerprint,
            key=request.identity,
            **fields,
        )
