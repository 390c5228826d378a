"""The job: a TOML file and command-line flags resolved into one frozen `Job`.

A flag overrides the file. Unknown keys and wrong types are errors that name the
key, the file and (for typos) the closest valid key, before any request is sent.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from runner.errors import JobFileError, UsageError
from runner.models import InputFormat

DEFAULT_BASE_URL = "https://api.anthropic.com"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """How each row becomes a Messages API request (`[request]`)."""

    model: str | None = None
    max_tokens: int = 1024
    system: str | None = None
    # A template filled from the row's columns; without one, the row's
    # `prompt_column` is the prompt as it is.
    prompt: str | None = None
    prompt_column: str = "prompt"
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    cache_system: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Pool size and the account's rate limits (`[limits]`); None means not told."""

    concurrency: int = 16
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """How hard to try one row, and how long to wait for a stalled stream (`[retry]`)."""

    max_attempts: int = 8
    idle_timeout: float = 60.0
    max_retry_after: float = 600.0
    grace_period: float = 10.0


@dataclass(frozen=True, slots=True)
class Job:
    """Everything a run needs to know, resolved from the job file and the flags."""

    name: str
    input: Path
    input_format: InputFormat | None = None
    id_column: str | None = None
    base_url: str = DEFAULT_BASE_URL
    prices: Path | None = None
    price_overrides: dict[str, Any] = field(default_factory=dict)
    request: RequestSpec = field(default_factory=RequestSpec)
    limits: Limits = field(default_factory=Limits)
    retry: RetrySpec = field(default_factory=RetrySpec)
    job_file: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the job, for run.json."""
        return {
            "name": self.name,
            "input": str(self.input),
            "input_format": self.input_format,
            "id_column": self.id_column,
            "base_url": self.base_url,
            "prices": str(self.prices) if self.prices else None,
            "job_file": str(self.job_file) if self.job_file else None,
            "request": _as_dict(self.request),
            "limits": _as_dict(self.limits),
            "retry": _as_dict(self.retry),
        }


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


_TOP_KEYS = {
    "name": str,
    "input": str,
    "input_format": str,
    "id_column": str,
    "base_url": str,
    "prices": (str, dict),
}
_SECTIONS: dict[str, type] = {"request": RequestSpec, "limits": Limits, "retry": RetrySpec}


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(_type_name(t) for t in expected)
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        expected, getattr(expected, "__name__", str(expected))
    )


def _expected_type(cls: type, name: str) -> Any:
    annotation = {f.name: f.type for f in fields(cls)}[name]
    text = str(annotation)
    if text.startswith("list"):
        return list
    for token, kind in (("bool", bool), ("int", int), ("float", (int, float)), ("str", str)):
        if text.startswith(token):
            return kind
    raise AssertionError(f"unhandled annotation {text}")


def _check_type(value: Any, expected: Any, where: str, path: Path) -> None:
    # bool is an int in Python; a job saying `max_tokens = true` is still wrong.
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise JobFileError(
            f"{path}: {where} must be {_type_name(expected)}, not {type(value).__name__}"
        )


def _unknown_key(key: str, valid: list[str], where: str, path: Path) -> JobFileError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
    return JobFileError(f"{path}: unknown key '{where}{key}'{hint}")


def load_job_file(path: Path) -> dict[str, Any]:
    """Read and validate a job file into the keyword overrides `resolve_job` takes."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a job file") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read job file: {exc.strerror}") from None

    valid_top = [*_TOP_KEYS, *_SECTIONS]
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise JobFileError(f"{path}: [{key}] must be a table")
            cls = _SECTIONS[key]
            names = [f.name for f in fields(cls)]
            for sub, sub_value in value.items():
                if sub not in names:
                    raise _unknown_key(sub, names, f"{key}.", path)
                _check_type(sub_value, _expected_type(cls, sub), f"{key}.{sub}", path)
                settings[f"{key}.{sub}"] = sub_value
        elif key in _TOP_KEYS:
            _check_type(value, _TOP_KEYS[key], key, path)
            settings[key] = value
        else:
            raise _unknown_key(key, valid_top, "", path)
    return settings


def _job_relative(value: str, job_file: Path | None) -> Path:
    """Paths in a job file are relative to the file, falling back to the working directory."""
    candidate = Path(value).expanduser()
    if job_file is None or candidate.is_absolute():
        return candidate
    beside = job_file.parent / candidate
    if beside.exists() or not candidate.exists():
        return beside
    return candidate


def resolve_job(job_file: Path | None, flags: dict[str, Any]) -> Job:
    """Merge the job file (if any) with the flags (which win) into a `Job`."""
    settings = load_job_file(job_file) if job_file else {}
    settings.update({k: v for k, v in flags.items() if v is not None})

    input_value = settings.get("input")
    if input_value is None:
        raise UsageError("no input file: give --input PATH or `input` in the job file")
    input_path = (
        input_value
        if isinstance(input_value, Path)
        else _job_relative(str(input_value), job_file if "input" not in flags else None)
    )
    fmt = settings.get("input_format")
    if fmt is not None:
        try:
            fmt = InputFormat(str(fmt).lower())
        except ValueError:
            raise UsageError(f"input format must be csv or jsonl, not '{fmt}'") from None

    prices = settings.get("prices")
    price_file, price_overrides = None, {}
    if isinstance(prices, dict):
        price_overrides = prices
    elif prices is not None:
        price_file = (
            prices
            if isinstance(prices, Path)
            else _job_relative(str(prices), job_file if "prices" not in flags else None)
        )

    sections = {}
    for section, cls in _SECTIONS.items():
        values = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith(section + ".")}
        sections[section] = replace(cls(), **values)

    job = Job(
        name=settings.get("name") or input_path.stem,
        input=input_path,
        input_format=fmt,
        id_column=settings.get("id_column"),
        base_url=(
            settings.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/"),
        prices=price_file,
        price_overrides=price_overrides,
        job_file=job_file,
        **sections,
    )
    _check_values(job)
    return job


def _check_values(job: Job) -> None:
    """Reject values that have the right type but cannot work."""
    req, lim, retry = job.request, job.limits, job.retry
    if not req.model:
        raise UsageError("no model: set [request] model in the job file or give --model")
    problems = [
        (req.max_tokens < 1, "max_tokens must be at least 1"),
        (lim.concurrency < 1, "concurrency must be at least 1"),
        (retry.max_attempts < 1, "max_attempts must be at least 1"),
        (retry.idle_timeout <= 0, "idle_timeout must be positive"),
        (retry.grace_period < 0, "grace_period must not be negative"),
    ]
    for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute"):
        value = getattr(lim, name)
        problems.append((value is not None and value < 1, f"{name} must be at least 1"))
    if not job.base_url.startswith(("http://", "https://")):
        problems.append((True, f"base URL must start with http:// or https://: {job.base_url}"))
    for bad, message in problems:
        if bad:
            raise UsageError(message)
