"""The fields a price file may hold, and how each is checked (one message per mistake)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from typing import Any

from runner.errors import UsageError

PRICE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
LIFECYCLE_FIELDS = ("deprecated", "retires", "replacement")
TOP_FIELDS = (
    "as_of",
    "source",
    "batch_multiplier",
    "scale",
    "fees",
    "inference_geo",
    "models",
)
MODEL_FIELDS = (*PRICE_FIELDS, *LIFECYCLE_FIELDS, "aliases", "scale", "long_prompt", "source")


def number(value: Any, where: str, key: str) -> float:
    """A price or multiplier: a finite, non-negative int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: field {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{where}: field {key!r} must be a non-negative number, got {value!r}")
    return float(value)


def date_text(value: Any, where: str, key: str) -> str:
    """A string field; a TOML date (`retires = 2026-11-30`) becomes its ISO text."""
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise UsageError(f"{where}: field {key!r} must be a string")
    return value


def priced_dimension(
    entry: Any, value_key: str, where: str, defaults: Mapping[str, str]
) -> dict[str, Any]:
    """A fee or multiplier table: its value, and its own as_of and source (else the file's)."""
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: must be a table with {value_key!r}")
    unknown = sorted(set(entry) - {value_key, "as_of", "source"})
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}")
    if value_key not in entry:
        raise UsageError(f"{where}: missing field {value_key!r}")
    return {
        value_key: number(entry[value_key], where, value_key),
        "as_of": date_text(entry.get("as_of", defaults["as_of"]), where, "as_of"),
        "source": date_text(entry.get("source", defaults["source"]), where, "source"),
    }
