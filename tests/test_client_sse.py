"""The client's SSE decoder alone: fragmented bytes, every line ending, the spec's odd cases."""

from __future__ import annotations

import pytest

from runner.client import SseDecoder

STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n\n'
    b": a comment line\n"
    b"event: content_block_delta\n"
    b'data: {"delta":{"type":"text_delta","text":"caf\xc3\xa9 \xf0\x9f\x99\x82"}}\n\n'
    b"event: ping\n"
    b"data: {}\n\n"
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
EXPECTED = [
    (b"message_start", b'{"type":"message_start"}'),
    (
        b"content_block_delta",
        b'{"delta":{"type":"text_delta","text":"caf\xc3\xa9 \xf0\x9f\x99\x82"}}',
    ),
    (b"ping", b"{}"),
    (b"message_stop", b'{"type":"message_stop"}'),
]


def decode(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    decoder = SseDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.finish()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_any_fragmentation_and_line_ending_gives_the_same_events(ending: bytes, size: int) -> None:
    stream = STREAM.replace(b"\n", ending)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert decode(chunks) == EXPECTED


def test_a_leading_bom_is_dropped_even_when_split() -> None:
    assert decode([b"\xef", b"\xbb", b"\xbf" + STREAM]) == EXPECTED


def test_multiline_data_joins_with_lf_and_one_space_is_stripped() -> None:
    events = decode([b"event:x\ndata:  a\ndata\ndata: b\n\n"])
    assert events == [(b"x", b" a\n\nb")]


def test_no_data_no_event_and_the_default_type_is_message() -> None:
    assert decode([b"event: lonely\n\n", b"data: 1\nid: 7\nretry: 5\n\n"]) == [(b"message", b"1")]


def test_an_unterminated_block_at_the_end_is_discarded() -> None:
    assert decode([b"event: message_stop\ndata: {}\n"]) == []
