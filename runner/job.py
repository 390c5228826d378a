"""The job: a TOML file and command-line flags resolved into one frozen `Job`.

A flag overrides the file. Unknown keys and wrong types are errors that name the
key, the file and (for typos) the closest valid key, before any request is sent.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from runner.errors import JobFileError, UsageError
from runner.input_formats import FORMATS
from runner.input_source import STDIN
from runner.render import parse_template
from runner.request_params import KNOWN_PARAMS, close_known_param

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_OUTPUT_DIR = Path("reports")
# Generous bounds on one attempt: a 64k-token answer at 40 tokens/s takes under half an
# hour, and one event (even a server tool's result) stays far below 16 MiB.
DEFAULT_ATTEMPT_TIMEOUT_S = 1800.0
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024


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
    # Any other Messages API parameter, passed on as it is (`[request.params]`):
    # tools, tool_choice, thinking, output_config, metadata, service_tier, ...
    params: dict[str, Any] | None = None
    # Request field -> the column that sets it per row (`[request.columns]`); a column
    # named model, system, max_tokens or messages sets that field unless row_fields = false.
    columns: dict[str, str] | None = None
    row_fields: bool = True
    # Columns holding a path or URL of an image or PDF sent before the prompt.
    attachments: list[str] | None = None
    anthropic_version: str | None = None
    anthropic_beta: list[str] | None = None
    # Keep the answer's thinking text in the results (`thinking` column).
    keep_thinking: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Pool size and the account's rate limits (`[limits]`); None means not told."""

    concurrency: int = 16
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    # Stop dispatching before spend plus the worst case in flight passes this (exit 5).
    max_cost_usd: float | None = None
    # Memory per stream stays bounded: over either cap the attempt fails, not retried.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """How hard to try one row, and how long to wait for a stalled stream (`[retry]`)."""

    max_attempts: int = 8
    idle_timeout: float = 60.0
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT_S
    max_retry_after: float = 600.0
    grace_period: float = 10.0


class Mode(StrEnum):
    """How requests are executed: streamed one by one, or through the Message Batches API."""

    STREAM = "stream"
    BATCH = "batch"


# https://docs.anthropic.com/en/docs/build-with-claude/batch-processing: a batch holds
# at most 100,000 requests and 256 MB.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """How `mode = "batch"` splits the rows into batches and how often it polls (`[batch]`)."""

    size: int = 10_000
    poll_interval: float = 60.0
    max_bytes: int = MAX_BATCH_BYTES


@dataclass(frozen=True, slots=True)
class Job:
    """Everything a run needs to know, resolved from the job file and the flags."""

    name: str
    input: Path
    input_format: str | None = None
    id_column: str | None = None
    base_url: str = DEFAULT_BASE_URL
    prices: Path | None = None
    price_overrides: dict[str, Any] = field(default_factory=dict)
    request: RequestSpec = field(default_factory=RequestSpec)
    limits: Limits = field(default_factory=Limits)
    retry: RetrySpec = field(default_factory=RetrySpec)
    job_file: Path | None = None
    mode: Mode = Mode.STREAM
    batch: BatchSpec = field(default_factory=BatchSpec)
    # Relative to the working directory when not set in a job file: under cron, that
    # is the crontab user's home, so a nightly job sets it (absolute) in the file.
    output_dir: Path = DEFAULT_OUTPUT_DIR
    # Send identical requests once and copy the answer to the other rows (at $0).
    dedupe: bool = False
    # Keep every ok answer here by request fingerprint; reuse it in later runs at $0.
    cache: Path | None = None
    allow_insecure_http: bool = False

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
            "output_dir": str(self.output_dir),
            "allow_insecure_http": self.allow_insecure_http,
            "request": _as_dict(self.request),
            "limits": _as_dict(self.limits),
            "retry": _as_dict(self.retry),
            "mode": str(self.mode),
            "dedupe": self.dedupe,
            "cache": str(self.cache) if self.cache else None,
            "batch": _as_dict(self.batch),
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
    "allow_insecure_http": bool,
    "mode": str,
    "output_dir": str,
    "dedupe": bool,
    "cache": str,
}
_SECTIONS: dict[str, type] = {
    "request": RequestSpec,
    "limits": Limits,
    "retry": RetrySpec,
    "batch": BatchSpec,
}


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        # A float setting takes TOML integers too (`idle_timeout = 5`): call it a number.
        return "a number" if float in expected else " or ".join(map(_type_name, expected))
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array of strings",
        dict: "a table",
    }[expected]


def _toml_type(value: Any) -> str:
    """The TOML name of a value's type, as the user wrote it (https://toml.io/en/v1.0.0)."""
    for kind, name in _TOML_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


# bool before int: TOML's true is a Python int too.
_TOML_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    ((datetime.date, datetime.time), "a date/time"),
)


def _expected_type(cls: type, name: str) -> Any:
    annotation = {f.name: f.type for f in fields(cls)}[name]
    text = str(annotation)
    if text.startswith("list"):
        return list
    if text.startswith("dict"):
        return dict
    for token, kind in (("bool", bool), ("int", int), ("float", (int, float)), ("str", str)):
        if text.startswith(token):
            return kind
    raise AssertionError(f"unhandled annotation {text}")


def _check_type(value: Any, expected: Any, where: str, path: Path) -> None:
    # bool is an int in Python; a job saying `max_tokens = true` is still wrong.
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    # The only list setting is stop_sequences: the API wants an array of strings.
    if ok and isinstance(value, list):
        ok = all(isinstance(item, str) for item in value)
        if not ok:
            found = next(_toml_type(item) for item in value if not isinstance(item, str))
            raise JobFileError(
                f"{path}: {where} must be {_type_name(expected)}, found {found} in it"
            )
    if not ok:
        raise JobFileError(
            f"{path}: {where} must be {_type_name(expected)}, not {_toml_type(value)}"
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
    except UnicodeDecodeError as exc:
        # TOML files must be valid UTF-8 (https://toml.io/en/v1.0.0#spec); tomllib
        # lets the decoding error through instead of a TOMLDecodeError.
        raise JobFileError(
            f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x})"
        ) from None
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
                if key == "request" and sub in ("params", "columns"):
                    _check_request_table(sub, sub_value, path)
                settings[f"{key}.{sub}"] = sub_value
        elif key in _TOP_KEYS:
            _check_type(value, _TOP_KEYS[key], key, path)
            settings[key] = value
        else:
            raise _unknown_key(key, valid_top, "", path)
    return settings


# Parameters [request] sets by its own keys: [request.params] must not set them again.
_OWN_KEYS = ("model", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences")


def _check_request_table(name: str, table: dict[str, Any], path: Path) -> None:
    """[request.params]: new names pass, typos of known ones do not; [request.columns]: text."""
    for key, value in table.items():
        where = f"request.{name}.{key}"
        if name == "columns":
            if not isinstance(value, str) or not value:
                raise JobFileError(f"{path}: {where} must name a column, not {_toml_type(value)}")
            if close_known_param(key) not in (None, key) or key == "stream":
                raise _unknown_key(key, list(KNOWN_PARAMS), "request.columns.", path)
            continue
        if key in _OWN_KEYS or key == "messages":
            raise JobFileError(f"{path}: {where}: set it as request.{key}, not in [request.params]")
        close = close_known_param(key)
        if key == "stream":
            raise JobFileError(f"{path}: {where}: runner always streams; remove it")
        if close is not None:
            raise JobFileError(f"{path}: unknown key '{where}' (did you mean '{close}'?)")


def _input_name(path: Path) -> str:
    """The job name an input gives when no job file names it: its stem past compression."""
    if path == STDIN:
        return "stdin"
    return path.name.split(".", 1)[0] or path.stem


def _job_relative(value: str, job_file: Path | None) -> Path:
    """Paths in a job file are relative to the file, falling back to the working directory."""
    candidate = Path(value).expanduser()
    if job_file is None or candidate.is_absolute():
        return candidate
    beside = job_file.parent / candidate
    if beside.exists() or not candidate.exists():
        return beside
    return candidate


# Flags whose spelling is not `--` plus the setting's last part (see cli.py).
_FLAG_NAMES = {
    "limits.requests_per_minute": "--rpm",
    "limits.input_tokens_per_minute": "--itpm",
    "limits.output_tokens_per_minute": "--otpm",
    "limits.max_cost_usd": "--max-cost",
    "batch.size": "--batch-size",
}


class _Origins:
    """Where each setting came from, so an error names the file (`FILE: key`) or the flag."""

    def __init__(self, job_file: Path | None, from_file: set[str], from_flags: set[str]) -> None:
        self.job_file = job_file
        self.from_file = from_file
        self.from_flags = from_flags

    def source(self, key: str) -> str | None:
        """The flag, environment variable or job file that set `key`; None for a default."""
        if key in self.from_flags:
            return _FLAG_NAMES.get(key, "--" + key.rsplit(".", 1)[-1].replace("_", "-"))
        if key in self.from_file:
            return str(self.job_file)
        return "ANTHROPIC_BASE_URL" if key == "base_url" else None

    def __call__(self, key: str) -> str:
        """`FILE: key` for a job-file setting, the flag's name for a flag."""
        source = self.source(key)
        if key in self.from_file and key not in self.from_flags:
            return f"{source}: {key}"
        return source or key


def resolve_job(job_file: Path | None, flags: dict[str, Any]) -> Job:
    """Merge the job file (if any) with the flags (which win) into a `Job`."""
    settings = load_job_file(job_file) if job_file else {}
    given = {k: v for k, v in flags.items() if v is not None}
    origin = _Origins(job_file, set(settings), set(given))
    settings.update(given)
    # A bare message names the job file, if any, as every job-file message does.
    where = f"{job_file}: " if job_file else ""

    input_value = settings.get("input")
    if input_value is None:
        raise UsageError(f"{where}no input file: give --input PATH or `input` in the job file")
    input_path = (
        input_value
        if isinstance(input_value, Path) or str(input_value) == str(STDIN)
        else _job_relative(str(input_value), job_file if "input" not in given else None)
    )
    input_path = Path(input_path)
    fmt = settings.get("input_format")
    if fmt is not None:
        fmt = str(fmt).lower()
        if fmt not in FORMATS:
            names = ", ".join(FORMATS)
            raise UsageError(f"{origin('input_format')} must be one of {names}, not '{fmt}'")

    try:
        mode = Mode(str(settings.get("mode") or Mode.STREAM).lower())
    except ValueError:
        raise UsageError(
            f"{origin('mode')} must be stream or batch, not '{settings['mode']}'"
        ) from None

    prices = settings.get("prices")
    price_file, price_overrides = None, {}
    if isinstance(prices, dict):
        price_overrides = prices
    elif prices is not None:
        price_file = (
            prices
            if isinstance(prices, Path)
            else _job_relative(str(prices), job_file if "prices" not in given else None)
        )

    output_value = settings.get("output_dir")
    output_dir = (
        output_value
        if isinstance(output_value, Path)
        else _job_relative(str(output_value), job_file if "output_dir" not in given else None)
        if output_value is not None
        else DEFAULT_OUTPUT_DIR
    )

    sections = {}
    for section, cls in _SECTIONS.items():
        values = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith(section + ".")}
        sections[section] = replace(cls(), **values)

    job = Job(
        name=settings.get("name") or _input_name(input_path),
        input=input_path,
        input_format=fmt,
        id_column=settings.get("id_column"),
        base_url=(
            settings.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/"),
        prices=price_file,
        price_overrides=price_overrides,
        job_file=job_file,
        mode=mode,
        output_dir=output_dir,
        dedupe=bool(settings.get("dedupe")),
        cache=Path(settings["cache"]) if settings.get("cache") else None,
        allow_insecure_http=bool(settings.get("allow_insecure_http")),
        **sections,
    )
    _check_values(job, origin)
    return job


def _check_values(job: Job, origin: _Origins) -> None:
    """Reject values that have the right type but cannot work, naming where each came from."""
    req, lim, retry, batch = job.request, job.limits, job.retry, job.batch
    problems = [
        (
            "batch.size",
            not 1 <= batch.size <= MAX_BATCH_REQUESTS,
            f"must be from 1 to {MAX_BATCH_REQUESTS:,}",
        ),
        (
            "batch.max_bytes",
            not 1024 <= batch.max_bytes <= MAX_BATCH_BYTES,
            f"must be from 1024 to {MAX_BATCH_BYTES:,}",
        ),
        (
            "batch.poll_interval",
            not 0 < batch.poll_interval < math.inf,
            "must be a positive number",
        ),
        ("request.max_tokens", req.max_tokens < 1, "must be at least 1"),
        ("limits.concurrency", lim.concurrency < 1, "must be at least 1"),
        ("retry.max_attempts", retry.max_attempts < 1, "must be at least 1"),
        # nan compares false with everything, so finiteness is checked on its own.
        ("retry.idle_timeout", not 0 < retry.idle_timeout < math.inf, "must be a positive number"),
        ("retry.grace_period", not 0 <= retry.grace_period < math.inf, "must be 0 or more"),
        (
            "retry.attempt_timeout",
            not 0 < retry.attempt_timeout < math.inf,
            "must be a positive number",
        ),
        ("limits.max_event_bytes", lim.max_event_bytes < 1024, "must be at least 1024"),
        ("limits.max_answer_bytes", lim.max_answer_bytes < 1024, "must be at least 1024"),
        ("name", not _plain_name(job.name), "must be a plain name (it names a directory)"),
        ("id_column", job.id_column == "", "must name a column"),
        ("request.prompt_column", not req.prompt_column, "must name a column"),
        ("base_url", not job.base_url.startswith(("http://", "https://")), _BASE_URL_RULE),
    ]
    cap = lim.max_cost_usd
    problems.append(
        ("limits.max_cost_usd", cap is not None and not 0 < cap < math.inf, "must be above 0")
    )
    for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute"):
        value = getattr(lim, name)
        problems.append((f"limits.{name}", value is not None and value < 1, "must be at least 1"))
    for key, bad, rule in problems:
        if bad:
            raise UsageError(f"{origin(key)} {rule}, not {_shown(job, key)}")
    if req.prompt is not None:
        try:
            parse_template(req.prompt)
        except JobFileError as exc:
            raise JobFileError(f"{origin.source('request.prompt')}: {exc}") from None


_BASE_URL_RULE = "must start with http:// or https://"


def _plain_name(name: str) -> bool:
    return bool(name) and not ({"/", "\\", "\0"} & set(name)) and name not in (".", "..")


def _shown(job: Job, key: str) -> str:
    """The value of setting `key` in `job`, as a message shows it."""
    value: Any = job
    for part in key.split("."):
        value = getattr(value, part)
    return repr(value) if isinstance(value, str) else str(value)
