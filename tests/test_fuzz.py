"""Bad input from either side: the framing, the machine and the relay must never break.

Random bytes, invalid UTF-8, partial lines, lines over the cap, deeply nested JSON,
unknown types, wrong field types in supervisor frames: each gets a clear error (or is
relayed, when it is a well-formed frame of a type the supervisor does not know) and
nothing else changes.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from machine_harness import Harness, init, result, user
from wrapper_harness import Wrapper, is_result, is_system, supervisor_argv
from wrapper_harness import user as user_frame

from supervisor import _machine as m
from supervisor._framing import (
    Frame,
    FramingError,
    LineSplitter,
    LineStreamer,
    LongLinePart,
    LongLineStart,
    MemberScanner,
    decode_line,
    read_head,
)
from supervisor._inbound import user_event

# ------------------------------------------------------------------------ framing

lines = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
)


def split_all(data: bytes, cuts: list[int], cap: int) -> list[bytes | FramingError]:
    splitter = LineSplitter(cap)
    out: list[bytes | FramingError] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += splitter.feed(data[start:cut])
        start = cut
    out += splitter.feed(data[start:])
    out += splitter.close()
    return out


@given(
    st.lists(lines, max_size=8),
    st.lists(st.integers(0, 5000), max_size=10),
    st.integers(1, 400),
)
def test_line_splitting_does_not_depend_on_how_reads_are_cut(
    raw_lines: list[bytes], cuts: list[int], cap: int
) -> None:
    data = b"\n".join(raw_lines)
    assert split_all(data, cuts, cap) == split_all(data, [], cap)


@given(st.lists(lines, max_size=8), st.integers(1, 400))
def test_every_line_becomes_one_frame_or_one_error(raw_lines: list[bytes], cap: int) -> None:
    data = b"".join(line.replace(b"\n", b" ") + b"\n" for line in raw_lines)
    items = split_all(data, [], cap)
    expected = [line.replace(b"\n", b" ") for line in raw_lines]
    expected = [line for line in expected if line.strip()]  # blank lines carry nothing
    assert len(items) == len(expected)
    for item, line in zip(items, expected, strict=True):
        if len(line) > cap:
            assert isinstance(item, FramingError) and item.code == "line_too_long"
            continue
        assert item == line
        decoded = decode_line(line)
        if isinstance(decoded, Frame):
            assert decoded.raw == line and isinstance(decoded.data, dict)
        else:
            assert decoded.code in {"invalid_utf8", "invalid_json", "invalid_frame"}
            assert decoded.message


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_an_error_not_a_crash(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    line = (opening * 200_000 + "1" + closing * 200_000).encode()
    error = decode_line(line)
    assert isinstance(error, FramingError) and error.code == "invalid_json"
    assert len(error.preview) <= 200


def test_an_over_long_line_is_not_buffered() -> None:
    splitter = LineSplitter(1024)
    for _ in range(1000):
        assert list(splitter.feed(b"x" * 4096)) == []
        assert sum(map(len, splitter._lines._pieces)) <= 1024
    [error] = list(splitter.feed(b"\n{}\n"))[:1]
    assert isinstance(error, FramingError) and "4096000 bytes" in error.message


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(1, 64))
def test_the_streamer_gives_back_every_byte(chunks: list[bytes], cap: int) -> None:
    """Short lines whole, long ones in pieces: joined again, they are the input's lines."""
    streamer = LineStreamer(cap)
    lines: list[bytes] = []
    current: bytearray | None = None
    for item in [i for chunk in chunks for i in streamer.feed(chunk)] + list(streamer.close()):
        if isinstance(item, bytes):
            assert current is None and len(item) <= cap
            lines.append(item)
        elif isinstance(item, LongLineStart):
            assert current is None and len(item.head) == cap
            current = bytearray(item.head)
        elif isinstance(item, LongLinePart):
            assert current is not None
            current += item.data
        else:
            assert current is not None and item.size == len(current) > cap
            lines.append(bytes(current))
            current = None
    # A blank line is skipped when it is short; a long one is streamed before anyone can
    # know it is blank (the relay then drops it as a line that is not a frame).
    joined = b"".join(chunks).split(b"\n")
    assert lines == [line for line in joined if line.strip() or len(line) > cap]


def test_the_head_of_a_long_line_says_what_it_is() -> None:
    answer = "x" * 5000
    result = json.dumps({"type": "result", "subtype": "success", "result": answer}).encode()
    assert read_head(result[:1024]) == {"type": "result", "subtype": "success"}
    response = {"subtype": "success", "request_id": "r-1", "response": {"big": answer}}
    line = json.dumps({"type": "control_response", "response": response}).encode()
    head = read_head(line[:1024])
    assert head is not None and head["response"]["request_id"] == "r-1"
    assert read_head(b'{"a": ' * 100_000) is None  # deep, and no type: unreadable
    assert read_head(b"[" + b"1," * 1000) is None
    assert read_head(b'{"type": 3, "x": "' + b"y" * 2000) is None


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=300),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
            max_leaves=6,
        ),
        max_size=6,
    ),
    st.lists(st.integers(1, 400), min_size=1, max_size=50),
    st.booleans(),
)
def test_the_scanner_reads_the_short_top_level_members(
    obj: dict[str, Any], cuts: list[int], ascii_only: bool
) -> None:
    """What the supervisor learns of a line over the cap, cut anywhere, whatever it holds."""
    raw = json.dumps(obj, ensure_ascii=ascii_only).encode()
    scanner = MemberScanner()
    start = 0
    for cut in cuts * (len(raw) // sum(cuts) + 1):
        scanner.feed(raw[start : start + cut])
        start += cut
    for key, value in scanner.members.items():
        assert obj[key] == value
    for key, value in obj.items():
        if (
            len(json.dumps(key, ensure_ascii=ascii_only).encode()) < 200
            and len(json.dumps(value, ensure_ascii=ascii_only).encode()) < 200
        ):
            assert key in scanner.members


# ------------------------------------------------------------------------ machine

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
frame_types = st.sampled_from(
    [
        "user",
        "cancel_turn",
        "supersede_turn",
        "control_request",
        "control_response",
        "supervisor_x",
        "keep_alive",
        "result",
        "system",
        "assistant",
    ]
)
frames = st.builds(
    lambda kind, fields: Frame.from_data({"type": kind, **fields}),
    frame_types,
    st.dictionaries(
        st.sampled_from(
            ["request_id", "cancel_queued", "content", "request", "response", "subtype"]
        ),
        json_values,
        max_size=4,
    ),
)


#: Random frames, and turns the CLI can read (random ones almost never are).
frames_and_turns = st.one_of(frames, st.text(max_size=5).map(user))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["user", "cli"]), frames_and_turns), max_size=25))
def test_the_machine_takes_any_frame_from_either_side(
    sequence: list[tuple[str, Frame]],
) -> None:
    h = Harness()
    h.user(user("a real turn"))
    h.cli(init())
    for side, frame in sequence:
        event: m.Event = user_event(frame) if side == "user" else m.FromCli(frame)
        for action in h.feed(event, after=0.01):
            if isinstance(action, m.Deliver | m.WriteToCli):
                json.dumps(action.frame.data)  # whatever it writes is valid JSON
    # Wrong types in supervisor frames were reported, and the session still works.
    _play_until_idle(h)
    # Every turn sent (the first, each user frame, each supersede_turn, valid or not) has
    # exactly one result, numbered in the order sent; a stray result from the CLI,
    # outside any turn, is relayed as belonging to none.
    sent = 1 + sum(1 for side, f in sequence if side == "user" and f.type in TURN_TYPES)
    results = h.results_by_turn()
    assert {turn: len(r) for turn, r in results.items() if turn is not None} == {
        turn: 1 for turn in range(1, sent + 1)
    }


#: The user frames that are turns: each gets one result, even when its content is bad.
TURN_TYPES = ("user", "supersede_turn")


def _play_until_idle(h: Harness) -> None:
    """Plays the driver and a CLI that ends each turn it runs, until no turn is left."""
    for _ in range(500):
        if h.machine.finished:
            return
        last = list(h.last)
        if any(isinstance(a, m.KillTree) for a in last):
            h.feed(m.CliExited(-9), after=0.01)
        elif any(isinstance(a, m.Spawn) for a in last):
            h.feed(m.CliSpawned())
            h.answer_probe()
        elif any(isinstance(a, m.KillTurnProcesses) for a in last):
            h.feed(m.TurnProcessesKilled(0))
        elif h.machine.running_turn is not None:
            h.cli(result())
        elif h.machine.deadline is not None:
            h.expire()
        else:
            return
    raise AssertionError("the session never became idle")


@given(
    st.sampled_from(["cancel_turn", "supersede_turn"]),
    st.dictionaries(st.sampled_from(["request_id", "cancel_queued", "content"]), json_values),
)
def test_wrong_field_types_in_supervisor_frames_get_a_clear_error(
    kind: str, fields: dict[str, Any]
) -> None:
    h = Harness()
    h.user(user("running"))
    h.cli(init())
    actions = h.user(Frame.from_data({"type": kind, **fields}))
    errors = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_error"]
    valid = _valid(kind, fields)
    assert bool(errors) != valid
    if errors:
        code = "invalid_content" if kind == "supersede_turn" else "invalid_cancel_turn"
        assert errors[0]["error"]["code"] == code
        assert h.machine.running_turn == 1 and not h.machine.cancelling


def _valid(kind: str, fields: dict[str, Any]) -> bool:
    if kind == "supersede_turn":
        return _readable(fields.get("content"))
    request_id = fields.get("request_id")
    return (
        (request_id is None or isinstance(request_id, str | int))
        and not isinstance(request_id, bool)
        and isinstance(fields.get("cancel_queued", False), bool)
    )


#: What docs/protocol.md ("Content the CLI cannot read") promises, written out again.
_REQUIRED: dict[str, dict[str, type]] = {
    "text": {"text": str},
    "image": {"source": dict},
    "document": {"source": dict},
    "tool_result": {"tool_use_id": str},
    "tool_use": {"id": str, "name": str, "input": dict},
}


def _readable(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(block, dict)
        and isinstance(block.get("type"), str)
        and all(isinstance(block.get(k), t) for k, t in _REQUIRED.get(block["type"], {}).items())
        for block in content
    )


# --------------------------------------------------------------- over real pipes


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b), max_size=5))
async def test_the_relay_survives_random_input(
    fake_claude: Path, home: Path, garbage: list[bytes]
) -> None:
    w = await Wrapper.start(supervisor_argv(fake_claude, "--max-line-bytes", "1024"))
    try:
        # Blank lines carry nothing; a line that happens to be a frame is relayed.
        bad = [g for g in garbage if g.strip() and not isinstance(decode_line(g), Frame)]
        await w.send(*(line + b"\n" for line in bad), b"y" * 5000 + b"\n")
        for _ in range(len(bad) + 1):
            await w.expect(is_system("supervisor_error"))
        await w.send(user_frame("still fine"))
        assert (await w.expect(is_result))["result"] == "reply #1 to: still fine"
    finally:
        await w.close_stdin()
        await w.wait()


def _garbage_cli(directory: Path, output: bytes) -> Path:
    """A "CLI" that writes `output` to stdout, then behaves like the fake."""
    directory.mkdir(exist_ok=True)
    data = directory / "output"
    data.write_bytes(output)
    script = directory / "claude"
    script.write_text(
        f'#!/bin/sh\ncat "{data}"\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


not_a_frame = (
    st.binary(min_size=1, max_size=300)
    .map(lambda b: b.replace(b"\n", b" "))
    .filter(lambda b: bool(b.strip()) and not isinstance(decode_line(b), Frame))
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(not_a_frame)
async def test_random_output_from_the_cli_is_reported_not_fatal(
    tmp_path: Path, home: Path, output: bytes
) -> None:
    claude = _garbage_cli(tmp_path / f"cli-{abs(hash(output))}", output + b"\n")
    w = await Wrapper.start(supervisor_argv(claude))
    try:
        await w.send(user_frame("hello"))
        with trio.fail_after(20):
            result_frame = await w.expect(is_result)
        assert result_frame["result"] == "reply #1 to: hello"
        [error] = [f for f in w.frames if f.get("subtype") == "supervisor_error"]
        assert error["error"]["code"].startswith("cli_")
    finally:
        await w.close_stdin()
        await w.wait()
