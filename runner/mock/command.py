"""`runner mock-server`: run the bundled mock API in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from runner.mock.config import FAULT_KINDS, MockConfig
from runner.mock.record import MockRecord


def _parse_fault(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, float]:
    faults: dict[str, float] = {}
    for value in values:
        kind, sep, probability = value.partition("=")
        if not sep or kind not in FAULT_KINDS:
            raise click.BadParameter(
                f"{value!r}: expected KIND=P with KIND one of {', '.join(FAULT_KINDS)}"
            )
        try:
            faults[kind] = float(probability)
        except ValueError:
            raise click.BadParameter(f"{value!r}: P must be a number between 0 and 1") from None
    return faults


@click.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to bind; 0 picks a free one. The URL is printed as the first line of output.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay before the response headers (time to first event).",
)
@click.option(
    "--chunk-delay-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay between text deltas of a stream; 0 sends the whole stream at once.",
)
@click.option(
    "--api-key",
    default=None,
    help=(
        "Accept only this API key (x-api-key or Authorization: Bearer).  "
        "[default: any non-empty key]"
    ),
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random faults, so a rerun injects the same faults.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    callback=_parse_fault,
    metavar="KIND=P",
    help=(
        "Inject fault KIND into each attempt with probability P (repeatable; the P's sum to "
        f"at most 1). KIND: {', '.join(FAULT_KINDS)}. The last user message can also ask for one: "
        "[[fault:KIND]], [[fault:KIND:N]], [[fault:KIND:all]], [[fault:429:N:retry=S]].  "
        "[default: none]"
    ),
)
@click.option(
    "--stall-s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="How long a 'stall' fault keeps the stream silent before closing it.",
)
@click.option(
    "--rpm",
    type=click.IntRange(min=1),
    default=None,
    help="Requests per minute allowed.  [default: unlimited]",
)
@click.option(
    "--itpm",
    type=click.IntRange(min=1),
    default=None,
    help="Input tokens per minute allowed (cache reads do not count).  [default: unlimited]",
)
@click.option(
    "--otpm",
    type=click.IntRange(min=1),
    default=None,
    help="Output tokens per minute allowed.  [default: unlimited]",
)
@click.option(
    "--no-ratelimit-headers",
    is_flag=True,
    default=False,
    help="Send no anthropic-ratelimit-* headers, as many proxies do.  [default: send them]",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(min=1),
    default=MockConfig.max_request_bytes,
    show_default=True,
    help="Largest request body accepted; larger ones get 413 request_too_large.",
)
@click.option(
    "--context-window",
    type=click.IntRange(min=1),
    default=MockConfig.context_window,
    show_default=True,
    help="Most input tokens a prompt may have; longer prompts get 400 'prompt is too long'.",
)
@click.option(
    "--fragment-bytes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Write each stream in pieces of this many bytes (0: whole), to test clients "
    "against UTF-8 and lines split across reads.",
)
@click.option(
    "--batch-processing-s",
    type=click.FloatRange(min=0),
    default=MockConfig.batch_processing_s,
    show_default=True,
    help="How long a message batch takes to process (its items finish one after another).",
)
@click.option(
    "--batch-errored",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Each batch item's chance of ending errored (api_error or overloaded_error).",
)
@click.option(
    "--batch-expired",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Each batch item's chance of ending expired.",
)
@click.option(
    "--max-batch-bytes",
    type=click.IntRange(min=1),
    default=MockConfig.max_batch_bytes,
    show_default=True,
    help="Largest message batch body accepted; larger ones get 413 request_too_large.",
)
@click.option(
    "--record",
    "record_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Append one JSON line per attempt served to FILE when it ends: the prompt (the row "
    "marker), request id, status, outcome, usage reported and tokens generated, start and "
    "end time.  [default: none]",
)
@click.option(
    "--reply-tokens",
    type=click.IntRange(min=1),
    nargs=2,
    default=MockConfig.reply_tokens,
    show_default=True,
    metavar="MIN MAX",
    help="Output tokens of each reply, drawn between MIN and MAX (before max_tokens cuts it).",
)
@click.option(
    "--tokens-per-delta",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tokens in each text delta; 0 draws one to four per delta.",
)
def mock_server(
    host: str,
    port: int,
    latency_ms: float,
    chunk_delay_ms: float,
    api_key: str | None,
    seed: int,
    faults: dict[str, float],
    stall_s: float,
    rpm: int | None,
    itpm: int | None,
    otpm: int | None,
    no_ratelimit_headers: bool,
    max_request_bytes: int,
    context_window: int,
    fragment_bytes: int,
    batch_processing_s: float,
    batch_errored: float,
    batch_expired: float,
    max_batch_bytes: int,
    record_path: Path | None,
    reply_tokens: tuple[int, int],
    tokens_per_delta: int,
) -> None:
    """Serve the bundled mock Anthropic Messages API (POST /v1/messages,
    /v1/messages/count_tokens and the Message Batches endpoints) with deterministic
    replies, and faults and rate limits on demand. GET /_mock/stats shows what it
    served; POST /_mock/reset forgets it."""
    try:
        config = MockConfig(
            latency_ms=latency_ms,
            chunk_delay_ms=chunk_delay_ms,
            api_key=api_key,
            seed=seed,
            faults=faults,
            stall_s=stall_s,
            rpm=rpm,
            itpm=itpm,
            otpm=otpm,
            ratelimit_headers=not no_ratelimit_headers,
            max_request_bytes=max_request_bytes,
            fragment_bytes=fragment_bytes,
            context_window=context_window,
            batch_processing_s=batch_processing_s,
            batch_errored=batch_errored,
            batch_expired=batch_expired,
            max_batch_bytes=max_batch_bytes,
            reply_tokens=reply_tokens,
            tokens_per_delta=tokens_per_delta,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port, record_path))


async def _serve(config: MockConfig, host: str, port: int, record_path: Path | None) -> None:
    from runner.mock.serve import start_server, stop_server  # aiohttp: only when serving

    try:
        record = MockRecord(keep_attempts=False, record_path=record_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write {record_path}: {exc.strerror}") from None
    try:
        runner, url = await start_server(config, record, host, port)
    except OSError as exc:
        record.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(f"mock API listening on {url}")
    sys.stdout.flush()  # the URL line first, whatever buffers stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_server(runner)
        record.close()
