"""Faults around the supervisor itself: pid reuse, its own death, and resumes that fail."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio
from conftest import processes_with_token, stray_processes
from test_session import ARGS, FAST, tool_running
from wrapper_harness import Wrapper, is_tool_use, supervisor_argv, user

import supervisor
from supervisor import _tree as tree
from supervisor import open_session
from supervisor._policy import TREE_GRACE


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line from a pipe (a write may arrive in pieces)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        line += chunk
    return line


# ------------------------------------------------------------------------- pid reuse


def spawn_at_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Starts `argv` as process `pid`, which must be free: a reused pid, on purpose.

    Linux lets root choose the next pid (ns_last_pid); elsewhere, or without the
    right, pids are cycled by forking until the one wanted comes round.
    """
    with contextlib.suppress(OSError):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    for _ in range(4 * 4_194_304):
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        if child == pid - 1:
            proc = subprocess.Popen(argv)
            if proc.pid == pid:
                return proc
            proc.kill()
            proc.wait()
    raise AssertionError(f"could not get pid {pid} again")


SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_reused_pid_is_never_signalled() -> None:
    first = subprocess.Popen(
        [*SLEEP[:2], "print('up', flush=True); " + SLEEP[2]], stdout=subprocess.PIPE
    )
    remembered = tree.Proc.read(first.pid)  # what a tree listing would hold
    assert remembered is not None
    # Creation times tick every 10 ms: let the first process outlive a tick, as any
    # real one does (pids come round only after pid_max others, not within 10 ms).
    assert first.stdout is not None and first.stdout.readline() == b"up\n"
    first.kill()
    first.wait()
    stranger = spawn_at_pid(first.pid, SLEEP)
    try:
        assert stranger.pid == remembered.pid
        assert tree.terminate(lambda: [remembered], timeout=0.2, grace=TREE_GRACE) == 0
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_turn_processes_do_not_count_a_reused_pid_as_old() -> None:
    """A process that existed before the turn and was replaced by a newcomer with the
    same pid is told apart by its creation time."""
    helper = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "print(c.pid, flush=True); c.wait(); print('gone', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert helper.stdout is not None
        old_pid = int(helper.stdout.readline())
        before = tree.snapshot(helper.pid)
        assert {pid for pid, _ in before} == {old_pid}
        os.kill(old_pid, signal.SIGKILL)
        assert helper.stdout.readline() == b"gone\n"
        stranger = spawn_at_pid(old_pid, SLEEP)  # not a descendant of `helper`
        try:
            assert tree.turn_processes(helper.pid, before, exclude=()) == []
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        helper.kill()
        helper.wait()


def test_passthrough_never_forwards_a_signal_to_a_reused_pid(tmp_path: Path) -> None:
    """Passthrough mode forwards the wrapper's signals to the CLI. Once the helper has
    reaped the CLI (here while it still waits on a tool that ignores SIGTERM), the CLI's
    pid may be reused: the newcomer must not get the signal."""
    pid_file = tmp_path / "cli-pid"
    log = tmp_path / "signals"
    claude = tmp_path / "claude"
    claude.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, signal, subprocess, sys
        tool = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; "
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
             "time.sleep(60)"],
            start_new_session=True, stdout=subprocess.PIPE,
        )
        tool.stdout.readline()
        with open({str(pid_file)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
    """))  # fmt: skip
    claude.chmod(0o755)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--claude", str(claude), "--kill-timeout", "5",
         "--", "-p", "hello"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the stand-in CLI never ran"
            time.sleep(0.01)
        cli_pid = int(pid_file.read_text())
        while psutil.pid_exists(cli_pid):  # until the helper has reaped it
            assert time.monotonic() < deadline, "the stand-in CLI was never reaped"
            time.sleep(0.01)
        stranger = spawn_at_pid(cli_pid, [sys.executable, "-c", textwrap.dedent(f"""
            import signal, sys, time
            def note(signum, frame):
                with open({str(log)!r}, "a") as f:
                    f.write(str(signum) + "\\n")
            signal.signal(signal.SIGTERM, note)
            open({str(log)!r} + ".ready", "w").close()
            time.sleep(60)
        """)])  # fmt: skip
        try:
            while not Path(f"{log}.ready").exists():
                assert stranger.poll() is None
                time.sleep(0.01)
            assert wrapper.poll() is None  # still waiting for the tool to die
            wrapper.send_signal(signal.SIGTERM)  # forwarded to "the CLI"
            wrapper.wait(timeout=30)
            assert not log.exists(), "the process that reused the CLI's pid got a signal"
            assert stranger.poll() is None
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


def test_passthrough_kills_the_tree_of_a_sigkilled_helper(
    tmp_path: Path, process_audit: str
) -> None:
    """Passthrough mode: the helper SIGKILLed, the wrapper kills what it left (a tool in
    a session of its own, orphaned to init) and exits."""
    ready = tmp_path / "tool-ready"
    claude = tmp_path / "claude"
    claude.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys, time
        subprocess.Popen(
            [sys.executable, "-c", "import time; open({str(ready)!r}, 'w'); time.sleep(60)"],
            start_new_session=True,
        )
        time.sleep(60)
    """))  # fmt: skip
    claude.chmod(0o755)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--claude", str(claude), "--", "-p", "hello"],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the stand-in tool never ran"
            time.sleep(0.01)
        [helper] = psutil.Process(wrapper.pid).children()
        tools = stray_processes(process_audit, {wrapper.pid, helper.pid})
        assert len(tools) == 2  # the stand-in CLI and its tool
        helper.kill()
        wrapper.wait(timeout=30)
        _gone, alive = psutil.wait_procs(tools, timeout=15)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()


async def test_processes_outside_the_tree_are_never_signalled(
    fake_claude: Path, home: Path, tmp_path: Path
) -> None:
    """A bystander started by the same program (same session, same process group, same
    environment) gets no signal, whatever rung the cancels reach."""
    log = tmp_path / "signals"
    bystander = await trio.lowlevel.open_process(
        [sys.executable, "-c", textwrap.dedent(f"""
            import signal, time
            def note(signum, frame):
                with open({str(log)!r}, "a") as f:
                    f.write(str(signum) + "\\n")
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, note)
            print("ready", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert bystander.stdout is not None
        assert await read_line(bystander.stdout) == b"ready\n"
        async with open_session(ARGS, claude=fake_claude, policy=FAST) as session:
            for directives in ("tool=60", "tool=60, ignore_interrupt", "tool=60, wedge"):
                turn = await session.send(f"[[fake: {directives}, escapee, stubborn]]")
                await tool_running(turn)
                await session.cancel()
        assert not log.exists(), log.read_text()
    finally:
        bystander.kill()
        await bystander.wait()


# ------------------------------------------------------------------ the supervisor dies


async def test_a_sigkilled_library_host_takes_its_sessions_with_it(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    host = await trio.lowlevel.open_process(
        [sys.executable, "-c", textwrap.dedent(f"""
            import trio, supervisor
            async def main():
                async with supervisor.open_session({ARGS!r}, claude={str(fake_claude)!r}) as s:
                    turn = await s.send("[[fake: tool=60, escapee, stubborn, deep=3]]")
                    async for frame in turn:
                        blocks = frame.get("message", dict()).get("content", [])
                        if any(b.get("type") == "tool_use" for b in blocks):
                            print("ready", flush=True)
                    await trio.sleep_forever()
            trio.run(main)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert host.stdout is not None
    with trio.fail_after(30):
        assert await read_line(host.stdout) == b"ready\n"
    tree_processes = [p for p in processes_with_token(process_audit) if p.pid != host.pid]
    assert len(tree_processes) >= 6  # helper, CLI, tool, escapee, stubborn, the chain
    host.kill()
    await host.wait()
    _gone, alive = await trio.to_thread.run_sync(
        lambda: psutil.wait_procs(tree_processes, timeout=15)
    )
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


async def test_a_sigkilled_helper_leaves_no_tool_behind(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """The CLI dies with its helper (parent-death signal); its tools, in sessions of
    their own and re-parented to init, would not: the supervisor finds them by the tag
    in their environment and kills them, and the session goes on, resumed."""
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as session:
        assert (await (await session.send("first")).result())["subtype"] == "success"
        turn = await session.send("[[fake: tool=60, escapee, stubborn, deep=3]]")
        await tool_running(turn)
        process = session._driver.process
        assert process is not None and process._helper is not None
        helper = psutil.Process(process._helper.pid)
        tools = stray_processes(process_audit, {helper.pid, session.cli_pid})
        assert len(tools) >= 5  # the tool, its escapee, the stubborn child, the chain
        helper.kill()
        result = await turn.result()
        assert result["is_error"] is True
        assert "helper process died" in result["result"]
        _gone, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(tools, timeout=15))
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
        after = await (await session.send("after")).result()
        assert after["subtype"] == "success"


async def test_when_the_wrappers_parent_dies_everything_stops(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """The wrapper's stdin stays open (the test holds it), so only its watch on its
    parent pid can tell the wrapper that its parent is gone."""
    argv = [sys.executable, "-m", "supervisor", *supervisor_argv(fake_claude)]
    parent = await trio.lowlevel.open_process(
        [sys.executable, "-c",
         f"import subprocess, time; subprocess.Popen({argv!r}); time.sleep(120)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    reader = Wrapper(parent)  # the wrapper inherited the parent's pipes
    try:
        await reader.send(user("[[fake: tool=60, escapee, stubborn]]"))
        await reader.expect(is_tool_use)
        tree_processes = [p for p in processes_with_token(process_audit) if p.pid != parent.pid]
        parent.kill()
        await parent.wait()
        _gone, alive = await trio.to_thread.run_sync(
            lambda: psutil.wait_procs(tree_processes, timeout=15)
        )
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        await reader.kill()


# -------------------------------------------------------------------- failed resumes


async def test_the_cli_binary_disappears_before_a_respawn(fake_claude: Path, home: Path) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as session:
        turn = await session.send("[[fake: tool=60, wedge]]")
        await tool_running(turn)
        await trio.Path(fake_claude).unlink()
        assert await session.cancel() is None  # the session failed instead of coming back
        assert (await turn.result())["is_error"] is True
        with pytest.raises(supervisor.SessionFailedError, match="cannot restart the Claude"):
            await session.send("more")


async def test_a_transcript_that_cannot_be_resumed(fake_claude: Path, home: Path) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as session:
        turn = await session.send("[[fake: tool=60, wedge]]")
        await tool_running(turn)
        for transcript in (home / ".claude" / "fake-sessions").iterdir():
            transcript.unlink()
        queued = await session.send("queued")
        await session.cancel()
        # The session goes on as a new one, and says the history is lost.
        result = await queued.result()
        assert result["subtype"] == "success" and result["fake_history"] == ["queued"]
        assert session.sessions_lost == 1


@pytest.fixture
def tiny_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME on a 64 KiB tmpfs: the disk fills up as soon as anything is written."""
    home = tmp_path / "full-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(home)], check=True)
    try:
        with contextlib.suppress(OSError):  # fill it up
            (home / "filler").write_bytes(b"\0" * 128 * 1024)
        monkeypatch.setenv("HOME", str(home))
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


async def test_a_full_disk_for_the_transcript(fake_claude: Path, tiny_home: Path) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST, cwd="/") as session:
        turn = await session.send("[[fake: tool=60, wedge]]")
        await tool_running(turn)
        await session.cancel()
        assert (await turn.result())["is_error"] is True
        # Nothing could be written, so nothing could be resumed: a new session goes on.
        assert session.sessions_lost == 1
        assert (await (await session.send("more")).result())["subtype"] == "success"


async def test_a_session_outlives_the_thread_that_spawned_its_cli(
    fake_claude: Path, home: Path
) -> None:
    """trio starts processes from worker threads, which exit after 10 s idle; Linux's
    parent-death signal follows the *thread*, so it must not be what ties the CLI's
    life to the supervisor's."""
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as session:
        first = session.cli_pid
        turn = await session.send("[[fake: tool=14]]")
        assert (await turn.result())["subtype"] == "success"
        assert session.cli_pid == first  # no respawn: the CLI was never killed
