"""The library with the real Claude Code CLI: every rung, resume, the queue, supersede."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import trio
from test_session import strays

from supervisor import EscalationPolicy, Session, Turn, open_session
from supervisor.testing.fake_api import FakeMessagesAPI, typed_user_texts

from .conftest import ARGS, long_tool, wait_for_file

pytestmark = pytest.mark.real_cli

POLICY = EscalationPolicy(interrupt_timeout=2, sigint_timeout=4, kill_timeout=1)
#: For cancels meant to end in-band (`path == "interrupt"`): deadlines a loaded machine
#: cannot miss, the unanswered-interrupt shortcut off.
IN_BAND = EscalationPolicy(
    interrupt_timeout=30, interrupt_ack_timeout=30, sigint_timeout=4, kill_timeout=1
)


async def start_tool(session: Session, marker: Path, **kwargs: bool) -> Turn:
    turn = await session.send(long_tool(marker, **kwargs))
    await wait_for_file(marker)
    return turn


async def test_in_band_cancel_kills_even_an_escaped_grandchild(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, process_audit: str
) -> None:
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=IN_BAND
    ) as session:
        turn = await start_tool(session, workdir / "started", escapee=True)
        started = trio.current_time()
        report = await session.cancel()
        elapsed_ms = (trio.current_time() - started) * 1000
        assert report is not None
        assert report.path == "interrupt" and not report.respawned
        assert report.processes_killed >= 1  # the setsid grandchild the CLI left
        result = await turn.result()
        assert result["terminal_reason"] == "aborted_tools"
        assert strays(session, process_audit) == []
        # The report agrees with what the caller saw.
        assert report.total_ms <= elapsed_ms + 1
        names = [s.name for s in report.steps]
        assert names[:3] == ["interrupt_sent", "interrupt_answered", "result"]
        assert names[-1] == "ready" and report.steps[-1].ms == report.total_ms
        nxt = await (await session.send("next")).result()
        assert nxt["subtype"] == "success" and nxt["session_id"] == report.session_id


async def test_sigint_rung_and_resume_continuity(
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    api: FakeMessagesAPI,
    process_audit: str,
) -> None:
    # The CLI answers the interrupt in tens of milliseconds: a deadline of 1 ms makes
    # it miss the interrupt's deadline, as a busy CLI would, so SIGINT follows.
    policy = EscalationPolicy(interrupt_timeout=0.001, sigint_timeout=5, kill_timeout=1)
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=policy
    ) as session:
        first = await (await session.send("remember the word tangerine")).result()
        turn = await start_tool(session, workdir / "started")
        cli_before = session.cli_pid
        report = await session.cancel()
        assert report is not None and report.path == "sigint" and report.respawned
        assert report.session_id == first["session_id"]
        assert (await turn.result())["is_error"] is True
        assert session.cli_pid != cli_before
        assert strays(session, process_audit) == []
        after = await (await session.send("what was the word?")).result()
        assert after["session_id"] == first["session_id"]
        texts = typed_user_texts(api.requests[-1])
        assert "remember the word tangerine" in texts and texts[-1] == "what was the word?"


async def wait_until_stopped(pid: int) -> None:
    """SIGSTOP is delivered asynchronously: wait until the kernel shows it stopped."""
    process = psutil.Process(pid)
    with trio.fail_after(10):
        while process.status() != psutil.STATUS_STOPPED:
            await trio.sleep(0.005)


async def test_a_stopped_cli_recovers_through_the_adaptive_path(
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    api: FakeMessagesAPI,
    process_audit: str,
) -> None:
    """With the default policy: no waiting on an interrupt or a SIGINT it cannot act on."""
    async with open_session(ARGS, claude=claude_cli, env=cli_env, cwd=workdir) as session:
        await (await session.send("first")).result()
        turn = await start_tool(session, workdir / "started", escapee=True)
        assert session.cli_pid is not None
        os.kill(session.cli_pid, signal.SIGSTOP)  # wedged: reads nothing, ignores SIGINT
        await wait_until_stopped(session.cli_pid)
        started = trio.current_time()
        report = await session.cancel()
        elapsed = trio.current_time() - started
        print(f"\nstopped CLI ready again after {elapsed * 1000:.0f} ms: {report}")
        assert report is not None and report.path == "kill" and report.respawned
        assert report.trigger == "request"
        assert report.processes_killed >= 3  # the CLI, its tool shell, the escapee...
        names = [s.name for s in report.steps]
        assert "sigint_sent" not in names and names[:3] == [
            "interrupt_sent",
            "cli_stopped",
            "kill_sent",
        ]
        # Before the shortcut: about 5.9 s (interrupt 1.5 s + SIGINT 3 s + kill + respawn).
        policy = EscalationPolicy()
        assert elapsed < policy.interrupt_timeout + policy.sigint_timeout
        result = await turn.result()
        # Ours, or the CLI's own when the kill rung's SIGCONT let it answer first.
        assert result["terminal_reason"] in ("cancelled", "aborted_tools") and result["session_id"]
        assert strays(session, process_audit) == []
        after = await (await session.send("after the kill")).result()
        assert after["session_id"] == report.session_id
        assert "first" in typed_user_texts(api.requests[-1])


async def test_one_result_per_send_even_when_sent_during_a_tool_call(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with open_session(ARGS, claude=claude_cli, env=cli_env, cwd=workdir) as session:
        marker = workdir / "started"
        short = long_tool(marker, seconds=1)
        turns = [await session.send(short)]
        await wait_for_file(marker)
        turns += [await session.send("second"), await session.send("third")]
        results = [await t.result() for t in turns]
        assert [r["result"] for r in results[1:]] == [
            "reply #2 to: second",
            "reply #3 to: third",
        ]


async def test_supersede_with_the_real_cli(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=IN_BAND
    ) as session:
        running = await start_tool(session, workdir / "started")
        queued = await session.send("queued")
        new = await session.supersede("instead")
        assert (await running.result())["is_error"] is True
        assert (await new.result())["result"].endswith("to: instead")
        assert (await queued.result())["result"].endswith("to: queued")
        assert session.last_report is not None and session.last_report.path == "interrupt"


async def test_a_stalled_model_stream_is_cancelled_in_band(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, api: FakeMessagesAPI
) -> None:
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=IN_BAND
    ) as session:
        turn = await session.send("[[api: stall]]")
        await trio.to_thread.run_sync(api.wait_for_stall)
        report = await session.cancel()
        assert report is not None and report.path == "interrupt"
        assert (await turn.result())["terminal_reason"] == "aborted_streaming"


async def test_api_error_is_the_clis_own_result(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with open_session(ARGS, claude=claude_cli, env=cli_env, cwd=workdir) as session:
        result = await (await session.send("[[api: error]]")).result()
        assert result["is_error"] is True and "supervisor" not in result
        assert (await (await session.send("fine")).result())["is_error"] is False


async def test_close_during_a_tool_call_leaves_nothing(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=POLICY
    ) as session:
        turn = await start_tool(session, workdir / "started", escapee=True)
    assert (await turn.result())["is_error"] is True
    # The audit fixture fails the test if the tool or its escapee survived.


async def test_a_tool_that_ignores_sigterm_and_sigint_is_killed(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, process_audit: str
) -> None:
    """The CLI SIGTERMs its tool on interrupt and would SIGKILL it 1.5 s later; the
    supervisor does not wait for that: the cancel ends with the tool gone."""
    marker = workdir / "started"
    stubborn = (
        "python3 -c 'import signal, time, pathlib; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); "
        f'pathlib.Path("{marker}").touch(); time.sleep(300)\''
    )
    async with open_session(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, policy=IN_BAND
    ) as session:
        turn = await session.send(f"[[api: bash={stubborn}]]")
        await wait_for_file(marker)
        report = await session.cancel()
        assert report is not None and report.path == "interrupt"
        assert (await turn.result())["terminal_reason"] == "aborted_tools"
        assert strays(session, process_audit) == []
