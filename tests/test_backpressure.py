"""A parent that stops reading: the wrapper stops reading the CLI, whose own pipe then
fills (as it would without us), instead of buffering the flood in its memory. Nothing
is lost, the order is kept, and a cancel sent meanwhile still ends the turn, once. The
same for the library: a turn iterated slowly holds the CLI back, and so does a session
pool's turn, whose frames come through a session of the pool's."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio
from test_session import ARGS, IN_BAND
from wrapper_harness import (
    IN_BAND_FLAGS,
    STREAM_ARGS,
    Wrapper,
    is_result,
    is_system,
    user,
)

from supervisor import SessionPool, open_session
from supervisor._process import READ_BYTES
from supervisor._session import TURN_BUFFER_BYTES

#: What the flooding CLI writes: FRAMES lines of about 1 KB, far more than the bounded
#: buffer of the wrapper (RELAY_BUFFER_BYTES, 1 MiB) and the pipes' (64 KiB each).
FRAMES = 64 * 1024
PAD = "x" * 900

#: A CLI that floods numbered assistant frames for `flood N`, in a thread, while another
#: thread keeps reading its stdin (as the real CLI's event loop does): an interrupt stops
#: the flood, then the turn's result comes. It writes how far it got to PROGRESS.
FLOOD_CLI = """
import json, os, sys, threading

PROGRESS, PAD = sys.argv[1], sys.argv[2]
lock, stop = threading.Lock(), threading.Event()
written = 0

def write(frame):
    global written
    data = json.dumps(frame, separators=(",", ":")).encode() + b"\\n"
    with lock:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]
        written += len(data)

def frame(seq):
    return {"type": "assistant", "seq": seq, "session_id": "flood-1",
            "message": {"role": "assistant", "content": [{"type": "text", "text": PAD}]}}

def flood(count):
    write({"type": "system", "subtype": "init", "session_id": "flood-1", "tools": []})
    seq = 0
    while seq < count and not stop.is_set():
        write(frame(seq))
        seq += 1
        if seq % 64 == 0:
            with open(PROGRESS, "w") as f:
                f.write(str(written))
    write({"type": "result", "subtype": "success", "is_error": False, "frames": seq,
           "result": "done", "session_id": "flood-1"})

for line in sys.stdin:
    message = json.loads(line)
    if message.get("type") == "user":
        count = int(message["message"]["content"].split()[1])
        stop.clear()
        threading.Thread(target=flood, args=(count,), daemon=True).start()
    elif message.get("type") == "control_request":
        if message["request"].get("subtype") == "interrupt":
            stop.set()
        write({"type": "control_response", "response": {"subtype": "success",
               "request_id": message["request_id"], "response": {}}})
os._exit(0)
"""


def flood_cli(tmp_path: Path) -> tuple[Path, Path]:
    """The flooding CLI as an executable, and the file where it says how far it got."""
    script = tmp_path / "flood_cli.py"
    script.write_text(FLOOD_CLI)
    progress = tmp_path / "progress"
    claude = tmp_path / "claude"
    claude.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "{progress}" {PAD} "$@"\n')
    claude.chmod(0o755)
    return claude, progress


@pytest.fixture
async def flooding(tmp_path: Path, home: Path) -> AsyncIterator[tuple[Wrapper, Path]]:
    claude, progress = flood_cli(tmp_path)
    argv = ["--claude", str(claude), *IN_BAND_FLAGS, "--", *STREAM_ARGS]
    w = await Wrapper.start(argv)
    try:
        yield w, progress
    finally:
        if w.process.returncode is None:
            await w.close_stdin()
            with trio.move_on_after(15):
                await w.read_to_end()
        await w.kill()


#: What the supervisor may hold of a turn nobody takes from: the turn's buffer, the read
#: that went over it, the pipe's 64 KiB (and the CLI's progress steps of 64 frames).
HELD_BOUND = TURN_BUFFER_BYTES + READ_BYTES + 1024 * 1024


async def written_so_far(progress: Path) -> int:
    path = trio.Path(progress)
    return int(await path.read_text() or 0) if await path.exists() else 0


async def written_when_blocked(progress: Path) -> int:
    """How much the CLI had written once it stopped making progress (its pipe full)."""
    seen, still = -1, 0
    with trio.fail_after(60):
        while still < 10:  # a second without a byte more
            await trio.sleep(0.1)
            now = await written_so_far(progress)
            still = still + 1 if now == seen and now > 0 else 0
            seen = now
    return seen


@pytest.mark.parametrize("cancel", ["cancel_turn", "sigint"])
async def test_a_stalled_reader_holds_the_cli_back_and_loses_nothing(
    flooding: tuple[Wrapper, Path], cancel: str
) -> None:
    wrapper, progress = flooding
    await wrapper.send(user("flood 100"))  # up and running: its memory at rest
    assert (await wrapper.expect(is_result, timeout=60))["frames"] == 100
    wrapper.frames.clear()
    wrapper.raw_lines.clear()
    rss = psutil.Process(wrapper.process.pid).memory_info().rss
    await wrapper.send(user(f"flood {FRAMES}"))  # and read nothing, for now

    written = await written_when_blocked(progress)
    flood_bytes = FRAMES * 1000
    assert written < flood_bytes // 4, "the CLI was never held back: the wrapper buffered"
    grown = psutil.Process(wrapper.process.pid).memory_info().rss - rss
    assert grown < 24 * 1024 * 1024, f"the wrapper grew by {grown} bytes"

    # A cancel while nobody reads: it is acted on (the interrupt reaches the CLI, which
    # stops flooding), and its result comes once reading resumes.
    if cancel == "sigint":
        wrapper.signal(signal.SIGINT)
    else:
        await wrapper.send({"type": "cancel_turn", "request_id": "c1"})
    notice = await wrapper.expect(is_system("supervisor_cancel"), timeout=60)
    assert notice["report"]["path"] == "interrupt"

    results = [f for f in wrapper.frames if is_result(f)]
    assert len(results) == 1
    seqs = [f["seq"] for f in wrapper.frames if f.get("type") == "assistant"]
    assert seqs == list(range(results[0]["frames"])), "frames lost or out of order"
    assert 0 < len(seqs) < FRAMES  # the flood was stopped by the cancel
    lines = [line for line in wrapper.raw_lines if b'"assistant"' in line]
    assert all(  # the exact bytes the CLI wrote
        line == json.dumps(frame(seq), separators=(",", ":")).encode()
        for seq, line in zip(seqs, lines, strict=True)
    )

    await wrapper.send(user("flood 10"))  # the session goes on
    assert (await wrapper.expect(is_result, timeout=60))["frames"] == 10


def frame(seq: int) -> dict[str, object]:
    return {
        "type": "assistant",
        "seq": seq,
        "session_id": "flood-1",
        "message": {"role": "assistant", "content": [{"type": "text", "text": PAD}]},
    }


async def test_a_library_turn_iterated_slowly_holds_the_cli_back_and_loses_nothing(
    tmp_path: Path, home: Path
) -> None:
    claude, progress = flood_cli(tmp_path)
    async with open_session(ARGS, claude=claude, policy=IN_BAND) as session:
        # Awaiting only the result lets go: a flood far over the buffer still ends.
        turn = await session.send(f"flood {FRAMES // 16}")
        assert (await turn.result())["frames"] == FRAMES // 16

        turn = await session.send(f"flood {FRAMES}")
        frames = aiter(turn)
        first = await anext(frames)  # iterating, then taking nothing for a while
        seqs = [first["seq"]] if first.get("type") == "assistant" else []
        written = await written_when_blocked(progress)
        assert written < FRAMES * 1000 // 4, "the CLI was never held back: the turn buffered"
        async for frame in frames:
            if frame.get("type") == "assistant":
                seqs.append(frame["seq"])
        assert seqs == list(range(FRAMES)), "frames lost or out of order"
        assert (await turn.result())["frames"] == FRAMES


async def test_a_cancel_ends_a_turn_whose_iteration_stalled_in_band(
    tmp_path: Path, home: Path
) -> None:
    claude, progress = flood_cli(tmp_path)
    async with open_session(ARGS, claude=claude, policy=IN_BAND) as session:
        turn = await session.send(f"flood {FRAMES}")
        frames = aiter(turn)
        first = await anext(frames)
        await written_when_blocked(progress)
        report = await session.cancel()  # the CLI is heard again while it ends the turn
        assert report is not None and report.path == "interrupt"
        result = await turn.result()
        seqs = [first["seq"]] if first.get("type") == "assistant" else []
        seqs += [f["seq"] async for f in frames if f.get("type") == "assistant"]
        assert seqs == list(range(result["frames"])), "frames lost or out of order"
        assert 0 < result["frames"] < FRAMES  # the flood was stopped by the cancel


async def test_a_pool_turn_iterated_slowly_holds_the_cli_back_and_loses_nothing(
    tmp_path: Path, home: Path
) -> None:
    claude, progress = flood_cli(tmp_path)
    async with SessionPool(ARGS, claude=claude, policy=IN_BAND) as pool:
        # Awaiting only the result lets go: a flood far over the buffer still ends.
        turn = await pool.send("chat", f"flood {FRAMES // 16}")
        assert (await turn.result())["frames"] == FRAMES // 16
        before = await written_so_far(progress)

        turn = await pool.send("chat", f"flood {FRAMES}")
        frames = aiter(turn)
        first = await anext(frames)  # iterating, then taking nothing for a while
        seqs = [first["seq"]] if first.get("type") == "assistant" else []
        held = await written_when_blocked(progress) - before
        assert held < HELD_BOUND, f"the pool held {held} bytes of a turn nobody read"
        async for frame in frames:
            if frame.get("type") == "assistant":
                seqs.append(frame["seq"])
        assert seqs == list(range(FRAMES)), "frames lost or out of order"
        assert (await turn.result())["frames"] == FRAMES


@pytest.mark.parametrize("how", ["cancel", "supersede"])
async def test_a_cancel_ends_a_pool_turn_whose_iteration_stalled(
    tmp_path: Path, home: Path, how: str
) -> None:
    claude, progress = flood_cli(tmp_path)
    async with SessionPool(ARGS, claude=claude, policy=IN_BAND) as pool:
        turn = await pool.send("chat", f"flood {FRAMES}")
        frames = aiter(turn)
        first = await anext(frames)
        await written_when_blocked(progress)
        # The CLI is heard again while the turn ends, and the chat goes on to its next
        # turn although the stalled caller still takes nothing.
        if how == "cancel":
            report = await pool.cancel("chat")
            assert report is not None and report.path == "interrupt"
            after = await pool.send("chat", "flood 10")
        else:
            after = await pool.supersede("chat", "flood 10")
        with trio.fail_after(60):
            assert (await after.result())["frames"] == 10
        assert turn.done
        result = await turn.result()
        seqs = [first["seq"]] if first.get("type") == "assistant" else []
        seqs += [f["seq"] async for f in frames if f.get("type") == "assistant"]
        assert seqs == list(range(result["frames"])), "frames lost or out of order"
        assert 0 < result["frames"] < FRAMES  # the flood was stopped by the cancel
        assert pool.stats.cancels_by_path == {"interrupt": 1}


async def test_closing_the_pool_lets_go_of_a_stalled_pool_turn(tmp_path: Path, home: Path) -> None:
    claude, progress = flood_cli(tmp_path)
    with trio.fail_after(60):
        async with SessionPool(ARGS, claude=claude, policy=IN_BAND) as pool:
            turn = await pool.send("chat", f"flood {FRAMES}")
            frames = aiter(turn)
            first = await anext(frames)
            await written_when_blocked(progress)
        # Closed although nobody read: the turn has its result, after every frame read.
    result = await turn.result()
    assert result["is_error"]
    seqs = [first["seq"]] if first.get("type") == "assistant" else []
    seqs += [f["seq"] async for f in frames if f.get("type") == "assistant"]
    assert seqs == list(range(len(seqs))), "frames lost or out of order"
    assert 0 < len(seqs) < FRAMES
