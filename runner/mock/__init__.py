"""The bundled mock Anthropic Messages API: real wire format, faults and rate limits on demand."""

from __future__ import annotations

from runner.mock.config import FAULT_KINDS, MockConfig
from runner.mock.record import MockRecord, ServedAttempt
from runner.mock.serve import MockServer, serve_in_thread
from runner.mock.server import create_app

__all__ = [
    "FAULT_KINDS",
    "MockConfig",
    "MockRecord",
    "MockServer",
    "ServedAttempt",
    "create_app",
    "serve_in_thread",
]
