"""runner's own network backend (runner/network.py): HTTPS to the mock, and flow control.

The certificates are made here by trustme; runner trusts the test's CA the way a user
would, through SSL_CERT_FILE (httpx.create_ssl_context reads it).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpcore
import pytest
import trustme
from aiohttp import web
from click.testing import CliRunner, Result
from helpers import prompts, results_of, write_jsonl

from runner.cli import cli
from runner.mock import MockConfig
from runner.mock.record import MockRecord
from runner.mock.serve import serve_app_in_thread
from runner.mock.server import create_app
from runner.network import PAUSE_BYTES, SCRATCH_BYTES, AsyncioBackend
from runner.transport import ShardedTransport

ROWS = 12


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority that exists only for these tests."""
    return trustme.CA()


def _trust(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))


@pytest.fixture
def https_mock(ca: trustme.CA) -> Iterator[tuple[str, MockRecord]]:
    """The mock API over HTTPS on 127.0.0.1, its certificate for 127.0.0.1 from `ca`."""
    yield from _serve(ca, "127.0.0.1")


def _serve(ca: trustme.CA, *names: str) -> Iterator[tuple[str, MockRecord]]:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_tls)
    record = MockRecord()
    with serve_app_in_thread(create_app(MockConfig(), record), tls=server_tls) as url:
        yield url, record


def _run(tmp_path: Path, base_url: str, *flags: str) -> Result:
    input_path = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS, prefix="tls"))
    args = ["run", "--input", str(input_path), "--id-column", "id", "--base-url", base_url]
    args += ["--model", "claude-sonnet-5-5", "--max-tokens", "64", "--concurrency", "4"]
    args += ["--output-dir", str(tmp_path / "reports"), "--run-id", "tls", *flags]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_a_run_over_https_reads_every_answer(
    https_mock: tuple[str, MockRecord],
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, record = https_mock
    assert url.startswith("https://127.0.0.1:")
    _trust(ca, tmp_path, monkeypatch)
    result = _run(tmp_path, url)
    assert result.exit_code == 0, result.output
    results = results_of(tmp_path / "reports" / "in" / "tls")
    assert results.height == ROWS and set(results["status"]) == {"ok"}
    for prompt, text in zip(results["id"], results["output_text"], strict=True):
        expected = record.final_for_prompt(f"tls {int(prompt)}: say something").text
        assert text == expected


def _assert_refused(result: Result, why: str) -> None:
    # Not the rows' fault: the endpoint cannot be reached safely, the run stops (exit 3).
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    (line,) = [line for line in result.output.splitlines() if why in line]
    assert "state: stopped (exit 3)" in line and "ConnectError" in line


def test_an_untrusted_certificate_stops_the_run_with_one_line(
    https_mock: tuple[str, MockRecord], tmp_path: Path
) -> None:
    url, record = https_mock
    # SSL_CERT_FILE is unset: the test's CA is not among the trusted ones.
    result = _run(tmp_path, url, "--max-attempts", "2")
    _assert_refused(result, "CERTIFICATE_VERIFY_FAILED")
    assert not record.attempts()


def test_a_certificate_for_another_host_stops_the_run_with_one_line(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trust(ca, tmp_path, monkeypatch)
    for url, record in _serve(ca, "api.example.com"):
        result = _run(tmp_path, url, "--max-attempts", "2")
        _assert_refused(result, "certificate is not valid for '127.0.0.1'")
        assert not record.attempts()


@pytest.mark.anyio
async def test_a_reader_that_falls_behind_pauses_the_socket_and_loses_nothing() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, far more than the pause threshold

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", big)
    with serve_app_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=10)
        await stream.write(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        receiver = stream._receiver  # type: ignore[attr-defined]
        with anyio.fail_after(10):
            while not receiver.reading_paused:  # nobody reads: the buffer must stop growing
                await anyio.sleep(0.01)
        assert receiver.unread <= PAUSE_BYTES + SCRATCH_BYTES
        received = bytearray()
        with anyio.fail_after(10):
            while chunk := await stream.read(SCRATCH_BYTES):
                received += chunk
        await stream.aclose()
    assert received.endswith(body) and received.startswith(b"HTTP/1.1 200")


@pytest.mark.anyio
async def test_a_server_silent_in_the_tls_handshake_is_a_connect_timeout() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the ClientHello; ends when the client goes
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=10)
        with pytest.raises(httpcore.ConnectTimeout):
            await stream.start_tls(ssl.create_default_context(), "127.0.0.1", timeout=0.2)
        with anyio.fail_after(10):  # the timed-out connection was closed, not left open
            await closed.wait()


def test_the_sharded_pools_connect_through_runners_backend() -> None:
    """The switch holds: should httpx move its pool, this fails instead of runner slowing."""
    transport = ShardedTransport(concurrency=8)
    backends = {type(shard._pool._network_backend) for shard in transport._shards}
    assert backends == {AsyncioBackend}
