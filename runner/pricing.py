"""Prices as data, and the cost in USD of one usage.

The built-in table is `runner/data/prices.toml`; `--prices FILE` (say a reseller's own
rates) and a job file's `[prices]` table are laid over it in that order. All three have
one shape, prices in USD per million tokens:

    as_of = "2026-11-29"          # optional in an override
    source = "https://..."        # optional in an override
    batch_multiplier = 0.5        # optional in an override
    scale = 0.35                  # an override only: every model's prices times 0.35
    [fees.web_search]             # per request, from usage.server_tool_use
    usd_per_1000 = 10.0
    [inference_geo.us]            # usage.inference_geo: a multiplier on token prices
    multiplier = 1.1
    [models.claude-sonnet-5-5]
    input = 2.0                   # also cache_write_5m, cache_write_1h, cache_read, output
    scale = 0.5                   # an override only: this model's prices times 0.5
    retires = 2027-05-01          # lifecycle: deprecated, retires, replacement
    [models.claude-haiku-5-5.long_prompt]
    above_tokens = 100_000        # a prompt longer than this prices the whole request here
    input = 0.50 ...

A new model needs all five prices; a model already in the table may set only the prices
it changes; a field set in a file is taken as given (never scaled by that file). Fees
and multipliers may carry their own `as_of` and `source`. A job's `[prices]` table may
also name models directly (`[prices.MODEL]`). The file is read on the first
`PriceTable.load()`, never at import, never from the network.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.models import Usage
from runner.price_fields import (
    LIFECYCLE_FIELDS,
    MODEL_FIELDS,
    PRICE_FIELDS,
    TOP_FIELDS,
    date_text,
    number,
    priced_dimension,
    read_toml,
    table_field,
)

logger = logging.getLogger("runner")

_SNAPSHOT = re.compile(r"^(?P<name>.+)-\d{8}$")
_PER_TOKEN = 1_000_000
_PER_REQUESTS = 1_000
# Usage counters billed per request, by the fee that prices them.
FEE_COUNTERS = {"web_search": "web_search_requests", "web_fetch": "web_fetch_requests"}
LIST, SCALED, CUSTOM = "list", "scaled", "custom"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in USD per million tokens (and those of its long-prompt band)."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float
    # Above `long_prompt_above` prompt tokens, the whole request is priced at `long_prompt`.
    long_prompt_above: int | None = None
    long_prompt: ModelPrice | None = None

    def scaled(self, factor: float) -> ModelPrice:
        """Every price (the band's too) times `factor`."""
        band = self.long_prompt.scaled(factor) if self.long_prompt is not None else None
        prices = {key: getattr(self, key) * factor for key in PRICE_FIELDS}
        return replace(self, **prices, long_prompt=band)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A model's deprecation and retirement dates (ISO), and the replacement the docs name."""

    deprecated: str | None = None
    retires: str | None = None
    replacement: str | None = None


@dataclass(slots=True)
class _Layers:
    """What the layers built: every table of the price file, merged."""

    top: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelPrice] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    lifecycle: dict[str, Lifecycle] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    fees: dict[str, dict[str, Any]] = field(default_factory=dict)
    geo: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    builtin_as_of: str = ""


class PriceTable:
    """The prices in force for a run: built-in table plus any overrides."""

    def __init__(self, layers: _Layers) -> None:
        self.as_of: str = layers.top["as_of"]
        self.source: str = layers.top["source"]
        self.batch_multiplier: float = layers.top["batch_multiplier"]
        self.builtin_as_of = layers.builtin_as_of
        self._layers = layers
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def load(
        cls, override: Path | None = None, extra: Mapping[str, Mapping] | None = None
    ) -> PriceTable:
        """Build the table: built-in prices, then the `override` file, then the job's `extra`."""
        builder = _Builder()
        builder.apply(_builtin(), "built-in price table", builtin=True)
        if override is not None:
            builder.apply(read_toml(override), f"prices file {override}")
        if extra is not None:
            # The job's [prices] table may be file-shaped or name the models directly.
            shaped = extra if isinstance(extra.get("models"), Mapping) else {"models": extra}
            builder.apply(shaped, "job file [prices] table")
        return cls(builder.layers)

    @property
    def kind(self) -> str:
        """`list` (the built-in prices), `scaled` (a factor on them) or `custom`."""
        kinds = set(self._layers.kinds.values())
        return CUSTOM if CUSTOM in kinds else SCALED if SCALED in kinds else LIST

    @property
    def overrides(self) -> list[str]:
        """The layers laid over the built-in table, each saying what it changed."""
        return list(self._layers.overrides)

    def resolve(self, model: str) -> str | None:
        """The table's name for `model`: by name, alias or `<name>-YYYYMMDD` snapshot id."""
        name = self._resolve(model)
        if name is None:
            match = _SNAPSHOT.match(model)
            name = self._resolve(match["name"]) if match else None
        return name

    def price_for(self, model: str) -> ModelPrice | None:
        """The prices of `model`, by name, alias or snapshot id."""
        name = self.resolve(model)
        return self._layers.models.get(name) if name is not None else None

    def lifecycle(self, model: str) -> Lifecycle:
        """The model's deprecation and retirement dates, empty where the table has none."""
        name = self.resolve(model)
        return self._layers.lifecycle.get(name or model, Lifecycle())

    def multipliers(self) -> list[float]:
        """Every regional multiplier the table knows (for a worst case)."""
        return [entry["multiplier"] for entry in self._layers.geo.values()]

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for one usage at standard rates; None (and one warning) when it cannot be priced."""
        return self._cost(model, usage, 1.0)

    def batch_cost(self, model: str, usage: Usage) -> float | None:
        """USD for one usage sent through the Message Batches API (tokens discounted, not fees)."""
        return self._cost(model, usage, self.batch_multiplier)

    def _cost(self, model: str, usage: Usage, token_factor: float) -> float | None:
        price = self.price_for(model)
        if price is None:
            self._warn_once(model, "", f"no price for model {model}")
            return None
        lacking = self._lacking_dimension(usage)
        if lacking is not None:
            self._warn_once(model, lacking, f"model {model}: usage shows {lacking}")
            return None
        # The pricing page's long-context rule: past the threshold, every token of the
        # request is billed at the higher band, not only the tokens above it.
        prompt = (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        if price.long_prompt is not None and prompt > (price.long_prompt_above or 0):
            price = price.long_prompt
        # The API may omit the 5m/1h split; whatever the split leaves out is a 5-minute
        # write (the default TTL), so cache creation is counted exactly once.
        split = usage.cache_creation_5m + usage.cache_creation_1h
        write_5m = usage.cache_creation_5m + max(0, usage.cache_creation_input_tokens - split)
        tokens = (
            usage.input_tokens * price.input
            + write_5m * price.cache_write_5m
            + usage.cache_creation_1h * price.cache_write_1h
            + usage.cache_read_input_tokens * price.cache_read
            + usage.output_tokens * price.output
        )
        geo = self._layers.geo.get(usage.inference_geo or "", {}).get("multiplier", 1.0)
        fees = sum(
            getattr(usage, counter) * self._layers.fees[fee]["usd_per_1000"] / _PER_REQUESTS
            for fee, counter in FEE_COUNTERS.items()
            if getattr(usage, counter)
        )
        return round(tokens * geo * token_factor / _PER_TOKEN + fees, 10)

    def _lacking_dimension(self, usage: Usage) -> str | None:
        """The first priced dimension the usage shows and the table cannot price, if any."""
        for fee, counter in FEE_COUNTERS.items():
            if getattr(usage, counter) and fee not in self._layers.fees:
                return f"{counter} but the price table has no [fees.{fee}]"
        geo = usage.inference_geo
        if geo and geo not in self._layers.geo:
            return f"inference_geo {geo!r} but the price table has no [inference_geo.{geo}]"
        return None

    def _warn_once(self, model: str, what: str, message: str) -> None:
        if (model, what) not in self._warned:
            self._warned.add((model, what))
            logger.warning("%s: cost_usd left empty (add it with --prices FILE)", message)

    def to_dict(self) -> dict[str, Any]:
        """The table in force, JSON-serialisable, for run.json."""
        layers = self._layers
        by_model: dict[str, list[str]] = {name: [] for name in layers.models}
        for alias, name in layers.aliases.items():
            by_model[name].append(alias)
        return {
            "as_of": self.as_of,
            "source": self.source,
            "builtin_as_of": self.builtin_as_of,
            "kind": self.kind,
            "batch_multiplier": self.batch_multiplier,
            "overrides": self.overrides,
            "fees": layers.fees,
            "inference_geo": layers.geo,
            "models": {
                name: {
                    **asdict(price),
                    "aliases": sorted(by_model[name]),
                    "kind": layers.kinds.get(name, LIST),
                    **{
                        k: v
                        for k, v in asdict(layers.lifecycle.get(name, Lifecycle())).items()
                        if v
                    },
                }
                for name, price in sorted(layers.models.items())
            },
        }

    def _resolve(self, model: str) -> str | None:
        if model in self._layers.models:
            return model
        return self._layers.aliases.get(model)


def describe(prices: Mapping[str, Any]) -> list[str]:
    """The price source in words, from `PriceTable.to_dict()` (as run.json keeps it)."""
    kind = prices.get("kind") or (CUSTOM if prices.get("overrides") else LIST)
    label = {LIST: "list prices", SCALED: "scaled list prices", CUSTOM: "custom prices"}[kind]
    lines = [f"prices: {label}, as of {prices.get('as_of')} ({prices.get('source')})"]
    lines += [f"  over the built-in table: {where}" for where in prices.get("overrides") or []]
    return lines


class _Builder:
    """Lays price tables over one another, validating each as it goes."""

    def __init__(self) -> None:
        self.layers = _Layers()

    def apply(self, data: Mapping[str, Any], where: str, *, builtin: bool = False) -> None:
        unknown = sorted(set(data) - set(TOP_FIELDS))
        if unknown:
            raise UsageError(f"{where}: unknown field {unknown[0]!r}")
        top = self.layers.top
        for key in ("as_of", "source"):
            if key in data:
                top[key] = date_text(data[key], where, key)
        if "batch_multiplier" in data:
            top["batch_multiplier"] = number(data["batch_multiplier"], where, "batch_multiplier")
        if builtin:
            missing = [key for key in ("as_of", "source", "batch_multiplier") if key not in top]
            if missing:
                raise UsageError(f"{where}: missing field {missing[0]!r}")
            if "scale" in data:
                raise UsageError(f"{where}: 'scale' belongs in an override, not the built-in table")
            self.layers.builtin_as_of = top["as_of"]
        defaults = {"as_of": top["as_of"], "source": top["source"]}
        for section, value_key, target in (
            ("fees", "usd_per_1000", self.layers.fees),
            ("inference_geo", "multiplier", self.layers.geo),
        ):
            for name, entry in table_field(data, section, where).items():
                target[str(name)] = priced_dimension(
                    entry, value_key, f"{where}: {section}.{name}", defaults
                )
        models = table_field(data, "models", where)
        changes: list[str] = []
        if "scale" in data:
            factor = number(data["scale"], where, "scale")
            for name in self.layers.models:
                if "scale" not in (models.get(name) or {}):
                    self._scale(name, factor)
            changes.append(f"every model's prices ×{factor:g}")
        for name, entry in models.items():
            changes += self._apply_model(str(name), entry, where, builtin)
        if not builtin:
            self.layers.overrides.append(where + (": " + "; ".join(changes) if changes else ""))

    def _scale(self, name: str, factor: float) -> None:
        self.layers.models[name] = self.layers.models[name].scaled(factor)
        if self.layers.kinds.get(name, LIST) == LIST:
            self.layers.kinds[name] = SCALED

    def _apply_model(self, name: str, entry: Any, where: str, builtin: bool) -> list[str]:
        here = f"{where}: model {name}"
        if not isinstance(entry, Mapping):
            raise UsageError(f"{here}: must be a table of prices")
        unknown = sorted(set(entry) - set(MODEL_FIELDS))
        if unknown:
            raise UsageError(f"{here}: unknown field {unknown[0]!r}")
        if builtin and "scale" in entry:
            raise UsageError(f"{here}: 'scale' belongs in an override, not the built-in table")
        changes: list[str] = []
        current = self.layers.models.get(name)
        if "scale" in entry:
            if current is None:
                raise UsageError(f"{here}: 'scale' needs a model the table already prices")
            factor = number(entry["scale"], here, "scale")
            self._scale(name, factor)
            current = self.layers.models[name]
            changes.append(f"{name} ×{factor:g}")
        prices: dict[str, Any] = {
            key: number(entry[key], here, key) for key in PRICE_FIELDS if key in entry
        }
        band = entry.get("long_prompt")
        if current is None:
            missing = [key for key in PRICE_FIELDS if key not in prices]
            if missing:
                raise UsageError(f"{here}: missing field {missing[0]!r} (needed for a new model)")
            current = ModelPrice(**prices)
        else:
            current = replace(current, **prices)
        if band is not None:
            current = _with_band(current, band, here)
        if prices or band is not None or self.layers.models.get(name) is None:
            self.layers.models[name] = current
            if not builtin:
                self.layers.kinds[name] = CUSTOM
                changes.append(f"{name} custom")
        dates = {key: date_text(entry[key], here, key) for key in LIFECYCLE_FIELDS if key in entry}
        if dates:
            self.layers.lifecycle[name] = replace(
                self.layers.lifecycle.get(name, Lifecycle()), **dates
            )
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise UsageError(f"{here}: field 'aliases' must be a list of model ids")
        for alias in aliases:
            self.layers.aliases[alias] = name
        return changes


def _with_band(price: ModelPrice, band: Any, here: str) -> ModelPrice:
    """`price` with its long-prompt band: a threshold and five prices (missing ones kept)."""
    where = f"{here}.long_prompt"
    if not isinstance(band, Mapping):
        raise UsageError(f"{where}: must be a table")
    unknown = sorted(set(band) - {*PRICE_FIELDS, "above_tokens"})
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}")
    above = band.get("above_tokens", price.long_prompt_above)
    if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
        raise UsageError(f"{where}: field 'above_tokens' must be a positive whole number")
    base = price.long_prompt or replace(price, long_prompt=None, long_prompt_above=None)
    prices: dict[str, Any] = {
        key: number(band[key], where, key) for key in PRICE_FIELDS if key in band
    }
    return replace(price, long_prompt_above=above, long_prompt=replace(base, **prices))


@functools.cache
def _builtin() -> dict[str, Any]:
    """The packaged table, parsed once on first use (never at import)."""
    text = importlib.resources.files("runner").joinpath("data/prices.toml").read_text("utf-8")
    return tomllib.loads(text)
