"""What runner knows of the Messages API's request parameters: names, and which take text.

Unknown parameters are passed on (the API grows), but a name one letter away from a
known one is a typo the job file reports with a did-you-mean. Source:
https://docs.anthropic.com/en/api/messages (request body), as of 2026-11.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

__all__ = [
    "DEFAULT_ROW_FIELDS",
    "KNOWN_PARAMS",
    "ROW_PARAM_MESSAGES",
    "close_known_param",
    "param_from_cell",
]

# Every top-level field of POST /v1/messages that a job may set.
KNOWN_PARAMS = (
    "model",
    "max_tokens",
    "messages",
    "system",
    "metadata",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "output_format",
    "service_tier",
    "container",
    "context_management",
    "mcp_servers",
    "inference_geo",
)
# Set by runner itself: a job cannot turn streaming off.
_RESERVED = ("stream",)
# Parameters whose value is text: a CSV cell is taken as it is, not parsed as JSON.
_TEXT_PARAMS = frozenset({"model", "system", "service_tier", "container", "inference_geo"})
# A column with one of these names sets that field of its row's request unless the job
# maps the field elsewhere ([request.columns]) or turns the default off.
DEFAULT_ROW_FIELDS = ("model", "system", "max_tokens", "messages")
ROW_PARAM_MESSAGES = "messages"


def close_known_param(name: str) -> str | None:
    """The known parameter `name` is probably a typo of (None if it is new or exact)."""
    if name in KNOWN_PARAMS:
        return None
    if name in _RESERVED:
        return name
    close = difflib.get_close_matches(name, KNOWN_PARAMS, n=1, cutoff=0.8)
    return close[0] if close else None


def param_from_cell(name: str, value: Any) -> tuple[Any, str | None]:
    """A row's value for parameter `name`: (value, None), or (None, why it cannot be used).

    JSON values (JSONL, Parquet) are used as they are. A text cell (CSV) is text for
    the parameters that take text and JSON for the rest (`0.7`, `{"user_id": "u1"}`).
    """
    if not isinstance(value, str) or name in _TEXT_PARAMS:
        return value, None
    try:
        return json.loads(value), None
    except ValueError:
        return None, f"column for '{name}' is not valid JSON: {value[:40]!r}"
