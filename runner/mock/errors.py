"""The one error of the mock's request checks: what the API would answer instead."""

from __future__ import annotations


class WireError(Exception):
    """A request the API refuses; carries the HTTP status and the Anthropic error type."""

    def __init__(self, message: str, status: int = 400, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
