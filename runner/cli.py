"""The command line: parse options, call the library, turn a RunnerError into a line and a code."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from runner import __version__
from runner.apikey import mask
from runner.batch_session import cancel_run
from runner.errors import RunnerError, UsageError
from runner.export import FORMATS
from runner.final_summary import print_failure, print_summary
from runner.input_formats import format_names
from runner.job import Mode, resolve_job
from runner.logs import setup_logging
from runner.models import Status
from runner.outcome import exit_codes_help
from runner.progress import DEFAULT_PLAIN_INTERVAL_S, make_progress
from runner.run import RunOptions, RunOutcome, execute

log = logging.getLogger("runner")

DEMO_API_KEY = "demo-key-not-secret"


def _fail(exc: RunnerError, log_format: str = "text", *, sends: bool = True) -> None:
    """Print the error and exit with its code; `sends` is False for commands that never send."""
    print_failure(mask(str(exc)), exc.exit_code, log_format=log_format, sends=sends)
    sys.exit(exc.exit_code)


_debug = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="runner")
@click.option("--debug", is_flag=True, help="Show a traceback for unexpected errors.")
def cli(debug: bool) -> None:
    """Run prompts through the Anthropic Messages API in bulk, and account for every token."""
    global _debug
    _debug = debug


def main() -> None:
    """The `runner` command: a bug shows as one line unless --debug asks for the traceback."""
    # SIGTERM (a scheduler stopping the job) is handled like Ctrl-C everywhere: exit 130.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        # Ctrl-C before the run's own signal handling started: nothing was sent yet.
        click.echo("runner: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _debug:
            raise
        click.echo(
            f"runner: internal error: {type(exc).__name__}: {mask(str(exc))} "
            "(run `runner --debug ...` for the traceback)",
            err=True,
        )
        sys.exit(1)


def _run_options(func: Any) -> Any:
    """The options of `runner run`, shared with `runner estimate`."""
    options = [
        click.argument("job_file", required=False, type=click.Path(path_type=Path)),
        click.option(
            "--input",
            "input_path",
            type=click.Path(path_type=Path),
            help="Input file (.csv, .jsonl or .parquet; .gz or .zst compressed), "
            "or - for stdin. Default: the job's `input`.",
        ),
        click.option(
            "--input-format",
            type=click.Choice(format_names()),
            help="Input format when the extension does not say (stdin). Default: from the "
            "extension.",
        ),
        click.option("--id-column", help="Column holding each row's id. Default: the row number."),
        click.option(
            "--base-url",
            help="API base URL. Default: the job's, else $ANTHROPIC_BASE_URL, "
            "else https://api.anthropic.com.",
        ),
        click.option("--model", help="Model id. Default: the job's [request] model."),
        click.option("--max-tokens", type=int, help="max_tokens per request. Default: 1024."),
        click.option("--system", help="System prompt. Default: the job's, else none."),
        click.option(
            "--prompt",
            help="Prompt template, {column} filled from each row. Default: "
            "the `prompt` column as it is.",
        ),
        click.option("--concurrency", type=int, help="Requests in flight at most. Default: 16."),
        click.option("--rpm", type=int, help="Requests per minute allowed. Default: not limited."),
        click.option(
            "--itpm", type=int, help="Input tokens per minute allowed. Default: not limited."
        ),
        click.option(
            "--otpm", type=int, help="Output tokens per minute allowed. Default: not limited."
        ),
        click.option("--max-attempts", type=int, help="HTTP attempts per row at most. Default: 8."),
        click.option(
            "--idle-timeout",
            type=float,
            help="Seconds without a byte of the stream before it counts as stalled. Default: 60.",
        ),
        click.option(
            "--attempt-timeout",
            type=float,
            help="Seconds one attempt may take in all, pings or not, before it is retried. "
            "Default: 1800.",
        ),
        click.option(
            "--max-event-bytes",
            type=int,
            help="Largest single stream event accepted; over it the row fails as "
            "response_too_large. Default: 16 MiB.",
        ),
        click.option(
            "--max-answer-bytes",
            type=int,
            help="Largest whole answer accepted; over it the row fails as response_too_large. "
            "Default: 64 MiB.",
        ),
        click.option(
            "--allow-insecure-http",
            is_flag=True,
            default=None,
            help="Allow a plain http:// base URL on another host (the key crosses the network "
            "unencrypted). Default: refused, except for loopback.",
        ),
        click.option(
            "--prices",
            type=click.Path(path_type=Path),
            help="Price file that overrides or extends the built-in table.",
        ),
        click.option("--limit", type=int, help="Only the first N input rows. Default: all."),
        click.option(
            "--max-cost",
            type=float,
            metavar="USD",
            help="Stop sending before the spend (this run id, retries included) plus the worst "
            "case in flight could pass USD; exit 5, resumable with a higher cap. "
            "Default: the job's [limits] max_cost_usd, else no cap.",
        ),
        click.option(
            "--mode",
            type=click.Choice([m.value for m in Mode]),
            help="stream: each request on its own; batch: Message Batches at half the price, "
            "results within 24 hours. Default: the job's `mode`, else stream.",
        ),
        click.option(
            "--batch-size",
            type=int,
            help="Requests per batch in batch mode (at most 100,000; each batch also stays "
            "under 256 MB). Default: 10,000.",
        ),
        click.option(
            "--poll-interval",
            type=float,
            help="Seconds between checks of the running batches in batch mode. Default: 60.",
        ),
        click.option(
            "--allow-retired",
            is_flag=True,
            help="Send to a model the price table says is retired (a reseller may still "
            "serve it). Default: refuse with exit 2.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# Each job setting a flag can give, and the flag's parameter name (`--rpm` is `rpm`).
SETTING_FLAGS = {
    "input": "input_path",
    "input_format": "input_format",
    "id_column": "id_column",
    "base_url": "base_url",
    "prices": "prices",
    "output_dir": "output_dir",
    "request.model": "model",
    "request.max_tokens": "max_tokens",
    "request.system": "system",
    "request.prompt": "prompt",
    "limits.concurrency": "concurrency",
    "limits.requests_per_minute": "rpm",
    "limits.input_tokens_per_minute": "itpm",
    "limits.output_tokens_per_minute": "otpm",
    "limits.max_cost_usd": "max_cost",
    "dedupe": "dedupe",
    "cache": "cache",
    "retry.max_attempts": "max_attempts",
    "retry.idle_timeout": "idle_timeout",
    "retry.attempt_timeout": "attempt_timeout",
    "limits.max_event_bytes": "max_event_bytes",
    "limits.max_answer_bytes": "max_answer_bytes",
    "allow_insecure_http": "allow_insecure_http",
    "retry.grace_period": "grace_period",
    "mode": "mode",
    "batch.size": "batch_size",
    "batch.poll_interval": "poll_interval",
}


def _flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {setting: kwargs.get(param) for setting, param in SETTING_FLAGS.items()}


@cli.command(epilog=exit_codes_help())
@_run_options
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    help="Where runs are written: DIR/<job>/<run-id>/. Default: the job's output_dir, "
    "else reports/ under the current directory (under cron, the user's home).",
)
@click.option(
    "--run-id",
    help="Run id; an existing one resumes, a new one starts a run (and says so). "
    "Default: a new timestamp id.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Resume the job's most recently started run (by run.json's start time); with "
    "--run-id, resume that run, which must exist (exit 2 lists the runs).",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Keep every ok answer in DIR by request fingerprint and reuse it (at $0) in later "
    "runs of the same request; safe for runs sharing DIR. Default: the job's `cache`, else none.",
)
@click.option(
    "--dedupe",
    is_flag=True,
    default=None,
    help="Send identical requests once and copy the answer to the other rows (copy_of, "
    "$0). Default: the job's `dedupe`, else every row is sent (samples may repeat on purpose).",
)
@click.option(
    "--grace-period",
    type=float,
    help="Seconds in-flight requests get after Ctrl-C/SIGTERM. Default: 10.",
)
@click.option(
    "--quiet",
    is_flag=True,
    help="Only warnings, errors and the final one-line summary. Default: off.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines for people or for log collectors (JSON: progress and summary as fields).",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_PLAIN_INTERVAL_S,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal "
    "(a terminal gets a live display instead).",
)
def run(**kwargs: Any) -> None:
    """Run a job: stream every row's completion and write the Parquet report."""
    setup_logging(kwargs["quiet"], kwargs["log_format"])
    try:
        job = resolve_job(kwargs["job_file"], _flags(kwargs))
        outcome = execute(
            job,
            RunOptions(
                output_dir=job.output_dir,
                run_id=kwargs["run_id"],
                resume=kwargs["resume"],
                limit=kwargs["limit"],
                argv=tuple(sys.argv[1:]),
                allow_retired=kwargs["allow_retired"],
                progress=make_progress(
                    quiet=kwargs["quiet"],
                    log_format=kwargs["log_format"],
                    interval=kwargs["progress_interval"],
                ),
            ),
        )
    except RunnerError as exc:
        _fail(exc, kwargs["log_format"])
    _finish(outcome, quiet=kwargs["quiet"], log_format=kwargs["log_format"])


def _finish(outcome: RunOutcome, *, quiet: bool = False, log_format: str = "text") -> None:
    print_summary(outcome, quiet=quiet, log_format=log_format)
    sys.exit(outcome.exit_code)


@cli.command()
@_run_options
@click.option(
    "--offline",
    is_flag=True,
    help="Estimate input tokens locally (about ±30%) instead of calling count_tokens. "
    "Default: count every request with the free count_tokens endpoint.",
)
@click.option(
    "--pilot",
    type=click.IntRange(min=1),
    metavar="K",
    help="Run the first K rows for real to learn output tokens and latency (this spends). "
    "Default: learn from the job's latest earlier run, if any.",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    help="Where the pilot run is written and earlier runs are looked for. "
    "Default: the job's output_dir, else reports/ under the current directory.",
)
@click.option(
    "--count-concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="count_tokens requests in flight at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON. Default: text for people.")
def estimate(**kwargs: Any) -> None:
    """Predict a job's rows, tokens, cost (standard and batch) and wall time before running it.

    Invalid rows are counted and listed, not fatal. Retries are not in the figures.
    """
    from runner.estimate import EstimateOptions, estimate, format_estimate

    setup_logging(quiet=kwargs["as_json"])
    try:
        job = resolve_job(kwargs["job_file"], _flags(kwargs))
        figures = estimate(
            job,
            EstimateOptions(
                offline=kwargs["offline"],
                pilot=kwargs["pilot"],
                limit=kwargs["limit"],
                output_dir=job.output_dir,
                count_concurrency=kwargs["count_concurrency"],
                allow_retired=kwargs["allow_retired"],
            ),
        )
    except RunnerError as exc:
        _fail(exc)
    click.echo(json.dumps(figures, indent=2) if kwargs["as_json"] else format_estimate(figures))


@cli.command()
@click.argument("path", metavar="RUN_DIR|JOB_DIR|REPORTS_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON. Default: text for people.")
@click.option(
    "--html",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write an HTML report to FILE. Default: none.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="DATE",
    help="Ledger only: runs started on or after DATE (YYYY-MM-DD, UTC). Default: all.",
)
def report(path: Path, as_json: bool, html: Path | None, since: Any) -> None:
    """Rows, tokens and cost per model, retries, latency, throughput and errors of a run.

    Given a job dir (reports/JOB/), sums every run of the job, one line per run. Given a
    folder of jobs (reports/), prints the ledger: spend per day, per job and per model.
    """
    from runner.ledger import build_ledger, format_ledger, is_ledger
    from runner.report import build_report, format_report

    setup_logging()
    try:
        if as_json and html is not None:
            raise UsageError("give --json or --html, not both")
        ledger = is_ledger(path)
        if since is not None and not ledger:
            raise UsageError("--since applies to a folder of jobs (the ledger), not a run or job")
        if html is not None:
            from runner.html_report import write_html_report

            write_html_report(path, html, since.date() if since else None)
            click.echo(f"report: {html}")
            return
        if ledger:
            built = build_ledger(path, since.date() if since else None)
            text = format_ledger(built) if not as_json else ""
        else:
            built = build_report(path)
            text = format_report(built) if not as_json else ""
    except RunnerError as exc:
        _fail(exc)
    click.echo(json.dumps(built, indent=2) if as_json else text)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format. Default: from the file's extension (.jsonl, .ndjson, .csv, .parquet); "
    "JSONL for stdout. CSV is UTF-8 with a BOM, so Excel and LibreOffice read it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, allow_dash=True),
    required=True,
    help="File to write, or - for stdout. Required. A regular file is replaced whole "
    "(written aside, then renamed); a device, FIFO or symlink is written in place.",
)
@click.option(
    "--status",
    type=click.Choice([s.value for s in Status]),
    help="Only rows with this status. Default: every row.",
)
@click.option(
    "--usable",
    is_flag=True,
    help="Only complete answers: ok rows that are not refusals, empty, cut at max_tokens "
    "or pause_turn. Default: off.",
)
@click.option(
    "--columns",
    help="Comma-separated output columns, in this order. Default: id, the input's columns, "
    "then the result columns. Also: prompt (the user message as sent) and system. "
    "Result columns alone need no input file.",
)
@click.option(
    "--expand-json",
    is_flag=True,
    help="Add a column per top-level field of the structured answers (output_json), "
    "named like the field (output_json.<field> where that name is taken). Default: off.",
)
def export(
    run_dir: Path,
    fmt: str | None,
    output: Path,
    status: str | None,
    usable: bool,
    columns: str | None,
    expand_json: bool,
) -> None:
    """Write a run's results joined to their input rows, in input order.

    An input column named like an output column (id, status, prompt, ...) is renamed
    input_<name>. The input file must be unchanged since the run.
    """
    from runner.export import export_run

    setup_logging()
    wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    try:
        count = export_run(
            run_dir,
            output,
            fmt,
            status=status,
            usable=usable,
            columns=wanted,
            expand_json=expand_json,
        )
    except RunnerError as exc:
        _fail(exc, sends=False)
    where = "stdout" if str(output) == "-" else output
    click.echo(f"exported {count:,} rows to {where}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--base-url",
    help="API base URL. Default: the one the run used (its run.json).",
)
def cancel(run_dir: Path, base_url: str | None) -> None:
    """Cancel a batch run's batches still in progress, wait for them to end, and record
    what ended (items that finished before the cancel are kept and billed; a resume
    sends the canceled rows again).

    Exit codes: 0 done, 2 not a run directory or the run is still live, 3 stopped by a
    fatal API answer.
    """
    setup_logging()
    try:
        outcome = cancel_run(run_dir, base_url=base_url)
    except RunnerError as exc:
        _fail(exc)
    stats = outcome.stats
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(stats.statuses.items())) or "no rows"
    click.echo(
        f"canceled {outcome.canceled} batches; their ends settled {statuses} "
        f"(${stats.cost_usd:.4f} billed)"
    )
    if outcome.message:
        click.echo(f"runner: stopped: {outcome.message}", err=True)
        sys.exit(3)


def _demo_job() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / "jobs" / "demo.toml"
        if candidate.is_file():
            return candidate
    raise UsageError("jobs/demo.toml not found: run `runner demo` from the project's checkout")


@cli.command()
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where the demo run is written.",
)
@click.option(
    "--latency-ms",
    type=float,
    default=20.0,
    show_default=True,
    help="The mock API's delay before each answer.",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.STREAM.value,
    show_default=True,
    help="stream, or batch: the mock's Message Batches API (a batch takes about 3 s, "
    "5% of items come back errored or expired and are sent again).",
)
def demo(output_dir: Path, latency_ms: float, mode: str) -> None:
    """Run jobs/demo.toml end to end on the bundled mock API: offline, no API key needed."""
    from runner.mock import MockConfig, serve_in_thread

    setup_logging()
    started = time.monotonic()
    config = MockConfig(
        latency_ms=latency_ms, batch_processing_s=3.0, batch_errored=0.03, batch_expired=0.02
    )
    flags: dict[str, Any] = {"mode": mode, "batch.poll_interval": 1.0}
    try:
        with serve_in_thread(config) as mock:
            log.info("mock API on %s", mock.base_url)
            job = resolve_job(_demo_job(), {"base_url": mock.base_url, **flags})
            outcome = execute(
                job,
                RunOptions(
                    output_dir=output_dir,
                    api_key=DEMO_API_KEY,
                    argv=("demo",),
                    progress=make_progress(),
                ),
            )
    except RunnerError as exc:
        _fail(exc)
    log.info("demo finished in %.1f s", time.monotonic() - started)
    _finish(outcome)


@cli.group()
def cache() -> None:
    """The answer cache of `runner run --cache DIR`."""


@cache.command("prune")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--older-than",
    metavar="AGE",
    help="Drop answers not used for AGE (30d, 12h, 90m). Default: keep them.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    metavar="N",
    help="Keep only the N most recently used answers. Default: no limit.",
)
def cache_prune(directory: Path, older_than: str | None, keep: int | None) -> None:
    """Drop old answers from a cache folder, so it stays bounded."""
    from runner.cache import parse_age, prune

    try:
        if older_than is None and keep is None:
            raise UsageError("give --older-than AGE, --keep N, or both")
        age = parse_age(older_than) if older_than is not None else None
        dropped, kept = prune(directory, age, keep)
    except RunnerError as exc:
        _fail(exc)
    click.echo(f"cache {directory}: dropped {dropped:,} answers, kept {kept:,}")


def _register_mock_server() -> None:
    from runner.mock.command import mock_server

    cli.add_command(mock_server, "mock-server")


_register_mock_server()
