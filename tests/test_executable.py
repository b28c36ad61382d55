"""The drop-in executable, driven over pipes with the fake CLI behind it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio
from conftest import processes_with_token
from wrapper_harness import (
    IN_BAND_FLAGS,
    STREAM_ARGS,
    Wrapper,
    environ,
    is_result,
    is_system,
    is_tool_use,
    supervisor_argv,
    user,
)


@pytest.fixture
async def wrapper(
    fake_claude: Path, home: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Wrapper]:
    w = await Wrapper.start(supervisor_argv(fake_claude, *getattr(request, "param", ())))
    try:
        yield w
    finally:
        if w.process.returncode is None:
            await w.close_stdin()
            with trio.move_on_after(15):
                await w.process.wait()
        await w.kill()


async def test_frames_are_relayed_unchanged(wrapper: Wrapper) -> None:
    await wrapper.send(user("hello"))
    result = await wrapper.expect(is_result)
    assert result["result"] == "reply #1 to: hello"
    assert result["fake_history"] == ["hello"]  # a field the supervisor knows nothing of
    init = wrapper.frames[0]
    assert init["type"] == "system" and init["subtype"] == "init"
    # The fake writes json.dumps' default form (", " and ": "), not the supervisor's
    # compact one: equal bytes mean the line was relayed, not re-encoded.
    assert wrapper.raw_lines[-1] == json.dumps(result, ensure_ascii=False).encode()


#: What a scripted CLI writes for each turn: odd spacing, "type" not first, escapes that
#: decode to the same text as other bytes would (\u00e9, \/, a surrogate pair), a number
#: json would write otherwise (1.5e3), a frame of a type nobody knows, raw UTF-8.
ODD_LINES = [
    b'{ "subtype" : "init",  "type":"system","session_id":"odd-1" ,"tools":[ ] }',
    b'{"type":"assistant","message":{"role":"assistant","content":[{"type":"text",'
    b'"text":"caf\\u00e9 \\/ \\ud83d\\ude00 \xc3\xa9t\xc3\xa9"}]},"session_id":"odd-1"}',
    b'{"type":"future_frame_kind","n":1.50,"x":[1,2 , 3]}\t',
    b'{"result":"r\\u00e9ponse","is_error":false,"duration_ms":1.5e3,"type":"result",'
    b'"subtype":"success","session_id":"odd-1"}',
]


def replaying_cli(tmp_path: Path, lines: list[bytes]) -> Path:
    """A stand-in CLI that answers each user frame with `lines`, in one write."""
    data = tmp_path / "lines"
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    script = tmp_path / "claude"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"data = open({str(data)!r}, 'rb').read()\n"
        "for line in sys.stdin.buffer:\n"
        "    if json.loads(line).get('type') == 'user':\n"
        "        rest = data\n"
        "        while rest:\n"
        "            rest = rest[os.write(1, rest):]\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_the_clis_exact_bytes_reach_the_parent(tmp_path: Path, home: Path) -> None:
    w = await Wrapper.start(supervisor_argv(replaying_cli(tmp_path, ODD_LINES)))
    try:
        await w.send(user("one"))
        await w.expect(is_result)
        await w.send(user("two"))
        await w.expect(is_result)
        await w.close_stdin()
        await w.read_to_end()
        assert w.raw_lines == ODD_LINES * 2
        assert await w.wait() == 0
    finally:
        await w.kill()


#: One write of the CLI's: a flood of plain frames (one run for the relay), with blank
#: lines, a line that is not a frame and one whose head does not say its type between.
_TEXT = [
    b'{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"%d"}]}}'
    % n
    for n in range(300)
]
MIXED_WRITE = [
    b'{"type":"system","subtype":"init","session_id":"mix-1","tools":[]}',
    *_TEXT[:100],
    b"",
    b"  \r",
    *_TEXT[100:150],
    b"not a frame",
    *_TEXT[150:200],
    ODD_LINES[2],
    *_TEXT[200:],
    b'{"type":"result","subtype":"success","is_error":false,"result":"r","session_id":"mix-1"}',
]


async def test_a_read_of_many_frames_reaches_the_parent_byte_exact_and_in_order(
    tmp_path: Path, home: Path
) -> None:
    w = await Wrapper.start(supervisor_argv(replaying_cli(tmp_path, MIXED_WRITE)))
    try:
        await w.send(user("one"))
        await w.expect(is_result)
        await w.close_stdin()
        await w.read_to_end()
        # Blank lines carry nothing; the line that is not a frame is said in its place.
        errors = [i for i, f in enumerate(w.frames) if f.get("subtype") == "supervisor_error"]
        assert errors == [MIXED_WRITE.index(b"not a frame") - 2]
        assert w.frames[errors[0]]["error"]["code"] == "cli_invalid_json"
        frames = [line for line in MIXED_WRITE if line.strip() and line != b"not a frame"]
        assert [raw for i, raw in enumerate(w.raw_lines) if i not in errors] == frames
        assert await w.wait() == 0
    finally:
        await w.kill()


async def test_each_user_frame_gets_one_result_even_when_sent_mid_turn(wrapper: Wrapper) -> None:
    await wrapper.send(user("[[fake: tool=1]]"), user("a"), user("b"))
    results = await wrapper.results(3)
    assert [r["fake_history"][-1] for r in results] == ["[[fake: tool=1]]", "a", "b"]


@pytest.mark.parametrize("wrapper", [IN_BAND_FLAGS], ids=["in_band"], indirect=True)
async def test_cancel_turn_in_band(wrapper: Wrapper) -> None:
    await wrapper.send(user("[[fake: tool=60]]"))
    await wrapper.expect(is_tool_use)
    await wrapper.send({"type": "cancel_turn", "request_id": "c1"})
    result = await wrapper.expect(is_result)
    assert result["terminal_reason"] == "aborted_tools"
    notice = await wrapper.expect(is_system("supervisor_cancel"))
    assert notice["request_ids"] == ["c1"]
    report = notice["report"]
    assert report["path"] == "interrupt" and report["respawned"] is False
    assert report["trigger"] == notice["trigger"] == "request"
    assert set(report) == {
        "path",
        "trigger",
        "total_ms",
        "steps",
        "respawned",
        "session_id",
        "processes_killed",
    }
    assert notice["session_id"] == result["session_id"]


async def test_cancel_turn_escalates_and_synthesizes_the_result(wrapper: Wrapper) -> None:
    await wrapper.send(user("first"))
    first = await wrapper.expect(is_result)
    await wrapper.send(user("[[fake: tool=60, wedge]]"))
    await wrapper.expect(is_tool_use)
    await wrapper.send({"type": "cancel_turn"})
    result = await wrapper.expect(is_result)
    assert result["subtype"] == "error_during_execution"
    assert result["is_error"] is True
    assert result["terminal_reason"] == "cancelled"
    assert result["session_id"] == first["session_id"]
    notice = await wrapper.expect(is_system("supervisor_cancel"))
    assert notice["report"]["path"] == "kill" and notice["report"]["respawned"] is True
    await wrapper.send(user("after"))
    after = await wrapper.expect(is_result)
    assert after["fake_history"] == ["first", "[[fake: tool=60, wedge]]", "after"] or after[
        "fake_history"
    ] == ["first", "after"]
    assert after["session_id"] == first["session_id"]


async def test_frames_sent_during_a_cancel_are_held_and_delivered_in_order(
    wrapper: Wrapper,
) -> None:
    await wrapper.send(user("[[fake: tool=60, ignore_interrupt]]"))
    await wrapper.expect(is_tool_use)
    await wrapper.send({"type": "cancel_turn"}, user("x"), user("y"))
    kinds: list[str] = []
    while len([k for k in kinds if k == "result"]) < 3:
        frame = await wrapper.expect(lambda f: is_result(f) or is_system("supervisor_cancel")(f))
        kinds.append(frame["type"])
    results = [f for f in wrapper.frames if is_result(f)]
    assert [r.get("fake_history", ["?"])[-1] for r in results[1:]] == ["x", "y"]


async def test_supersede_turn(wrapper: Wrapper) -> None:
    await wrapper.send(user("[[fake: tool=60]]"))
    await wrapper.expect(is_tool_use)
    await wrapper.send(user("queued"), {"type": "supersede_turn", "content": "instead"})
    cancelled, first, second = await wrapper.results(3)
    assert cancelled["is_error"] is True
    assert first["fake_history"][-1] == "instead"
    assert second["fake_history"][-1] == "queued"


async def test_cancel_queued(wrapper: Wrapper) -> None:
    await wrapper.send(user("[[fake: tool=60]]"), user("waiting"))
    await wrapper.expect(is_tool_use)
    await wrapper.send({"type": "cancel_turn", "cancel_queued": True})
    results = await wrapper.results(2)
    assert {r["terminal_reason"] for r in results} <= {"aborted_tools", "cancelled"}
    assert any(r.get("supervisor") == {"synthesized": True} for r in results)


async def test_sdk_interrupt_is_answered_even_when_the_cli_is_wedged(wrapper: Wrapper) -> None:
    await wrapper.send(user("[[fake: tool=60, wedge]]"))
    await wrapper.expect(is_tool_use)
    await wrapper.send(
        {"type": "control_request", "request_id": "sdk-1", "request": {"subtype": "interrupt"}}
    )
    result = await wrapper.expect(is_result)
    assert result["is_error"] is True
    answer = await wrapper.expect(lambda f: f.get("type") == "control_response")
    assert answer["response"]["request_id"] == "sdk-1"
    assert answer["response"]["subtype"] == "success"


async def test_sigint_cancels_the_turn_and_the_wrapper_keeps_running(wrapper: Wrapper) -> None:
    await wrapper.send(user("idle first"))
    await wrapper.expect(is_result)
    wrapper.signal(signal.SIGINT)  # idle: nothing happens
    await wrapper.send(user("[[fake: tool=60]]"))
    await wrapper.expect(is_tool_use)
    wrapper.signal(signal.SIGINT)
    assert (await wrapper.expect(is_result))["is_error"] is True
    await wrapper.expect(is_system("supervisor_cancel"))
    await wrapper.send(user("still here"))
    assert (await wrapper.expect(is_result))["fake_history"][-1] == "still here"
    assert wrapper.process.returncode is None


async def test_bad_input_gets_errors_and_changes_nothing(wrapper: Wrapper) -> None:
    await wrapper.send(b"not json\n", b"\xff\xfe\n", b"[1, 2]\n")
    await wrapper.send({"type": "supervisor_pause"}, {"type": "supersede_turn", "content": 7})
    codes = [
        (await wrapper.expect(is_system("supervisor_error")))["error"]["code"] for _ in range(5)
    ]
    assert codes == [
        "invalid_json",
        "invalid_utf8",
        "invalid_frame",
        "unknown_supervisor_frame",
        "invalid_content",
    ]
    # The bad supersede_turn was a turn: it gets its result, then the next turn runs.
    assert (await wrapper.expect(is_result))["terminal_reason"] == "invalid_content"
    await wrapper.send(user("fine"))
    assert (await wrapper.expect(is_result))["fake_history"] == ["fine"]


async def test_malformed_content_gets_one_error_and_one_result_and_the_queue_goes_on(
    wrapper: Wrapper,
) -> None:
    bad = [
        user(123),  # type: ignore[arg-type]
        {"type": "supersede_turn", "content": [1, 2, 3]},
        {"type": "supersede_turn", "content": [{"type": "text"}]},
        {"type": "supersede_turn", "content": ["s"]},
        {"type": "supersede_turn", "content": [None]},
    ]
    await wrapper.send(*bad, user("good"))
    results = await wrapper.results(len(bad) + 1)
    assert [r["terminal_reason"] for r in results] == ["invalid_content"] * len(bad) + ["completed"]
    assert results[-1]["fake_history"] == ["good"]  # nothing bad reached the CLI
    errors = [f for f in wrapper.frames if is_system("supervisor_error")(f)]
    assert [e["error"]["code"] for e in errors] == ["invalid_content"] * len(bad)
    assert all("content" in e["error"]["message"] for e in errors)


async def test_a_turn_the_cli_never_starts_is_cancelled_after_start_timeout(
    fake_claude: Path, home: Path
) -> None:
    w = await Wrapper.start(supervisor_argv(fake_claude, "--start-timeout", "3"))
    try:
        await w.send(user("[[fake: silent]]"), user("behind"))
        error = await w.expect(is_system("supervisor_error"))
        assert error["error"]["code"] == "turn_not_started"
        first, second = await w.results(2)
        assert first["terminal_reason"] == "turn_not_started" and first["is_error"] is True
        assert second["fake_history"] == ["behind"]
        await w.close_stdin()
        assert await w.wait() == 0
    finally:
        await w.kill()


async def test_stdin_eof_finishes_the_turn_then_exits_with_the_clis_code(
    wrapper: Wrapper, process_audit: str
) -> None:
    await wrapper.send(user("[[fake: tool=1, escapee]]"), user("second"))
    await wrapper.close_stdin()
    frames = await wrapper.read_to_end()
    assert [f["fake_history"][-1] for f in frames if is_result(f)] == [
        "[[fake: tool=1, escapee]]",
        "second",
    ]
    assert await wrapper.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_sigterm_and_sighup_stop_everything(wrapper: Wrapper, signum: signal.Signals) -> None:
    await wrapper.send(user("[[fake: tool=60, escapee, stubborn]]"))
    await wrapper.expect(is_tool_use)
    wrapper.signal(signum)
    assert await wrapper.wait() == 128 + signum
    # The audit fixture fails the test if any process of the tree is left.


async def test_a_sigkilled_wrapper_takes_the_cli_and_tools_with_it(
    wrapper: Wrapper, process_audit: str
) -> None:
    await wrapper.send(user("[[fake: tool=60, escapee, stubborn]]"))
    await wrapper.expect(is_tool_use)
    before = processes_with_token(process_audit)
    assert len(before) >= 4  # helper, CLI, tool, escapee...
    wrapper.process.kill()
    await wrapper.wait()
    _gone, alive = psutil.wait_procs(before, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


async def test_report_file(fake_claude: Path, home: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports.jsonl"
    w = await Wrapper.start(
        supervisor_argv(fake_claude), env=environ(CLAUDE_SUPERVISOR_REPORT_FILE=str(reports))
    )
    try:
        await w.send(user("[[fake: tool=60]]"))
        await w.expect(is_tool_use)
        await w.send({"type": "cancel_turn"})
        notice = await w.expect(is_system("supervisor_cancel"))
        [line] = reports.read_text().splitlines()
        recorded = json.loads(line)
        assert recorded["path"] == notice["report"]["path"]
        assert "time" in recorded
    finally:
        await w.close_stdin()
        await w.wait()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--interrupt-timeout", "soon", "--"], {}, "--interrupt-timeout: must be a number"),
        (["--kill-timeout", "-1", "--"], {}, "--kill-timeout: must be a positive"),
        (["--bogus", "--"], {}, "unrecognized arguments: --bogus"),
        (["--"], {"CLAUDE_SUPERVISOR_SIGINT_TIMEOUT": "0"}, "CLAUDE_SUPERVISOR_SIGINT_TIMEOUT"),
        (["--stall-timeout", "0", "--"], {}, "--stall-timeout: must be a positive"),
        (["--"], {"CLAUDE_SUPERVISOR_TURN_TIMEOUT": "-3"}, "CLAUDE_SUPERVISOR_TURN_TIMEOUT"),
    ],
)
async def test_bad_options_exit_2_with_a_clear_message(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", *argv, *STREAM_ARGS],
        env=environ(**env),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()


async def test_flags_win_over_the_environment(fake_claude: Path, home: Path) -> None:
    # Neither FAST_FLAGS' 0.5 s, nor the default 1.5 s, nor the environment's 30 s fits.
    flags = ["--interrupt-timeout", "3", "--interrupt-ack-timeout", "30"]
    w = await Wrapper.start(
        supervisor_argv(fake_claude, *flags),
        env=environ(CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT="30"),
    )
    try:
        await w.send(user("[[fake: tool=60, ignore_interrupt]]"))
        await w.expect(is_tool_use)
        await w.send({"type": "cancel_turn"})
        report = (await w.expect(is_system("supervisor_cancel")))["report"]
        sigint = next(s["ms"] for s in report["steps"] if s["name"] == "sigint_sent")
        assert 3000 <= sigint < 30_000
    finally:
        await w.close_stdin()
        await w.wait()


def _link(directory: Path, name: str, target: str | Path) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).symlink_to(target)


async def test_masquerading_as_claude_on_path(
    fake_claude: Path, home: Path, tmp_path: Path
) -> None:
    """A bridge that spawns `claude` gets the wrapper, which finds the real one further on."""
    entry = Path(sys.executable).parent / "claude-supervisor"
    wrapper_dir = tmp_path / "wrapper-bin"
    _link(wrapper_dir, "claude", entry)
    path = f"{wrapper_dir}{os.pathsep}{fake_claude.parent}{os.pathsep}{os.environ['PATH']}"
    w = await Wrapper.start(
        STREAM_ARGS,
        env=environ(
            PATH=path,
            CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT="3",
            CLAUDE_SUPERVISOR_INTERRUPT_ACK_TIMEOUT="30",
        ),
        executable=[str(wrapper_dir / "claude")],
    )
    try:
        await w.send(user("[[fake: tool=60, ignore_interrupt]]"))
        await w.expect(is_tool_use)
        await w.send({"type": "cancel_turn"})
        report = (await w.expect(is_system("supervisor_cancel")))["report"]
        assert report["path"] == "sigint"
        sigint = next(s["ms"] for s in report["steps"] if s["name"] == "sigint_sent")
        assert sigint >= 3000  # the environment's 3 s, not the default 1.5 s
    finally:
        await w.close_stdin()
        await w.wait()


async def test_wrapper_refuses_to_run_itself_as_the_cli(tmp_path: Path) -> None:
    entry = Path(sys.executable).parent / "claude-supervisor"
    result = await trio.run_process(
        [str(entry), "--claude", str(entry), "--", *STREAM_ARGS],
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert b"started as the CLI by claude-supervisor itself" in result.stdout + result.stderr


async def test_passthrough_mode_propagates_the_exit_code_and_kills_leftovers(
    tmp_path: Path, process_audit: str
) -> None:
    script = tmp_path / "claude"
    script.write_text(
        "#!/bin/sh\n"
        f"setsid {sys.executable} -c 'import time; time.sleep(60)' </dev/null >/dev/null 2>&1 &\n"
        'echo "args: $*"\n'
        "exit 7\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", "--claude", str(script), "--", "-p", "hi"],
        stdin=b"",
        capture_stdout=True,
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout == b"args: -p hi\n"
    assert processes_with_token(process_audit) == []


async def test_missing_cli_is_a_clear_error(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", "--", *STREAM_ARGS],
        env=environ(PATH=str(tmp_path)),
        stdin=b"",
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 127
    assert b"cannot find the Claude Code CLI" in result.stderr


async def test_help_lists_every_option_with_its_variable() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", "--help"], capture_stdout=True
    )
    text = result.stdout.decode()
    for variable in ("CLAUDE_SUPERVISOR_CLAUDE", "CLAUDE_SUPERVISOR_KILL_TIMEOUT"):
        assert variable in text


async def test_demo_shows_every_rung(home: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", "demo"], capture_stdout=True, check=False
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out
    for rung in ("ended by: interrupt", "ended by: sigint", "ended by: kill"):
        assert rung in out


async def test_passthrough_forwards_signals_to_the_cli(tmp_path: Path) -> None:
    script = tmp_path / "claude"
    script.write_text(
        "#!/bin/sh\ntrap 'echo got TERM; exit 5' TERM\necho ready\nwhile :; do sleep 0.05; done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    w = await Wrapper.start(["--claude", str(script), "--", "-p", "hi"])
    assert w.process.stdout is not None
    with trio.fail_after(20):
        seen = b""
        while b"ready\n" not in seen:
            seen += await w.process.stdout.receive_some()
        w.signal(signal.SIGTERM)
        while b"got TERM" not in seen:
            seen += await w.process.stdout.receive_some()
    assert await w.wait() == 5  # the CLI's own exit code, propagated


async def test_an_unwritable_report_file_is_an_error_not_a_failure(
    fake_claude: Path, home: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "reports.jsonl"
    w = await Wrapper.start(supervisor_argv(fake_claude, "--report-file", str(missing)))
    try:
        await w.send(user("[[fake: tool=60]]"))
        await w.expect(is_tool_use)
        await w.send({"type": "cancel_turn"})
        error = await w.expect(is_system("supervisor_error"))
        assert error["error"]["code"] == "report_file_failed"
        assert str(missing) in error["error"]["message"]
        await w.expect(is_system("supervisor_cancel"))
        await w.send(user("goes on"))
        assert (await w.expect(is_result))["fake_history"][-1] == "goes on"
    finally:
        await w.close_stdin()
        await w.wait()


# ---------------------------------------------------------------- stopping promptly


def alive_with_token(token: str) -> list[psutil.Process]:
    return [p for p in processes_with_token(token) if p.status() != psutil.STATUS_ZOMBIE]


async def test_sigterm_after_stdin_eof_kills_the_tree_without_a_graceful_wait(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """An SDK's close: stdin EOF, then (after its own wait) SIGTERM, which means "now".

    With a long `exit_timeout`, only a stop that skips the graceful wait ends in time.
    """
    argv = supervisor_argv(fake_claude, "--exit-timeout", "60")
    w = await Wrapper.start(argv)
    try:
        await w.send(user("[[fake: tool=60, escapee, stubborn]]"))
        await w.expect(is_tool_use)
        await w.close_stdin()
        w.signal(signal.SIGTERM)
        started = trio.current_time()
        frames = await w.read_to_end(timeout=30)
        assert await w.wait() == 128 + signal.SIGTERM
        assert trio.current_time() - started < 0.5 + 5  # kill_timeout + a generous margin
        assert alive_with_token(process_audit) == []  # the whole tree went before the exit
        [result] = [f for f in frames if is_result(f)]
        assert result["is_error"] is True and result["terminal_reason"] == "cancelled"
    finally:
        await w.kill()


async def read_until(w: Wrapper, marker: bytes, timeout: float = 20) -> None:
    """Reads raw output until `marker` shows, then the caller stops reading."""
    assert w.process.stdout is not None
    seen = b""
    with trio.fail_after(timeout):
        while marker not in seen:
            chunk = await w.process.stdout.receive_some()
            assert chunk, "the wrapper's output ended early"
            seen = seen[-len(marker) :] + chunk


async def test_sigterm_stops_a_wrapper_whose_reader_stopped(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    w = await Wrapper.start(supervisor_argv(fake_claude))
    try:
        # An 8 MB assistant line: the wrapper blocks writing it once we stop reading.
        await w.send(user("[[fake: tool=60, stubborn, huge=8000000]]"))
        await read_until(w, b'"assistant"')
        w.signal(signal.SIGTERM)
        assert await w.wait(timeout=20) == 128 + signal.SIGTERM
        assert alive_with_token(process_audit) == []
    finally:
        await w.kill()


async def test_the_parents_death_stops_a_wrapper_whose_reader_stopped(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """The parent dies while the wrapper's stdout, still open elsewhere, is not read."""
    out_read, out_write = os.pipe()
    starter = (
        "import subprocess, sys, time\n"
        "fd = int(sys.argv[1])\n"
        "w = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=fd, pass_fds=(fd,))\n"
        "w.stdin.write(sys.stdin.buffer.readline()); w.stdin.flush()\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    argv = [sys.executable, "-c", starter, str(out_write), sys.executable, "-m", "supervisor"]
    argv += supervisor_argv(fake_claude)
    frame = json.dumps(user("[[fake: tool=60, stubborn, huge=8000000]]")).encode() + b"\n"
    parent = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(out_write,)
    )
    os.close(out_write)
    try:
        assert parent.stdin is not None and parent.stdout is not None
        await parent.stdin.send_all(frame)
        wrapper = psutil.Process(int((await parent.stdout.receive_some()).split()[0]))
        async with trio.lowlevel.FdStream(out_read) as output:
            seen = b""
            with trio.fail_after(20):
                while b'"assistant"' not in seen:
                    seen = seen[-64:] + await output.receive_some()
            parent.kill()
            await parent.wait()
            with trio.fail_after(20):
                while wrapper.is_running() and wrapper.status() != psutil.STATUS_ZOMBIE:
                    await trio.sleep(0.05)
        assert alive_with_token(process_audit) == []
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_reader_that_pauses_loses_nothing(fake_claude: Path, home: Path) -> None:
    w = await Wrapper.start(supervisor_argv(fake_claude))
    try:
        sizes = [3_000_000, 2_000_000, 1_000_000]
        await w.send(*[user(f"[[fake: huge={size}]]") for size in sizes])
        await w.expect(is_system("init"))
        await trio.sleep(3)  # the reader stalls while the CLI floods: that is the test
        await w.close_stdin()
        frames = await w.read_to_end(timeout=60)
        texts = [f["message"]["content"][0]["text"] for f in frames if f.get("type") == "assistant"]
        assert [len(t) for t in texts] == sizes
        assert len([f for f in frames if is_result(f)]) == 3
        assert await w.wait() == 0
    finally:
        await w.kill()


# ---------------------------------------------------------------- lines over the cap


async def test_a_result_over_max_line_bytes_is_relayed_whole_and_ends_its_turn(
    fake_claude: Path, home: Path
) -> None:
    """A 2 MB answer with a 1 MiB cap: the result repeats it, and must not be lost."""
    w = await Wrapper.start(supervisor_argv(fake_claude, "--max-line-bytes", str(1024 * 1024)))
    try:
        await w.send(user("[[fake: huge_result=2000000]]"), user("next"))
        await w.close_stdin()
        frames = await w.read_to_end(timeout=60)
        results = [(f, raw) for f, raw in zip(frames, w.raw_lines, strict=True) if is_result(f)]
        [(big, raw), (after, _)] = results
        assert len(big["result"]) == 2_000_000
        # Unchanged bytes: the fake writes json.dumps' default form, which this reproduces.
        assert raw == json.dumps(big, ensure_ascii=False).encode()
        assert after["result"] == "reply #2 to: next"  # the queue behind it ran
        assert not [f for f in frames if f.get("subtype") == "supervisor_error"]
        assert await w.wait() == 0  # and EOF still ends the session
    finally:
        await w.kill()


async def test_the_system_init_and_result_pass_the_smallest_cap(
    fake_claude: Path, home: Path
) -> None:
    w = await Wrapper.start(supervisor_argv(fake_claude, "--max-line-bytes", "1024"))
    try:
        await w.send(user("[[fake: huge_result=3000]]"), user("[[fake: tool=60]]"))
        [first] = await w.results(1)
        assert len(first["result"]) == 3000 and first["subtype"] == "success"
        await w.expect(is_tool_use)
        await w.send({"type": "cancel_turn"})  # the ladder works past long lines too
        assert (await w.expect(is_result))["is_error"] is True
        await w.expect(is_system("supervisor_cancel"))
    finally:
        await w.kill()


async def test_a_200_mb_line_is_relayed_in_bounded_memory(fake_claude: Path, home: Path) -> None:
    size = 200_000_000
    w = await Wrapper.start(supervisor_argv(fake_claude, "--max-line-bytes", str(1024 * 1024)))
    try:
        await w.send(user(f"[[fake: huge_result={size}]]"), user("next"))
        assert w.process.stdout is not None
        lines: list[int] = [0]  # the length of each line read so far
        heads: list[bytes] = [b""]
        tails: list[bytes] = [b""]
        peak = 0
        with trio.fail_after(120):
            while len(lines) < 7:  # init, assistant, result; init, assistant, result
                chunk = await w.process.stdout.receive_some()
                assert chunk, "the wrapper's output ended early"
                for i, piece in enumerate(bytes(chunk).split(b"\n")):
                    if i:
                        lines.append(0)
                        heads.append(b"")
                        tails.append(b"")
                    lines[-1] += len(piece)
                    heads[-1] = (heads[-1] + piece)[:100]
                    tails[-1] = (tails[-1] + piece)[-300:]
                peak = max(peak, _peak_rss(w.process.pid))
        assert [h[:17] for h in heads[:6:3]] == [b'{"type": "system"'] * 2
        assert [h[:17] for h in heads[1:6:3]] == [b'{"type": "assista'] * 2
        # The results: the real CLI's order, with "type" after the 200 MB answer.
        kinds = [b'"type": "result"' in h + t for h, t in zip(heads[:6], tails[:6], strict=True)]
        assert kinds == [False, False, True] * 2
        assert b'"type"' not in heads[2]
        assert size < lines[2] < size + 10_000
        assert peak < 150 * 1024 * 1024  # generous: far below the 200 MB line
    finally:
        await w.close_stdin()
        await w.wait(60)
        await w.kill()


def _peak_rss(pid: int) -> int:
    """The process's peak resident set so far (Linux's VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")
