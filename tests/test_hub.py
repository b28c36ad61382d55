"""One hub per host process: sessions share it, and each keeps its own tree.

The fake CLI's `escapee` is a tool's grandchild that double-forks and `setsid`s: it is
re-parented to the hub (the subreaper), where only its tag says whose it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
import trio
from conftest import processes_with_token
from test_reliability import read_line
from test_session import ARGS, FAST, IN_BAND, tool_running

from supervisor import Session, open_session
from supervisor._tree import TAG_VARIABLE


def hub_of(session: Session) -> psutil.Process:
    process = session._driver.process
    assert process is not None and process._helper is not None
    return psutil.Process(process._helper.pid)


def tag_of(session: Session) -> str:
    process = session._driver.process
    assert process is not None and process._helper is not None
    return process._helper.tag


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def tree_of(tag: str, token: str) -> list[psutil.Process]:
    """The test's processes that carry a session's tag: its CLI and all it started."""
    found = []
    for proc in processes_with_token(token):
        try:
            if proc.environ().get(TAG_VARIABLE) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return alive(found)


async def open_many(stack: AsyncExitStack, count: int, fake_claude: Path) -> list[Session]:
    return [
        await stack.enter_async_context(open_session(ARGS, claude=fake_claude, policy=IN_BAND))
        for _ in range(count)
    ]


async def test_sessions_of_one_process_share_one_hub(fake_claude: Path, home: Path) -> None:
    async with AsyncExitStack() as stack:
        a, b = await open_many(stack, 2, fake_claude)
        assert (await (await a.send("hello")).result())["subtype"] == "success"
        assert (await (await b.send("hello")).result())["subtype"] == "success"
        hub = hub_of(a)
        assert hub_of(b) == hub
        assert hub.ppid() == os.getpid()
        assert {a.cli_pid, b.cli_pid} <= {child.pid for child in hub.children()}
        assert hub in psutil.Process().children()


async def test_one_sessions_tree_dies_alone(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """Closing A kills A's CLI, tool and escapee (adopted by the hub); B's live on."""
    async with AsyncExitStack() as outer:
        b = await outer.enter_async_context(open_session(ARGS, claude=fake_claude, policy=FAST))
        b_turn = await b.send("[[fake: tool=60, escapee]]")
        await tool_running(b_turn)
        async with open_session(ARGS, claude=fake_claude, policy=FAST) as a:
            a_turn = await a.send("[[fake: tool=60, escapee]]")
            await tool_running(a_turn)
            hub = hub_of(a)
            a_tree = tree_of(tag_of(a), process_audit)
            b_tree = tree_of(tag_of(b), process_audit)
            # Each tree: the CLI, its tool, and the escapee the hub adopted.
            for session, procs in ((a, a_tree), (b, b_tree)):
                assert len(procs) >= 3
                assert any(p.ppid() == hub.pid for p in procs if p.pid != session.cli_pid)
            assert {p.pid for p in a_tree}.isdisjoint(p.pid for p in b_tree)
        _gone, left = await trio.to_thread.run_sync(lambda: psutil.wait_procs(a_tree, timeout=15))
        assert alive(left) == []
        assert alive(b_tree) == b_tree  # not one of B's processes was touched
        assert b.cli_pid is not None and hub_of(b) == hub
        await b.cancel()


async def test_a_cancel_kills_only_its_own_sessions_escapee(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """The in-band cancel's clean-up (the turn's processes, listed from the host) takes
    A's escapee from among the hub's children and leaves B's."""
    async with AsyncExitStack() as stack:
        a, b = await open_many(stack, 2, fake_claude)
        turns = [await s.send("[[fake: tool=60, escapee]]") for s in (a, b)]
        for turn in turns:
            await tool_running(turn)
        b_tree = tree_of(tag_of(b), process_audit)
        a_cli = a.cli_pid
        report = await a.cancel()
        assert report is not None and report.path == "interrupt"
        assert report.processes_killed >= 1  # the escapee: the CLI does not kill it itself
        assert [p.pid for p in tree_of(tag_of(a), process_audit)] == [a_cli]
        assert alive(b_tree) == b_tree
        await b.cancel()


async def test_the_hub_ends_with_the_last_session(fake_claude: Path, home: Path) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as a:
        async with open_session(ARGS, claude=fake_claude, policy=FAST) as b:
            await (await b.send("hello")).result()
            hub = hub_of(b)
        await (await a.send("still here")).result()
        assert hub_of(a) == hub and hub.is_running()
    _gone, left = await trio.to_thread.run_sync(lambda: psutil.wait_procs([hub], timeout=15))
    assert left == []
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as c:
        await (await c.send("hello")).result()
        assert hub_of(c).pid != hub.pid or not hub.is_running()


async def test_two_hundred_sessions_share_one_hub_and_leave_nothing_after_close(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """A chat bridge's load: 200 live sessions in one process, each answering, on one
    hub; once they are closed, no CLI, tool or hub of theirs is left."""
    async with AsyncExitStack() as stack:
        sessions = await open_many(stack, 200, fake_claude)
        turns = [await s.send(f"hello {i}") for i, s in enumerate(sessions)]
        results = [await turn.result() for turn in turns]
        assert [r["result"] for r in results] == [f"reply #1 to: hello {i}" for i in range(200)]
        hubs = {hub_of(s).pid for s in sessions}
        assert len(hubs) == 1
        hub = hub_of(sessions[0])
        assert len(processes_with_token(process_audit)) >= 201  # the CLIs and the hub
    _gone, left = await trio.to_thread.run_sync(lambda: psutil.wait_procs([hub], timeout=30))
    assert left == []
    assert alive(processes_with_token(process_audit)) == []


async def test_a_sigkilled_host_takes_every_sessions_tree_with_it(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    host = await trio.lowlevel.open_process(
        [sys.executable, "-c", textwrap.dedent(f"""
            import trio, supervisor
            from contextlib import AsyncExitStack
            async def busy(session):
                turn = await session.send("[[fake: tool=60, escapee, stubborn]]")
                async for frame in turn:
                    blocks = frame.get("message", dict()).get("content", [])
                    if any(b.get("type") == "tool_use" for b in blocks):
                        return
            async def main():
                async with AsyncExitStack() as stack:
                    sessions = [
                        await stack.enter_async_context(
                            supervisor.open_session({ARGS!r}, claude={str(fake_claude)!r})
                        )
                        for _ in range(2)
                    ]
                    for session in sessions:
                        await busy(session)
                    print("ready", flush=True)
                    await trio.sleep_forever()
            trio.run(main)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert host.stdout is not None
    with trio.fail_after(60):
        assert await read_line(host.stdout) == b"ready\n"
    tree_processes = [p for p in processes_with_token(process_audit) if p.pid != host.pid]
    hubs = [p for p in tree_processes if p.ppid() == host.pid]
    assert len(hubs) == 1  # one hub for both sessions
    assert len(tree_processes) >= 9  # the hub; per session: CLI, tool, escapee, stubborn
    host.kill()
    await host.wait()
    _gone, left = await trio.to_thread.run_sync(
        lambda: psutil.wait_procs(tree_processes, timeout=15)
    )
    assert alive(left) == []
