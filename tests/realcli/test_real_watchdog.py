"""The stall watchdog and the turn timeout, through the executable, with the real CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import psutil
import pytest
import trio
from conftest import cli_of, stray_processes
from wrapper_harness import IN_BAND_FLAGS, Wrapper, is_result, is_system, user

from supervisor.testing.fake_api import FakeMessagesAPI

from .conftest import ARGS, long_tool, wait_for_file

pytestmark = pytest.mark.real_cli

#: Limits short enough for a quick test, long enough for a loaded 2-core machine: the
#: CLI's quiet spells between frames (an API round trip on loopback) last milliseconds.
STALL = 3.0
TURN = 3.0

StartWrapper = Callable[..., AbstractAsyncContextManager[Wrapper]]


@pytest.fixture
def wrapper_with(claude_cli: Path, cli_env: dict[str, str], workdir: Path) -> StartWrapper:
    @asynccontextmanager
    async def start(*flags: str) -> AsyncIterator[Wrapper]:
        argv = ["--claude", str(claude_cli), *flags, "--", *ARGS]
        w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
        try:
            yield w
            await w.close_stdin()
            assert await w.wait(30) == 0
        finally:
            await w.kill()

    return start


def strays(wrapper: Wrapper, token: str) -> list[psutil.Process]:
    """What tools left behind: processes of this test other than the wrapper, its helper
    and the CLI."""
    [helper] = psutil.Process(wrapper.process.pid).children()
    keep = {wrapper.process.pid, helper.pid, cli_of(helper).pid}
    return stray_processes(token, keep)


async def test_a_stalled_model_stream_is_ended_by_the_stall_timeout(
    wrapper_with: StartWrapper,
    api: FakeMessagesAPI,
    process_audit: str,
) -> None:
    async with wrapper_with("--stall-timeout", str(STALL), *IN_BAND_FLAGS) as w:
        await w.send(user("first"))
        first = await w.expect(is_result)
        sent = trio.current_time()
        await w.send(user("[[api: stall]]"))
        await trio.to_thread.run_sync(api.wait_for_stall)
        result = await w.expect(is_result, timeout=STALL + 30)
        assert trio.current_time() - sent >= STALL  # nobody asked: the limit did
        # The CLI answered the interrupt: its own result, as for any in-band cancel.
        assert result["terminal_reason"] == "aborted_streaming" and "supervisor" not in result
        notice = await w.expect(is_system("supervisor_cancel"))
        assert notice["trigger"] == "stall"
        assert notice["report"]["trigger"] == "stall" and notice["report"]["path"] == "interrupt"
        assert strays(w, process_audit) == []
        await w.send(user("after"))
        after = await w.expect(is_result)
        assert after["subtype"] == "success" and after["session_id"] == first["session_id"]


async def test_a_long_tool_call_outlives_the_stall_timeout(
    wrapper_with: StartWrapper, workdir: Path
) -> None:
    seconds = int(STALL * 3)
    async with wrapper_with("--stall-timeout", str(STALL)) as w:
        await w.send(user(long_tool(workdir / "started", seconds=seconds)))
        result = await w.expect(is_result, timeout=seconds + 30)
        assert result["subtype"] == "success" and result["result"] == "tool done"
        assert not [f for f in w.frames if is_system("supervisor_cancel")(f)]


async def test_the_turn_timeout_ends_a_long_tool_call(
    wrapper_with: StartWrapper, workdir: Path, process_audit: str
) -> None:
    async with wrapper_with("--turn-timeout", str(TURN), *IN_BAND_FLAGS) as w:
        await w.send(user("first"))
        first = await w.expect(is_result)
        sent = trio.current_time()
        await w.send(user(long_tool(workdir / "started", escapee=True)))
        await wait_for_file(workdir / "started")
        result = await w.expect(is_result, timeout=TURN + 30)
        assert trio.current_time() - sent >= TURN
        assert result["terminal_reason"] == "aborted_tools"  # the CLI's own
        notice = await w.expect(is_system("supervisor_cancel"))
        assert notice["trigger"] == "turn_timeout"
        assert notice["report"]["trigger"] == "turn_timeout"
        assert strays(w, process_audit) == []  # the tool and its escapee included
        await w.send(user("after"))
        after = await w.expect(is_result)
        assert after["subtype"] == "success" and after["session_id"] == first["session_id"]
