"""httpcore's network backend straight over asyncio's transports: sockets and TLS for the pools.

httpcore's own anyio backend wraps every read in a timer (`fail_after`, even with no
timeout), pauses and resumes the socket around every read (two `epoll_ctl` calls) and lets
asyncio `recv` 256 KiB per read; on long streams that was about a sixth of runner's CPU
(bench/README.md). Here a `BufferedProtocol` receives into one scratch buffer, keeps each
read as exactly-sized bytes and pauses the socket only when a reader falls far behind.

It uses asyncio directly: runner runs on anyio's asyncio backend (`anyio.run`). Failures
are raised as the httpcore exceptions its own backends raise, so httpx maps them to the
same `httpx.TransportError` subclasses and client.py's translation stays the one place.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

# What one receive can take: httpcore asks for 64 KiB a read, and a TLS record holds 16.
SCRATCH_BYTES = 64 * 1024
# A reader that falls this far behind pauses its socket until it is down to RESUME_BYTES.
PAUSE_BYTES = 4 * SCRATCH_BYTES
RESUME_BYTES = SCRATCH_BYTES


class _Receiver(asyncio.BufferedProtocol):
    """What one connection has received and not yet read, and who waits for it."""

    def __init__(self, scratch: memoryview) -> None:
        self._scratch = scratch
        self.transport: Any = None  # the TLS transport once start_tls has run
        self.chunks: deque[bytes] = deque()
        self.unread = 0
        self.reading_paused = False
        self.ended = False
        self.error: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        # Shared by every connection of the backend: asyncio fills it and calls
        # buffer_updated in one step, with no other callback in between.
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(self._scratch[:nbytes]))
        self.unread += nbytes
        if self.unread > PAUSE_BYTES and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        _wake(self.read_waiter)

    def eof_received(self) -> bool:
        self.ended = True
        _wake(self.read_waiter)
        return False  # let the transport close itself; what was received is still read

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        _wake(self.read_waiter)
        _wake(self.drain_waiter)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self.drain_waiter)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _reason(exc: BaseException) -> str:
    """What went wrong below, for the message of the httpcore error raised for it."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, receiver: _Receiver, tls: bool) -> None:
        self._transport = transport
        self._receiver = receiver
        self._tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """The next bytes received (at most `max_bytes`), b"" at the end of the stream."""
        receiver = self._receiver
        chunks = receiver.chunks
        while not chunks:
            if receiver.ended:
                if receiver.error is not None:
                    raise httpcore.ReadError(_reason(receiver.error))
                return b""
            waiter = receiver.read_waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:  # runner's case: its watchdog times attempts, not reads
                    await waiter
                else:
                    await _within(waiter, timeout, httpcore.ReadTimeout)
            finally:
                receiver.read_waiter = None
        if len(chunks) > 1 and receiver.unread <= max_bytes:
            data = b"".join(chunks)
            chunks.clear()
        else:
            data = chunks.popleft()
            if len(data) > max_bytes:
                chunks.appendleft(data[max_bytes:])
                data = data[:max_bytes]
        receiver.unread -= len(data)
        if receiver.reading_paused and receiver.unread <= RESUME_BYTES:
            receiver.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send `buffer`, waiting while the transport's write buffer is over its limit."""
        if not buffer:
            return
        receiver = self._receiver
        if receiver.ended or self._transport.is_closing():
            why = "the connection is closed" if receiver.error is None else _reason(receiver.error)
            raise httpcore.WriteError(why)
        self._transport.write(buffer)
        while receiver.writing_paused and not receiver.ended:
            receiver.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(receiver.drain_waiter, timeout, httpcore.WriteTimeout)
            finally:
                receiver.drain_waiter = None
        if receiver.error is not None:
            raise httpcore.WriteError(_reason(receiver.error))

    async def aclose(self) -> None:
        """Close at once: under TLS without waiting for the server's close_notify (as anyio's)."""
        if self._tls:
            self._transport.abort()
        else:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """The same connection after a TLS handshake with `server_hostname`."""
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                tls = await loop.start_tls(
                    self._transport, self._receiver, ssl_context, server_hostname=server_hostname
                )
        except BaseException as exc:
            self._transport.abort()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
            if isinstance(exc, (ssl.SSLError, OSError)):
                raise httpcore.ConnectError(_reason(exc)) from exc
            raise
        if tls is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._receiver.transport = tls
        return AsyncioStream(tls, self._receiver, tls=True)

    def get_extra_info(self, info: str) -> Any:
        """What httpcore's pool asks of a connection; None for anything else."""
        if info == "is_readable":
            # Nothing waits unread in the kernel: the socket is always being read, so
            # data or the server's close show here (anyio's stream must poll the socket).
            return bool(self._receiver.chunks) or self._receiver.ended
        name = _EXTRA_INFO.get(info)
        return None if name is None else self._transport.get_extra_info(name)


# httpcore's names for what asyncio's transports call these (TLS ones pass the TCP ones on).
_EXTRA_INFO = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


async def _within(
    waiter: asyncio.Future[None], timeout: float | None, timed_out: type[Exception]
) -> None:
    """Wait for `waiter`, raising `timed_out` after `timeout` seconds (never, if None)."""
    if timeout is None:
        await waiter
        return
    try:
        with anyio.fail_after(timeout):
            await waiter
    except TimeoutError:
        raise timed_out(f"no progress within {timeout:g} s") from None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections for httpcore on the running asyncio loop."""

    def __init__(self) -> None:
        # One receive buffer for all connections (see _Receiver.get_buffer): one event loop only.
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A connected stream, or httpcore's ConnectError / ConnectTimeout."""
        loop = asyncio.get_running_loop()
        receiver = _Receiver(self._scratch)
        local = (local_address, 0) if local_address else None
        try:
            with anyio.fail_after(timeout):
                transport, _ = await loop.create_connection(
                    lambda: receiver, host, port, local_addr=local
                )
        except TimeoutError as exc:  # before OSError: a TimeoutError is one
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(_reason(exc)) from exc
        for option in socket_options or ():
            transport.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(transport, receiver, tls=False)

    async def sleep(self, seconds: float) -> None:
        """httpcore's pause between connect retries."""
        await asyncio.sleep(seconds)


def asyncio_transport(
    backend: AsyncioBackend, ssl_context: ssl.SSLContext, limits: httpx.Limits
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its request, response and exception mapping) over this backend."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    # httpx's transport takes no network backend: its pool is replaced by one that does.
    # An httpx that keeps its pool elsewhere keeps its own (anyio's) backend: slower, not wrong.
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        return transport
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport
