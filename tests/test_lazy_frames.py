"""Frames of the CLI's that are only relayed are not parsed: their type comes from the
line's head, and only when the head says it plainly; anything else is parsed in full."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor._framing import (
    Frame,
    FramingError,
    LineSplitter,
    LineStreamer,
    LongLineEnd,
    LongLinePart,
    LongLineStart,
    cheap_type,
    decode_line,
)


def lazy(line: bytes) -> Frame:
    frame = decode_line(line, lazy=True)
    assert isinstance(frame, Frame)
    return frame


def test_a_frame_written_as_the_cli_writes_it_is_typed_without_parsing() -> None:
    line = b'{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}'
    frame = lazy(line)
    assert frame.type == "assistant" and not frame.parsed
    assert frame.raw == line
    assert frame.data == json.loads(line) and frame.parsed  # parsed on first use, kept
    assert frame.data is frame.data
    assert frame == decode_line(line)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b'{"session_id":"s","type":"result"}', "result"),  # type not first
        (b'{"\\u0074ype":"result"}', "result"),  # the name spelled with an escape
        (b'{"type":"res\\u0075lt"}', "result"),  # the value spelled with an escape
        (b'{ "type" : "result" }', "result"),  # whitespace
        (b'  {"type":"result"}', "result"),
        (b'{"type":"x"  ,"y":1}', "x"),
        (b'{"type":"a b"}', "a b"),
        (b'{"type":""}', ""),
        (b'{"type":1}', None),
        (b'{"types":"x"}', None),
        (b'{"type":"' + b"a" * 65 + b'"}', "a" * 65),  # long: parsed in full
    ],
)
def test_a_head_that_does_not_say_its_type_plainly_is_parsed_in_full(
    line: bytes, kind: str | None
) -> None:
    assert cheap_type(line) is None
    frame = lazy(line)
    assert frame.parsed
    assert frame.type == kind
    assert frame.data == json.loads(line)


def test_a_repeated_type_is_the_one_thing_the_head_cannot_see() -> None:
    # JSON.stringify (the CLI) never repeats a name; a full parse keeps the last one.
    line = b'{"type":"system","type":"result"}'
    assert cheap_type(line) == "system"
    frame = lazy(line)
    assert frame.type == "system" and not frame.parsed
    assert frame.data == {"type": "result"} and frame.type == "result"  # once parsed


def test_lines_that_are_not_frames_are_still_errors() -> None:
    for line, code in [
        (b"this is not json {", "invalid_json"),
        (b'["type","x"]', "invalid_frame"),
        (b'"{\\"type\\":\\"x\\"}"', "invalid_frame"),
        (b"\xff{", "invalid_utf8"),
        (b'{"type":"x"', "invalid_json"),  # no `,` or `}` after the value: not cheap
    ]:
        error = decode_line(line, lazy=True)
        assert isinstance(error, FramingError) and error.code == code


def test_a_broken_body_behind_a_plain_head_keeps_its_type() -> None:
    # Relayed as it came (the parent sees what it would see without us); the
    # supervisor knows only the type its head says.
    frame = lazy(b'{"type":"assistant","message":{oops')
    assert frame.type == "assistant"
    assert frame.data == {"type": "assistant"}


def test_the_head_is_only_the_head() -> None:
    assert cheap_type(b'{"type":"stream_event","event":{}}') == "stream_event"
    assert cheap_type(b'{"type":"x"}') == "x"
    assert cheap_type(b'{"type":"x\\"y"}') is None
    assert cheap_type(b'{"type":"' + b"a" * 65 + b'"}') is None  # long: parsed in full
    assert cheap_type(b'x{"type":"x"}') is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(
    st.dictionaries(st.sampled_from(["type", "subtype", "session_id", "x"]), json_values),
    st.booleans(),
    st.booleans(),
)
def test_lazy_and_full_parsing_always_agree(
    data: dict[str, object], compact: bool, ascii_only: bool
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    line = json.dumps(data, separators=separators, ensure_ascii=ascii_only).encode()
    frame, full = decode_line(line, lazy=True), decode_line(line)
    assert isinstance(frame, Frame) and isinstance(full, Frame)
    assert frame.type == full.type  # before the parse...
    assert frame.data == full.data and frame.type == full.type  # ...and after
    assert frame.subtype == full.subtype


@given(st.lists(st.binary(max_size=40), max_size=10), st.integers(1, 60), st.data())
def test_streaming_does_not_depend_on_how_reads_are_cut(
    pieces: list[bytes], cap: int, data: st.DataObject
) -> None:
    stream = b"\n".join(pieces) + data.draw(st.sampled_from([b"", b"\n"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))

    def run(bounds: list[int]) -> list[object]:
        streamer = LineStreamer(cap)
        out: list[object] = []
        start = 0
        for cut in [*bounds, len(stream)]:
            out += streamer.feed(stream[start:cut])
            start = cut
        out += streamer.close()
        return out

    assert _lines(run(cuts)) == _lines(run([]))


def _lines(items: Sequence[object]) -> list[object]:
    """The pieces of an over-long line depend on the reads; the line they make does not."""
    out: list[object] = []
    long = b""
    for item in items:
        if isinstance(item, LongLineStart):
            long = item.head
        elif isinstance(item, LongLinePart):
            long += item.data
        elif isinstance(item, LongLineEnd):
            out.append(("long", long, item.size))
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 9, 16])
def test_a_blank_line_is_blank_whatever_its_length(cut: int) -> None:
    # (The streamer hands a long one on before anyone can know it is blank; the relay
    # then drops it as a line that is not a frame. The splitter drops it silently.)
    stream = b" \t " * 5 + b"\n" + b"   x" * 3 + b"\n" + b'{"a":1}\n'
    splitter = LineSplitter(8)
    items = [*splitter.feed(stream[:cut]), *splitter.feed(stream[cut:]), *splitter.close()]
    assert len(items) == 2
    assert isinstance(items[0], FramingError) and items[0].code == "line_too_long"
    assert items[1] == b'{"a":1}'


def test_a_preview_counts_characters_not_bytes() -> None:
    from supervisor._framing import PREVIEW_CHARS, decode_line

    error = decode_line(("é" * 500).encode())
    assert not isinstance(error, Frame)
    assert error.preview == "é" * PREVIEW_CHARS  # no character cut in half, none missing
