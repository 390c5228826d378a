"""The SSE decoder and the answer reader alone: fragmented bytes, odd shapes, no I/O."""

from __future__ import annotations

import json
import random

import pytest
from hostile import encode, shaped_events

from runner.errors import MidstreamError
from runner.reading import AnswerReader, BadAnswer
from runner.sse import EventNotText, EventTooLarge, SseDecoder

STREAM = (
    b": a comment\r\n"
    b"event: message_start\r\n"
    b'data: {"a":\r\n'
    b"data: 1}\r\n"
    b"\r\n"
    b"id: 7\n"
    b"data:no space\n"
    b"\n"
    b"event: x\r"
    b"data\r"
    b"\r"
    b"event: ping\n\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac\n\n"
)
EXPECTED = [
    ("message_start", '{"a":\n1}'),
    ("", "no space"),
    ("x", ""),
    ("", "café €"),
]


def _decode_in_pieces(data: bytes, cuts: list[int], cap: int = 1 << 20) -> list[tuple[str, str]]:
    decoder = SseDecoder(cap)
    events = []
    start = 0
    for cut in [*cuts, len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events + decoder.flush()


def test_every_split_of_a_stream_gives_the_same_events() -> None:
    # Every single cut point, CR/LF pairs and multi-byte characters included.
    for cut in range(1, len(STREAM)):
        assert _decode_in_pieces(STREAM, [cut]) == EXPECTED, cut
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), 6))
        assert _decode_in_pieces(STREAM, cuts) == EXPECTED, cuts


def test_a_last_event_without_its_blank_line_is_flushed() -> None:
    assert _decode_in_pieces(b"event: message_stop\ndata: {}", []) == [("message_stop", "{}")]


def test_an_event_over_the_cap_is_refused_before_it_ends() -> None:
    decoder = SseDecoder(1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 200)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(EventNotText):
        SseDecoder(1000).feed(b"data: \xff\xfe\n\n")


def _read(events: list[dict], named: bool = True):
    reader = AnswerReader(0.0)
    completion = None
    for kind, data in SseDecoder(1 << 20).feed(encode(events, named=named)):
        completion = completion or reader.on_event(kind, data)
    return completion


@pytest.mark.parametrize("shape", ["text", "thinking", "tool_use", "citations", "refusal"])
@pytest.mark.parametrize("named", [True, False])
def test_real_shapes_named_or_data_only(shape: str, named: bool) -> None:
    completion = _read(shaped_events(shape), named)
    assert completion is not None and completion.text == "hello world"
    assert completion.usage.input_tokens == 12 and completion.usage.output_tokens == 7
    assert completion.stop_reason == {"tool_use": "tool_use", "refusal": "refusal"}.get(
        shape, "end_turn"
    )


@pytest.mark.parametrize(
    ("index", "fields"),
    [
        (0, {"message": None}),
        (0, {"message": {"usage": [1]}}),
        (3, {"delta": None}),
        (3, {"delta": {"type": "text_delta", "text": None}}),
        (3, {"delta": "text"}),
        (5, {"usage": 7}),
        (5, {"delta": {"stop_reason": 3}}),
    ],
)
def test_wrong_shapes_are_a_bad_answer(index: int, fields: dict) -> None:
    events = [dict(e) for e in shaped_events("text")]
    events[index].update(fields)
    with pytest.raises(BadAnswer):
        _read(events)


def test_odd_but_harmless_values_are_tolerated() -> None:
    events = [dict(e) for e in shaped_events("text")]
    events[5] = {"type": "message_delta", "delta": None, "usage": None}
    events[0] = json.loads(json.dumps(events[0]))
    events[0]["message"]["usage"]["input_tokens"] = True  # not a count: left out
    completion = _read(events)
    assert completion is not None and completion.usage.input_tokens == 0


def test_an_error_event_is_a_midstream_error() -> None:
    events = [shaped_events("text")[0], {"type": "error", "error": {"type": "overloaded_error"}}]
    with pytest.raises(MidstreamError):
        _read(events, named=False)


def test_a_whole_message_is_an_answer() -> None:
    body = {
        "type": "message",
        "content": [{"type": "thinking", "thinking": "x"}, {"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    completion = AnswerReader(0.0).on_message(json.dumps(body).encode())
    assert (completion.text, completion.usage.output_tokens) == ("hi", 2)
    for bad in (b"null", b"[]", b'{"content": null}', b'{"content": [1]}', b"\xff"):
        with pytest.raises(BadAnswer):
            AnswerReader(0.0).on_message(bad)
