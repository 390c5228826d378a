"""Whether a job's model is deprecated or retired, and whether the price table is stale.

`runner run` and `runner estimate` call `check_model` before any request: a retired
model stops the job with exit 2 (unless `--allow-retired`: a reseller may still serve
it); a deprecated one, or one retiring within `RETIRING_SOON_DAYS`, gets a warning
naming the date and the replacement the docs suggest.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from runner.errors import UsageError
from runner.pricing import PriceTable

logger = logging.getLogger("runner")

RETIRING_SOON_DAYS = 30
# Prices change: a table this old may no longer be the list price.
STALE_AFTER_DAYS = 90


def today() -> date:
    """Today's date in UTC (the docs' retirement dates are UTC days)."""
    return datetime.now(UTC).date()


def check_model(
    prices: PriceTable, model: str, *, allow_retired: bool = False, on: date | None = None
) -> str | None:
    """Refuse a retired model (UsageError) unless allowed; return (and log) any warning."""
    life = prices.lifecycle(model)
    if life.retires is None and life.deprecated is None:
        return None
    on = on or today()
    instead = f"; use {life.replacement} instead" if life.replacement else ""
    if life.retires is not None and date.fromisoformat(life.retires) <= on:
        message = f"model {model} was retired on {life.retires}{instead}"
        if not allow_retired:
            raise UsageError(
                f"{message} (requests to it fail on the Anthropic API; "
                "--allow-retired sends them anyway, e.g. to a reseller that still serves it)"
            )
        logger.warning("%s; sending anyway (--allow-retired)", message)
        return message
    if life.retires is not None:
        left = (date.fromisoformat(life.retires) - on).days
        soon = " (in 1 day)" if left == 1 else f" (in {left} days)"
        message = f"model {model} is deprecated and retires on {life.retires}" + (
            soon if left <= RETIRING_SOON_DAYS else ""
        )
    else:
        message = f"model {model} is deprecated since {life.deprecated}"
    logger.warning("%s%s", message, instead)
    return message + instead


def stale_prices_warning(builtin_as_of: str | None, on: date | None = None) -> str | None:
    """A warning when the built-in table is older than `STALE_AFTER_DAYS`, else None."""
    if not builtin_as_of:
        return None
    age = ((on or today()) - date.fromisoformat(builtin_as_of)).days
    if age <= STALE_AFTER_DAYS:
        return None
    return (
        f"the built-in price table is {age} days old (as of {builtin_as_of}): "
        "check the pricing page, or give current prices with --prices FILE"
    )
