"""The project's reference page, generated from the code so it cannot drift.

`python -m runner.reference` writes docs/reference.md; `--check` fails (exit 1) when the
file differs from what the code says, which CI runs. Every column of the results and
attempts tables, every job-file key (with its flag and default), every exit code and
every command's `--help` come from the code itself; what the code does not say (what a
column means, a key with no flag) is described here, and a new column, key or exit code
without a description stops the generator.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click
import polars as pl

from runner import errors, run
from runner.cli import SETTING_FLAGS, cli
from runner.job import _SECTIONS, _TOP_KEYS, Job, _expected_type, _type_name
from runner.outcome import EXIT_CODES, RunState
from runner.parts import ATTEMPT_SCHEMA, RESULT_SCHEMA, STATE_SCHEMA

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "reference.md"

RESULT_COLUMNS = {
    "id": "The row's id: the id column's value, else `line:N` (the row's line in the input).",
    "status": "`ok` (answered), `error` (gave up after retries, or not retryable), "
    "`invalid` (bad input row, never sent).",
    "model": "The model asked for.",
    "served_model": "The model that answered (message_start's `message.model`); "
    "the row is priced by it.",
    "copy_of": "The answer is a copy: with `--dedupe`, the id of the row whose identical "
    "request was sent; with `--cache`, `cache:` and the request id that first got it. "
    "Such a row has no tokens and costs $0.",
    "output_text": "The streamed text; null unless `ok`.",
    "stop_reason": "As the API reported it: `end_turn`, `max_tokens`, `stop_sequence`, "
    "`tool_use`, `pause_turn`, `refusal`, `model_context_window_exceeded`. Only "
    "`ok` rows that are not refusals, cut, paused or empty are usable "
    "(`runner export --usable`).",
    "stop_details": "What the API said beyond the stop reason (a refusal's category).",
    "tool_calls": "The tool calls of the answer, as JSON.",
    "output_json": "The answer parsed as JSON, when the request asked for JSON.",
    "thinking_tokens": "Output tokens spent on extended thinking, when the usage reports "
    "them (the Anthropic API counts them in output_tokens and reports none apart).",
    "thinking": "The answer's thinking text, when the job sets `keep_thinking`.",
    "input_tokens": "Input tokens of the successful attempt, as the API reported them.",
    "output_tokens": "Output tokens of the successful attempt.",
    "cache_creation_input_tokens": "Tokens written to the prompt cache.",
    "cache_read_input_tokens": "Tokens read from the prompt cache.",
    "cost_usd": "Cost of the successful attempt from the price table in run.json; "
    "null where the model has no price.",
    "attempts": "HTTP attempts made for this row (0 for `invalid`).",
    "error_type": "Why the row failed: the API's error type, a transport error kind, or "
    "`invalid_input`; null if `ok`.",
    "error_message": "The failure's message (for `invalid`: the input problem).",
    "request_id": "The API's `request-id` of the successful attempt.",
    "ttft_ms": "Milliseconds from sending to the first text.",
    "latency_ms": "Milliseconds from sending to the end of the stream.",
}
STATE_COLUMNS = {
    "key": "The row's identity, what a resume matches on: the id when the input has an id "
    "column, else the request fingerprint and occurrence number (`FINGERPRINT#N`).",
    "line": "The row's line in the input as last read (what exports join on); null once "
    "the row is no longer in the input (its paid result is kept).",
    "fingerprint": "Hash of the rendered request (model, system, prompt, parameters): "
    "a resume sends a row again only if it changed.",
}
ATTEMPT_COLUMNS = {
    "id": "The row's id (as in results).",
    "attempt": "1 for the first attempt of the row, then 2, 3, ...",
    "started_at": "When the attempt was sent (UTC).",
    "outcome": "`ok`, `http_error`, `midstream_error`, `dropped`, `eof_without_stop`, "
    "`stalled`, `connect_error` or `timeout`.",
    "http_status": "The HTTP status, if an answer came.",
    "error_type": "The API's error type or the transport error kind; null if ok.",
    "error_message": "The error's message.",
    "retry_after_s": "The server's `retry-after` (or `retry-after-ms`), in seconds.",
    "wait_s": "Seconds waited before the next attempt.",
    "request_id": "The API's `request-id`.",
    "latency_ms": "Milliseconds from sending to the end (or failure) of the attempt.",
    "input_tokens": "Input tokens this attempt consumed, as far as its stream reported them.",
    "output_tokens": "Output tokens this attempt consumed: a failed attempt's are what "
    "retries cost.",
    "cache_creation_input_tokens": "Tokens this attempt wrote to the prompt cache.",
    "cache_read_input_tokens": "Tokens this attempt read from the prompt cache.",
    "cost_usd": "What this attempt cost; summed over failed attempts, what retries cost.",
    "fingerprint": "The request's fingerprint (as in state/).",
    "custom_id": "In batch mode, the batch item's `custom_id` (`request_id` is then the batch "
    "id); null when streamed.",
    "key": "The row's identity (as in state/).",
}
# Job keys no flag sets (a flag's own help describes the others).
JOB_KEYS = {
    "name": "The job's name: runs live in OUTPUT_DIR/<name>/<run-id>/. "
    "Default: the input file's stem.",
    "request.prompt_column": "The column sent as the prompt when there is no template.",
    "request.temperature": "Sampling temperature, 0 to 1. Default: not sent (the API's).",
    "request.top_p": "Nucleus sampling. Default: not sent (the API's).",
    "request.top_k": "Sample from the top K tokens only. Default: not sent (the API's).",
    "request.stop_sequences": "Strings that end the answer where they appear "
    "(stop_reason `stop_sequence`). Default: none.",
    "request.cache_system": "Put `cache_control` on the system prompt, so rows share its cache.",
    "request.params": "Any other Messages API parameter, passed on as it is ([request.params]: "
    "tools, tool_choice, thinking, output_config, metadata, service_tier, ...). A new name is "
    "sent; a typo of a known one is an error with a did-you-mean.",
    "request.columns": "Request field -> the column that sets it per row ([request.columns], "
    'e.g. `model = "model_name"`).',
    "request.row_fields": "A column named model, system, max_tokens or messages sets that "
    "field of its row's request.",
    "request.attachments": "Columns holding a path or URL of an image or PDF, sent before the "
    "prompt (local files as base64, the media type from the content).",
    "request.anthropic_version": "The `anthropic-version` header. Default: 2023-06-01.",
    "request.anthropic_beta": "`anthropic-beta` header values. Default: none.",
    "request.keep_thinking": "Keep the answer's thinking text in the results' `thinking` column.",
    "batch.max_bytes": "Largest body of one batch in bytes; the Message Batches API takes at "
    "most 256 MB.",
    "retry.max_retry_after": "Longest `retry-after` honoured, in seconds; a longer one is "
    "cut to it.",
}


RUN_STATES = {
    "finished": "Every row has its outcome (exit 0 or 1).",
    "interrupted": "Ctrl-C or SIGTERM stopped it (exit 130); resumable.",
    "stopped": "A fatal API answer (exit 3) or a local failure (exit 4) stopped it; `reason` "
    "says which; resumable once fixed.",
    "budget": "The `--max-cost` cap stopped it (exit 5); resumable with a higher cap.",
    "crashed": "Its last session never wrote its end (killed, or the machine went down); "
    "only reports say it, from run.json; resumable.",
    "running": "A live process holds it; only reports say it.",
}


class MissingDescription(Exception):
    """Something in the code has no description here: the page would be incomplete."""


def _described(table: Mapping[Any, str], name: Any, where: str) -> str:
    if name not in table:
        raise MissingDescription(f"describe {where} '{name}' in runner/reference.py")
    return table[name]


def _dtype(dtype: Any) -> str:
    if isinstance(dtype, pl.Datetime):
        return f"datetime ({dtype.time_zone or 'naive'})"
    return str(dtype).lower()


def _columns_table(schema: dict[str, Any], docs: dict[str, str], where: str) -> list[str]:
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, dtype in schema.items():
        lines.append(f"| `{name}` | {_dtype(dtype)} | {_described(docs, name, where)} |")
    return lines


def _run_options() -> dict[str, click.Option]:
    command = cli.commands["run"]
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def _split_help(text: str) -> tuple[str, str | None]:
    """A help text's meaning and its `Default: ...` part, if it has one."""
    meaning, _, default = text.partition("Default: ")
    return meaning.strip(), default.strip().rstrip(".") or None


def _toml(value: Any) -> str:
    """A default as the job file would spell it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(said: str | None, default: Any) -> str:
    """The default a job key has: the flag's `Default:` less its "the job's ..." part."""
    if said is not None and said.startswith("the job's"):
        said = said.partition(", else ")[2] or "required"
    if said is not None:
        return said
    if default is MISSING or default is None:
        return "required" if default is MISSING else "none"
    return _toml(default)


def job_keys() -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, flag, meaning) for every key a job file can hold."""
    options = _run_options()
    defaults = {f.name: f.default for f in fields(Job)}
    keys: list[tuple[str, Any, Any]] = [
        (name, kind, defaults.get(name, MISSING)) for name, kind in _TOP_KEYS.items()
    ]
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            keys.append((f"{section}.{f.name}", _expected_type(cls, f.name), f.default))
    rows = []
    for key, kind, default in keys:
        option = options.get(SETTING_FLAGS.get(key, ""))
        flag = ", ".join(f"`{o}`" for o in option.opts) if option else "—"
        text = option.help if option and option.help else _described(JOB_KEYS, key, "job key")
        meaning, said_default = _split_help(text)
        shown = _default(said_default, default)
        type_name = _type_name(kind).removeprefix("a ").removeprefix("an ")
        rows.append((key, type_name, shown, flag, meaning))
    return rows


def exit_codes() -> dict[int, list[str]]:
    """Every exit code the code can give, with the error classes that carry it."""
    codes: dict[int, list[str]] = {}
    for name in dir(run):
        if name.startswith("EXIT_"):
            codes.setdefault(getattr(run, name), [])
    pending = [errors.RunnerError]
    while pending:
        cls = pending.pop(0)
        if "exit_code" in vars(cls):
            codes.setdefault(cls.exit_code, []).append(cls.__name__)
        pending.extend(cls.__subclasses__())
    return dict(sorted(codes.items()))


def _help(name: str) -> str:
    command = cli.commands[name]
    parent = click.Context(cli, info_name="runner", max_content_width=100, terminal_width=100)
    with click.Context(command, parent=parent, info_name=name) as ctx:
        return command.get_help(ctx)


def render() -> str:
    """The whole reference page, as the code says it today."""
    out = [
        "# runner reference",
        "",
        "<!-- Generated by `python -m runner.reference` from the code; do not edit by hand.",
        "     CI runs `python -m runner.reference --check`. -->",
        "",
        "## Exit codes",
        "",
        "`summary.json` records the run's exit code.",
        "",
        "| code | meaning | raised as |",
        "|---|---|---|",
    ]
    for code, classes in exit_codes().items():
        raised = ", ".join(f"`{c}`" for c in classes) or "—"
        out.append(f"| {code} | {_described(EXIT_CODES, code, 'exit code')} | {raised} |")
    out += [
        "",
        "## Run states",
        "",
        "`summary.json` and `runner report --json` say how a run ended in `state` (with",
        "`reason`, `exit_code` and `resume_command`).",
        "",
        "| state | meaning |",
        "|---|---|",
        *(
            f"| `{state.value}` | {_described(RUN_STATES, state.value, 'run state')} |"
            for state in RunState
        ),
    ]
    out += [
        "",
        "## Job file keys",
        "",
        "A job file (TOML) holds what the flags can say; a flag overrides the file. Paths in",
        "a job file are relative to the file. `output_dir` matters under cron: without it",
        "(or `--output-dir`), runs go to `reports/` under the current directory, which for",
        "a crontab is the user's home; set an absolute `output_dir` in a nightly job.",
        "",
        "| key | type | default | flag | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, kind, default, flag, meaning in job_keys():
        out.append(f"| `{key}` | {kind} | {default} | {flag} | {meaning} |")
    out += [
        "",
        "## Results: `results/*.parquet`",
        "",
        "One row per input row, exactly once, in input order once compacted.",
        "",
        *_columns_table(RESULT_SCHEMA, RESULT_COLUMNS, "results column"),
        "",
        "`state/*.parquet` holds, row for row beside each results part:",
        "",
        *_columns_table(STATE_SCHEMA, STATE_COLUMNS, "state column"),
        "",
        "## Attempts: `attempts/*.parquet`",
        "",
        "One row per HTTP attempt, failed ones included.",
        "",
        *_columns_table(ATTEMPT_SCHEMA, ATTEMPT_COLUMNS, "attempts column"),
        "",
        "## Commands",
    ]
    for name in sorted(cli.commands):
        out += ["", f"### `runner {name}`", "", "```", _help(name).rstrip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/reference.md, or with --check say whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m runner.reference", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    try:
        text = render()
    except MissingDescription as exc:
        print(f"reference: {exc}", file=sys.stderr)
        return 1
    current = DOC_PATH.read_text("utf-8") if DOC_PATH.exists() else ""
    if not args.check:
        DOC_PATH.parent.mkdir(exist_ok=True)
        DOC_PATH.write_text(text, "utf-8")
        return 0
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(), text.splitlines(), "docs/reference.md", "from the code", lineterm=""
    )
    print("\n".join(diff), file=sys.stderr)
    print(
        "reference: docs/reference.md is stale: run `python -m runner.reference`", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
