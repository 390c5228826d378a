"""The fields a price file may hold, and how each is checked (one message per mistake)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
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


def table_field(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """A sub-table of a price file (empty if absent)."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}: field {key!r} must be a table")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """A price file, parsed; an unreadable or invalid one is a usage error naming it."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"prices file {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"prices file {path}: not valid TOML: {exc}") from exc
