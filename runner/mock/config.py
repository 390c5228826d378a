"""How the mock API behaves: latency, faults, rate limits, limits of the wire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runner.mock.replies import MAX_REPLY_TOKENS, MIN_REPLY_TOKENS

# Every fault the mock can inject; see faults.py for what each one does on the wire.
FAULT_KINDS: tuple[str, ...] = (
    "429",
    "529",
    "500",
    "503",
    "408",
    "400",
    "401",
    "403",
    "404",
    "413",
    "spend_cap",
    "reset",
    "error_event",
    "drop",
    "no_stop",
    "stall",
    "unknown_event",
    "should_retry_false",
    "should_retry_true",
)


@dataclass(frozen=True)
class MockConfig:
    """Settings of one mock server; the defaults behave like a healthy, unlimited API."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    # Output tokens of a reply, drawn between these two (inclusive), before max_tokens cuts it.
    reply_tokens: tuple[int, int] = (MIN_REPLY_TOKENS, MAX_REPLY_TOKENS)
    # Tokens in each text delta; 0 draws one to four per delta.
    tokens_per_delta: int = 0
    # Write streams in pieces of this many bytes (0: whole), so clients meet split UTF-8.
    fragment_bytes: int = 0
    api_key: str | None = None
    seed: int = 0
    # Probability per attempt of each fault kind, e.g. {"500": 0.05}; they must sum to <= 1.
    faults: Mapping[str, float] = field(default_factory=dict)
    stall_s: float = 3600.0
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    ratelimit_headers: bool = True
    # The real API's request size limit for the Messages endpoint is 32 MB.
    max_request_bytes: int = 32 * 1024 * 1024
    context_window: int = 200_000
    # Answer every request as this model (message.model), as a reseller that substitutes.
    serve_model: str | None = None
    # Models served besides those of runner's price table (any other is a 404, as on the API).
    models: tuple[str, ...] = ()
    # Message Batches: how long a batch takes to process, each item's chance of ending
    # errored (api_error / overloaded_error) or expired, and the documented size limits.
    batch_processing_s: float = 0.5
    batch_errored: float = 0.0
    batch_expired: float = 0.0
    max_batch_requests: int = 100_000
    max_batch_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind(s): {', '.join(unknown)}")
        if any(not 0.0 <= p <= 1.0 for p in self.faults.values()):
            raise ValueError("fault probabilities must be between 0 and 1")
        if sum(self.faults.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer")
        if not 0.0 <= self.batch_errored + self.batch_expired <= 1.0 + 1e-9:
            raise ValueError("batch errored and expired rates must sum to at most 1")
        if min(self.batch_errored, self.batch_expired, self.batch_processing_s) < 0:
            raise ValueError("batch rates and processing time must not be negative")
        low, high = self.reply_tokens
        if not 1 <= low <= high:
            raise ValueError("reply tokens must be 1 <= MIN <= MAX")
        if self.tokens_per_delta < 0:
            raise ValueError("tokens per delta must not be negative")
        if self.latency_ms < 0 or self.chunk_delay_ms < 0 or self.stall_s < 0:
            raise ValueError("delays must not be negative")
