"""The process tree under the real CLI: hostile tools, a stopped CLI, the CLI's own MCP
servers, and a helper that is SIGKILLed. Each runs the wrapper over pipes."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest
import trio
from conftest import cli_of, stray_processes
from wrapper_harness import FAST_FLAGS, IN_BAND_FLAGS, Frame, Wrapper, is_result, is_system, user

from .conftest import ARGS, long_tool, wait_for_file

pytestmark = pytest.mark.real_cli

CHAIN = Path(__file__).parent.parent / "fork_chain.py"
MCP_SERVER = Path(__file__).with_name("mcp_server.py")


Start = Callable[..., Awaitable[Wrapper]]


@pytest.fixture
async def start(claude_cli: Path, cli_env: dict[str, str], workdir: Path) -> AsyncIterator[Start]:
    """Starts a wrapper with extra wrapper flags and extra CLI args; closes it after."""
    started: list[Wrapper] = []

    async def start(flags: list[str], cli_args: list[str] = []) -> Wrapper:  # noqa: B006
        argv = ["--claude", str(claude_cli), *flags, "--", *ARGS, *cli_args]
        w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            try:
                if w.process.returncode is None:
                    await w.close_stdin()
                    await w.wait(30)
            finally:
                await w.kill()


def helper_of(wrapper: Wrapper) -> psutil.Process:
    [helper] = psutil.Process(wrapper.process.pid).children()
    return helper


def chain(marker: Path, links: int = 20_000) -> str:
    """A Bash call that starts a fork-and-exit chain (see tests/fork_chain.py), then
    runs on (the chain's first link exits at once, and the call with it otherwise)."""
    sleeper = f"{sys.executable} -c 'import time; time.sleep(300)'"
    return f"[[api: bash={sys.executable} {CHAIN} {links} {marker}; {sleeper}]]"


async def leftovers(wrapper: Wrapper, token: str) -> list[psutil.Process]:
    """What is alive of this test's processes besides the wrapper, its helper, the CLI
    (after a respawn, the new ones): once the clean-up has had a moment to finish."""
    helper = helper_of(wrapper)
    keep = {wrapper.process.pid, helper.pid, cli_of(helper).pid}
    with trio.move_on_after(10):
        while stray_processes(token, keep):
            await trio.sleep(0.05)
    return stray_processes(token, keep)


def report_of(notice: Frame) -> dict[str, object]:
    report = notice["report"]
    assert isinstance(report, dict)
    return report


def step_ms(report: dict[str, object], name: str) -> float:
    steps = report["steps"]
    assert isinstance(steps, list)
    return float(next(s["ms"] for s in steps if s["name"] == name))


# ---------------------------------------------------------------- fork-and-exit chains


async def test_a_fork_chain_does_not_outlive_an_in_band_cancel(
    start: Start, workdir: Path, process_audit: str
) -> None:
    w = await start([*FAST_FLAGS, *IN_BAND_FLAGS])
    await w.send(user(chain(workdir / "started")))
    await wait_for_file(workdir / "started")
    await w.send({"type": "cancel_turn"})
    await w.expect(is_result)
    assert report_of(await w.expect(is_system("supervisor_cancel")))["path"] == "interrupt"
    assert await leftovers(w, process_audit) == []
    await w.send(user("after"))
    assert (await w.expect(is_result))["result"].endswith("to: after")


async def test_a_fork_chain_is_killed_with_a_wedged_cli(
    start: Start, workdir: Path, process_audit: str
) -> None:
    w = await start(FAST_FLAGS)
    await w.send(user(chain(workdir / "started")))
    await wait_for_file(workdir / "started")
    cli_of(helper_of(w)).send_signal(signal.SIGSTOP)
    await w.send({"type": "cancel_turn"})
    await w.expect(is_result, timeout=30)
    report = report_of(await w.expect(is_system("supervisor_cancel"), timeout=30))
    assert report["path"] == "kill" and report["respawned"] is True  # not tree_not_killed
    assert await leftovers(w, process_audit) == []
    await w.send(user("after"))
    assert (await w.expect(is_result))["result"].endswith("to: after")


# ------------------------------------------------------------------------ a stopped CLI


async def test_a_stopped_cli_is_killed_without_waiting_for_kill_timeout(
    start: Start, workdir: Path, process_audit: str
) -> None:
    """A stopped process acts on SIGTERM only when continued; with a kill_timeout of
    20 s, the tree must still be gone at once (it took the whole kill_timeout)."""
    flags = ["--interrupt-timeout", "0.3", "--sigint-timeout", "0.3", "--kill-timeout", "20"]
    w = await start(flags)
    await w.send(user(long_tool(workdir / "started", escapee=True)))
    await wait_for_file(workdir / "started")
    cli_of(helper_of(w)).send_signal(signal.SIGSTOP)
    await w.send({"type": "cancel_turn"})
    report = report_of(await w.expect(is_system("supervisor_cancel"), timeout=60))
    assert report["path"] == "kill"
    assert step_ms(report, "tree_killed") - step_ms(report, "kill_sent") < 10_000
    assert await leftovers(w, process_audit) == []


# --------------------------------------------------------------- the CLI's MCP servers


async def test_an_in_band_cancel_of_the_first_turn_keeps_the_mcp_server(
    start: Start, workdir: Path, tmp_path: Path, process_audit: str
) -> None:
    """The CLI starts its stdio MCP servers after the first user frame, so they are
    newer than the turn; they are the CLI's, not the turn's, and must survive."""
    pid_file = tmp_path / "mcp-pid"
    config = tmp_path / "mcp.json"
    server = {"command": sys.executable, "args": [str(MCP_SERVER), str(pid_file)]}
    config.write_text(json.dumps({"mcpServers": {"test": server}}))
    w = await start([*FAST_FLAGS, *IN_BAND_FLAGS], ["--mcp-config", str(config)])
    await w.send(user(long_tool(workdir / "started", escapee=True)))
    await wait_for_file(workdir / "started")
    await wait_for_file(pid_file)
    mcp = psutil.Process(int(pid_file.read_text()))  # remembers its creation time
    cli = cli_of(helper_of(w))
    assert mcp.ppid() == cli.pid
    tools = [p for p in stray_processes(process_audit, {w.process.pid, cli.pid}) if p != mcp]
    assert len(tools) >= 3  # the shell, its command, the escapee (and the helper)
    await w.send({"type": "cancel_turn"})
    await w.expect(is_result)
    assert report_of(await w.expect(is_system("supervisor_cancel")))["path"] == "interrupt"
    assert mcp.is_running() and mcp.status() != psutil.STATUS_ZOMBIE  # same pid and birth
    assert await leftovers(w, process_audit) == [mcp]
    assert cli_of(helper_of(w)) == cli  # no respawn either


# --------------------------------------------------------------- a SIGKILLed helper


async def test_a_sigkilled_helper_leaves_no_tool_behind(
    start: Start, workdir: Path, process_audit: str
) -> None:
    """The CLI dies with its helper (parent-death signal), the tools would not: the
    supervisor kills them (found by their tag), and the session goes on resumed."""
    w = await start(FAST_FLAGS)
    await w.send(user("first"))
    first = await w.expect(is_result)
    await w.send(user(long_tool(workdir / "started", escapee=True)))
    await wait_for_file(workdir / "started")
    helper = helper_of(w)
    tools = stray_processes(process_audit, {w.process.pid, helper.pid, cli_of(helper).pid})
    assert len(tools) >= 3  # the shell, its command, the escapee
    helper.kill()
    result = await w.expect(is_result, timeout=30)
    assert result["is_error"] is True
    assert "helper process died" in result["result"]
    _gone, alive = await trio.to_thread.run_sync(lambda: psutil.wait_procs(tools, timeout=15))
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    await w.send(user("after"))
    after = await w.expect(is_result, timeout=60)
    assert after["result"].endswith("to: after")
    assert after["session_id"] == first["session_id"]
    assert await leftovers(w, process_audit) == []
