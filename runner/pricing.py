"""Prices as data, and the cost in USD of one usage.

The built-in table is `runner/data/prices.toml`; `--prices FILE` (say a reseller's own
rates) and a job file's `[prices]` table are laid over it in that order. All three have
one shape, prices in USD per million tokens:

    as_of = "2026-11-24"          # optional in an override
    source = "https://..."        # optional in an override
    batch_multiplier = 0.5        # optional in an override
    [models.claude-sonnet-4-5]
    aliases = ["claude-sonnet-4-5-20250929"]
    input = 3.0
    cache_write_5m = 3.75
    cache_write_1h = 6.0
    cache_read = 0.30
    output = 15.0

A new model needs all five prices; a model already in the table may set only the prices
it changes. A job's `[prices]` table may also name models directly (`[prices.MODEL]`).
The file is read on the first `PriceTable.load()`, never at import, never from the network.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.models import Usage

logger = logging.getLogger("runner")

PRICE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_TOP_FIELDS = ("as_of", "source", "batch_multiplier", "models")
_SNAPSHOT = re.compile(r"^(?P<name>.+)-\d{8}$")
_PER_TOKEN = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in USD per million tokens."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float


class PriceTable:
    """The prices in force for a run: built-in table plus any overrides."""

    def __init__(
        self,
        as_of: str,
        source: str,
        batch_multiplier: float,
        models: dict[str, ModelPrice],
        aliases: dict[str, str],
        overrides: list[str],
    ) -> None:
        self.as_of = as_of
        self.source = source
        self.batch_multiplier = batch_multiplier
        self._models = models
        self._aliases = aliases
        self._overrides = overrides
        self._warned: set[str] = set()

    @classmethod
    def load(
        cls, override: Path | None = None, extra: Mapping[str, Mapping] | None = None
    ) -> PriceTable:
        """Build the table: built-in prices, then the `override` file, then the job's `extra`."""
        builder = _Builder()
        builder.apply(_builtin(), "built-in price table", new_needs_top=True)
        if override is not None:
            builder.apply(_read_toml(override), f"prices file {override}")
        if extra is not None:
            # The job's [prices] table may be file-shaped or name the models directly.
            shaped = extra if isinstance(extra.get("models"), Mapping) else {"models": extra}
            builder.apply(shaped, "job file [prices] table")
        return builder.build(cls)

    def price_for(self, model: str) -> ModelPrice | None:
        """The prices of `model`, by name, alias or `<name>-YYYYMMDD` snapshot id."""
        name = self._resolve(model)
        if name is None:
            match = _SNAPSHOT.match(model)
            name = self._resolve(match["name"]) if match else None
        return self._models.get(name) if name is not None else None

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for one usage at standard rates; None (and one warning) for an unpriced model."""
        price = self.price_for(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning(
                    "no price for model %s: cost_usd left empty (add it with --prices FILE)",
                    model,
                )
            return None
        # The API may omit the 5m/1h split; whatever the split leaves out is a 5-minute
        # write (the default TTL), so cache creation is counted exactly once.
        split = usage.cache_creation_5m + usage.cache_creation_1h
        write_5m = usage.cache_creation_5m + max(0, usage.cache_creation_input_tokens - split)
        total = (
            usage.input_tokens * price.input
            + write_5m * price.cache_write_5m
            + usage.cache_creation_1h * price.cache_write_1h
            + usage.cache_read_input_tokens * price.cache_read
            + usage.output_tokens * price.output
        )
        return round(total / _PER_TOKEN, 10)

    def batch_cost(self, model: str, usage: Usage) -> float | None:
        """USD for one usage sent through the Message Batches API."""
        cost = self.cost(model, usage)
        return None if cost is None else round(cost * self.batch_multiplier, 10)

    def to_dict(self) -> dict[str, Any]:
        """The table in force, JSON-serialisable, for run.json."""
        by_model: dict[str, list[str]] = {name: [] for name in self._models}
        for alias, name in self._aliases.items():
            by_model[name].append(alias)
        return {
            "as_of": self.as_of,
            "source": self.source,
            "batch_multiplier": self.batch_multiplier,
            "overrides": list(self._overrides),
            "models": {
                name: {**asdict(price), "aliases": sorted(by_model[name])}
                for name, price in sorted(self._models.items())
            },
        }

    def _resolve(self, model: str) -> str | None:
        if model in self._models:
            return model
        return self._aliases.get(model)


class _Builder:
    """Lays price tables over one another, validating each as it goes."""

    def __init__(self) -> None:
        self.top: dict[str, Any] = {}
        self.models: dict[str, ModelPrice] = {}
        self.aliases: dict[str, str] = {}
        self.overrides: list[str] = []

    def apply(self, data: Mapping[str, Any], where: str, *, new_needs_top: bool = False) -> None:
        unknown = sorted(set(data) - set(_TOP_FIELDS))
        if unknown:
            raise UsageError(f"{where}: unknown field {unknown[0]!r}")
        for key in ("as_of", "source"):
            if key in data:
                value = data[key]
                if isinstance(value, date):
                    value = value.isoformat()
                if not isinstance(value, str):
                    raise UsageError(f"{where}: field {key!r} must be a string")
                self.top[key] = value
        if "batch_multiplier" in data:
            multiplier = _number(data["batch_multiplier"], where, "batch_multiplier")
            self.top["batch_multiplier"] = multiplier
        if new_needs_top:
            missing = [key for key in _TOP_FIELDS[:3] if key not in self.top]
            if missing:
                raise UsageError(f"{where}: missing field {missing[0]!r}")
        else:
            self.overrides.append(where)
        models = data.get("models", {})
        if not isinstance(models, Mapping):
            raise UsageError(f"{where}: field 'models' must be a table of models")
        for name, entry in models.items():
            self._apply_model(str(name), entry, where)

    def _apply_model(self, name: str, entry: Any, where: str) -> None:
        here = f"{where}: model {name}"
        if not isinstance(entry, Mapping):
            raise UsageError(f"{here}: must be a table of prices")
        unknown = sorted(set(entry) - {*PRICE_FIELDS, "aliases"})
        if unknown:
            raise UsageError(f"{here}: unknown field {unknown[0]!r}")
        prices = {key: _number(entry[key], here, key) for key in PRICE_FIELDS if key in entry}
        current = self.models.get(name)
        if current is None:
            missing = [key for key in PRICE_FIELDS if key not in prices]
            if missing:
                raise UsageError(f"{here}: missing field {missing[0]!r} (needed for a new model)")
            self.models[name] = ModelPrice(**prices)
        else:
            self.models[name] = replace(current, **prices)
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise UsageError(f"{here}: field 'aliases' must be a list of model ids")
        for alias in aliases:
            self.aliases[alias] = name

    def build(self, cls: type[PriceTable]) -> PriceTable:
        return cls(
            as_of=self.top["as_of"],
            source=self.top["source"],
            batch_multiplier=self.top["batch_multiplier"],
            models=dict(self.models),
            aliases=dict(self.aliases),
            overrides=list(self.overrides),
        )


def _number(value: Any, where: str, key: str) -> float:
    """A price or multiplier: a finite, non-negative int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: field {key!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{where}: field {key!r} must be a non-negative number, got {value!r}")
    return float(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"prices file {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"prices file {path}: not valid TOML: {exc}") from exc


@functools.cache
def _builtin() -> dict[str, Any]:
    """The packaged table, parsed once on first use (never at import)."""
    text = importlib.resources.files("runner").joinpath("data/prices.toml").read_text("utf-8")
    return tomllib.loads(text)
