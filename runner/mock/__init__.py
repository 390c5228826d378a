"""The bundled mock Anthropic Messages API: real wire format, faults and rate limits on demand.

The server parts load on first use (PEP 562), so `runner` does not import aiohttp at
every start just because the CLI lists the `mock-server` command.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from runner.mock.config import FAULT_KINDS, MockConfig
from runner.mock.record import MockRecord, ServedAttempt

_LAZY = {
    "MockServer": "runner.mock.serve",
    "serve_in_thread": "runner.mock.serve",
    "create_app": "runner.mock.server",
}

__all__ = [
    "FAULT_KINDS",
    "MockConfig",
    "MockRecord",
    "MockServer",
    "ServedAttempt",
    "create_app",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
