"""What a run prints when it ends: the summary lines, the `--quiet` line, the JSON event.

Every figure comes from summary.json's dict (runner.summary), the state and time
figures as runner.outcome defines them, so the last lines say what the files say.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from runner.accounting import batch_text, cost_text, usd
from runner.answers import answers_text
from runner.logs import emit, iso_time
from runner.outcome import count, per_second, seconds
from runner.stats import RunStats

log = logging.getLogger("runner")

# What to do after each exit code, before the resume command.
_NEXT_STEP = {
    1: "some rows failed; once the cause is fixed, send them again with",
    3: "the run stopped (the API refused it, or the endpoint cannot be reached); "
    "fix the cause above, then resume with",
    4: "a local failure stopped the run; fix it (disk space, open files, permissions), "
    "then resume with",
    5: "the --max-cost budget is spent; to go on, raise it and resume with",
    130: "interrupted; rows already ok are kept, resume with",
}


def most_common_error(stats: RunStats) -> str | None:
    """The error type that failed most rows in this session, with its count."""
    top = stats.error_types.most_common(1)
    return f"{top[0][0]} ({top[0][1]} rows)" if top else None


def summary_fields(outcome: Any) -> dict[str, Any]:
    """The final figures of a run (a `runner.run.RunOutcome`), for lines and JSON alike."""
    summary, stats = outcome.summary, outcome.stats
    session, whole = summary["this_session"], summary["time"]
    fields: dict[str, Any] = {
        "event": "summary",
        "state": summary["state"],
        "reason": summary["reason"],
        "exit_code": outcome.exit_code,
        "input_rows": summary["input_rows"],
        "rows": summary["rows"],
        "answers": summary["answers"],
        "rows_by_stop_reason": summary["rows_by_stop_reason"],
        "tokens": summary["tokens"],
        "cost_usd": summary["cost_usd"],
        "cost": cost_text(summary),
        "priced_rows": summary["priced_rows"],
        "unpriced_rows": summary["unpriced_rows"],
        "unpriced_models": summary["unpriced_models"],
        "retry_cost_usd": summary["retries"]["cost_usd"],
        "wall_time_s": session["wall_time_s"],
        "rows_per_s": session["rows_per_s"],
        "run_wall_time_s": whole["wall_time_s"],
        "run_rows_per_s": whole["rows_per_s"],
        "sessions": whole["sessions"],
        "rows_done": session["rows_done"],
        "rows_skipped": session["rows_skipped"],
        "session_cost_usd": round(stats.cost_usd, 6),
        "report": str(outcome.run_dir),
    }
    if summary.get("batch"):
        fields["batch"] = summary["batch"]
    if summary.get("cache"):
        fields["cache"] = summary["cache"]
    if outcome.exit_code != 0:
        fields["most_common_error"] = most_common_error(stats)
        fields["resume_command"] = summary.get("resume_command")
    return fields


def _state(f: dict[str, Any]) -> str:
    reason = f": {f['reason']}" if f["reason"] else ""
    return f"{f['state']} (exit {f['exit_code']}){reason}"


def _of_input(f: dict[str, Any]) -> str:
    """`of N input rows`: the input's rows, which is what "of" means in every output."""
    if f["input_rows"] is None:
        return "of ? input rows (the input was not read to its end)"
    return f"of {count(f['input_rows'])} input rows"


def _cache_text(cache: dict[str, Any]) -> str:
    return (
        f"cache: reused {count(cache['reused'])} answers (saved {usd(cache['saved_usd'])}), "
        f"stored {count(cache['stored'])}"
    )


def summary_lines(outcome: Any) -> list[str]:
    """The final lines: state, rows, answers, tokens, cost, wall time, the report, what next."""
    f = summary_fields(outcome)
    rows, tokens = f["rows"], f["tokens"]
    wall = f"wall time: {seconds(f['wall_time_s'])} ({per_second(f['rows_per_s'])})"
    if f["sessions"] > 1:
        wall += (
            f" this session; the whole run, {f['sessions']} sessions: "
            f"{seconds(f['run_wall_time_s'])} ({per_second(f['run_rows_per_s'])})"
        )
    lines = [
        f"state: {_state(f)}",
        f"rows: {count(rows['ok'])} ok, {count(rows['error'])} error, "
        f"{count(rows['invalid'])} invalid {_of_input(f)}; {count(f['rows_done'])} done in "
        f"this session, {count(f['rows_skipped'])} skipped as already ok",
        f"answers: {answers_text(f['answers'], f['rows']['ok'])}",
        f"tokens: {count(tokens['input_tokens'])} input, {count(tokens['output_tokens'])} output, "
        f"{count(tokens['cache_creation_input_tokens'])} cache write, "
        f"{count(tokens['cache_read_input_tokens'])} cache read",
        f"cost: {f['cost']} (retries: {usd(f['retry_cost_usd'])})"
        + (f"; this session {usd(f['session_cost_usd'])}" if f["sessions"] > 1 else ""),
        *([batch_text(f["batch"])] if f.get("batch") else []),
        *([_cache_text(f["cache"])] if f.get("cache") else []),
        wall,
        f"report: {f['report']}",
    ]
    if rows.get("not_in_input"):
        lines.insert(2, f"{count(rows['not_in_input'])} paid rows not in the current input (kept)")
    if f.get("most_common_error"):
        lines.append(f"most common error: {f['most_common_error']}")
    if f.get("resume_command"):
        step = _NEXT_STEP.get(f["exit_code"], "resume with")
        lines.append(f"next: {step}: {f['resume_command']}")
    return lines


def final_line(outcome: Any) -> str:
    """The whole summary on one line, for `--quiet`."""
    f = summary_fields(outcome)
    rows = f["rows"]
    answers = answers_text(f["answers"], rows["ok"])
    line = (
        f"runner: {_state(f)}: {count(rows['ok'])} ok, {count(rows['error'])} error, "
        f"{count(rows['invalid'])} invalid {_of_input(f)}; {answers}; "
        f"{count(f['tokens']['input_tokens'])} in / {count(f['tokens']['output_tokens'])} out "
        f"tokens; {f['cost']}; {seconds(f['wall_time_s'])}; report {f['report']}"
    )
    if f.get("most_common_error"):
        line += f"; most common error {f['most_common_error']}"
    if f.get("resume_command"):
        line += f"; resume: {f['resume_command']}"
    return line


def print_summary(outcome: Any, *, quiet: bool = False, log_format: str = "text") -> None:
    """Print the final summary where this invocation's user looks for it.

    Off a terminal (cron, a pipe) each line starts with the time, as the log lines do,
    so a log file that takes both stdout and stderr reads in one order with one clock.
    """
    if log_format == "json":
        emit(logging.INFO, final_line(outcome), summary_fields(outcome))
        return
    lines = [final_line(outcome)] if quiet else summary_lines(outcome)
    if not sys.stdout.isatty():
        stamp = iso_time(time.time())
        lines = [f"{stamp} {line}" for line in lines]
    print("\n".join(lines), flush=True)


def print_failure(
    message: str, exit_code: int, *, log_format: str = "text", sends: bool = True
) -> None:
    """The error and a final line for a command that stopped before it began.

    `sends` says the command would have sent requests (run, demo, estimate): its exit 2
    tells the user nothing was; `report` and `export` never send, so they do not say it.
    """
    nothing_sent = "nothing was sent; " if sends and exit_code == 2 else ""
    final = f"exit {exit_code}: {nothing_sent}fix the above"
    if log_format == "json":
        log.error("error: %s", message)
        emit(logging.INFO, final, {"event": "summary", "exit_code": exit_code, "error": message})
    else:
        # Through the handler, even under --quiet: a cron log gets its timestamps.
        emit(logging.ERROR, f"error: {message}", {})
        emit(logging.ERROR, final, {})
