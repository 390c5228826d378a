"""Server-Sent Events from raw bytes, with a cap on each event; no I/O, state kept inside.

Follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation:
lines end in CRLF, LF or CR; a blank line ends an event; `event:` names it, `data:` lines
are joined with LF; lines starting with `:` are comments; one space after the colon is
dropped; other fields (`id:`, `retry:`) mean nothing to a Messages stream and are ignored.
An event without `event:` gets the name "" here (the spec's "message"), so the caller can
take its type from the JSON, as data-only proxies expect.
"""

from __future__ import annotations


class EventTooLarge(ValueError):
    """One event grew past the decoder's cap before it ended."""


class EventNotText(ValueError):
    """An event's bytes are not UTF-8."""


class SseDecoder:
    """Turns chunks of bytes into (event name, data) pairs as each event completes."""

    __slots__ = ("_buffer", "_max_event_bytes", "_trailing_cr")

    def __init__(self, max_event_bytes: int) -> None:
        self._max_event_bytes = max_event_bytes
        self._buffer = b""
        self._trailing_cr = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The events that `chunk` completes, in order."""
        if self._trailing_cr:
            chunk = b"\r" + chunk
            self._trailing_cr = False
        if b"\r" in chunk:
            # A CR at the end may be the first half of a CRLF: keep it for the next chunk.
            if chunk.endswith(b"\r"):
                self._trailing_cr = True
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        if len(self._buffer) > self._max_event_bytes:
            raise EventTooLarge(f"an event exceeds {self._max_event_bytes} bytes")
        events = []
        for block in blocks:
            if len(block) > self._max_event_bytes:
                raise EventTooLarge(f"an event exceeds {self._max_event_bytes} bytes")
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[tuple[str, str]]:
        """The last event, when the stream ended without the blank line after it."""
        block, self._buffer = self._buffer, b""
        event = _parse_block(block) if block.strip() else None
        return [event] if event is not None else []


def _parse_block(block: bytes) -> tuple[str, str] | None:
    """One event's lines as (name, data); None for a block of comments or without data."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventNotText(f"an event is not UTF-8: {exc.reason} at byte {exc.start}") from None
    name = ""
    data: list[str] = []
    for line in text.split("\n"):
        field, colon, value = line.partition(":")
        if not field:
            continue  # a comment (":...") or a blank line
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None  # as per the spec, an event without data is not dispatched
    return name, "\n".join(data)
