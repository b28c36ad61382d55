"""The library against the bundled fake CLI: every rung, every misbehaviour, the queue."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import attrs
import psutil
import pytest
import trio
from conftest import stray_processes
from wrapper_harness import is_tool_use

import supervisor
from supervisor import EscalationPolicy, Session, Turn, open_session

ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
#: Short deadlines keep the ladder quick; generous enough for a loaded CI machine.
FAST = EscalationPolicy(interrupt_timeout=0.5, sigint_timeout=2.0, kill_timeout=0.5)
#: For cancels meant to end in-band (`path == "interrupt"`): an interrupt deadline a loaded
#: machine cannot miss, the unanswered-interrupt shortcut off. Tests that climb keep FAST.
IN_BAND = attrs.evolve(FAST, interrupt_timeout=30.0, interrupt_ack_timeout=30.0)
in_band = pytest.mark.parametrize("session", [IN_BAND], ids=["in_band"], indirect=True)


@pytest.fixture
async def session(
    fake_claude: Path, home: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Session]:
    policy = getattr(request, "param", FAST)
    async with open_session(ARGS, claude=fake_claude, policy=policy) as s:
        yield s


def strays(session: Session, token: str) -> list[psutil.Process]:
    """Processes of this test other than the CLI and its helper: what tools left behind."""
    process = session._driver.process
    helper = process._helper if process is not None else None
    return stray_processes(token, {session.cli_pid, helper.pid if helper else None})


async def tool_running(turn: Turn) -> list[dict[str, Any]]:
    """Consumes the turn's frames until its tool has started; returns them."""
    seen = []
    async for frame in turn:
        seen.append(frame)
        if is_tool_use(frame):
            return seen
    raise AssertionError(f"the turn ended before its tool ran: {seen}")


async def test_turns_each_get_exactly_one_result_in_order(session: Session) -> None:
    turns = [await session.send(f"message {i}") for i in range(5)]
    results = [await t.result() for t in turns]
    assert [r["result"] for r in results] == [f"reply #{i + 1} to: message {i}" for i in range(5)]
    assert session.session_id and all(r["session_id"] == session.session_id for r in results)


async def test_a_turns_frames_end_with_its_result(session: Session) -> None:
    turn = await session.send([{"type": "text", "text": "blocks"}])
    frames = [frame async for frame in turn]
    assert [f["type"] for f in frames] == ["system", "assistant", "result"]
    assert frames[-1] == await turn.result()


@in_band
async def test_cancel_answered_in_band(session: Session, process_audit: str) -> None:
    turn = await session.send("[[fake: tool=60, escapee]]")
    await tool_running(turn)
    report = await session.cancel()
    assert report is not None
    assert report.path == "interrupt"
    assert not report.respawned
    assert report.processes_killed >= 1  # the escapee: the CLI does not kill it itself
    assert [s.name for s in report.steps][:3] == ["interrupt_sent", "interrupt_answered", "result"]
    assert (await turn.result())["terminal_reason"] == "aborted_tools"
    assert strays(session, process_audit) == []
    assert (await (await session.send("next")).result())["subtype"] == "success"


async def test_sigint_when_the_interrupt_is_ignored(session: Session, process_audit: str) -> None:
    await (await session.send("first")).result()
    turn = await session.send("[[fake: tool=60, ignore_interrupt]]")
    await tool_running(turn)
    report = await session.cancel()
    assert report is not None and report.path == "sigint" and report.respawned
    steps = [s.name for s in report.steps]
    assert steps[:3] == ["interrupt_sent", "interrupt_answered", "sigint_sent"]
    assert steps[-2:] == ["respawned", "ready"]
    result = await turn.result()
    assert result["is_error"] is True
    assert strays(session, process_audit) == []
    after = await (await session.send("after")).result()
    assert after["session_id"] == report.session_id == session.session_id
    assert after["fake_history"][0] == "first"  # the resumed CLI has the earlier turns


async def test_unanswered_interrupt_goes_to_sigint_when_the_shortcut_is_off(
    session: Session,
) -> None:
    assert FAST.interrupt_ack_timeout >= FAST.interrupt_timeout  # the shortcut is off
    turn = await session.send("[[fake: stream=60, mute_interrupt]]")
    async for frame in turn:
        if frame["type"] == "system":
            break
    report = await session.cancel()
    assert report is not None and report.path == "sigint"
    assert report.step_ms("interrupt_answered") is None


async def test_unanswered_interrupt_skips_sigint(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    # A long interrupt deadline: a loaded machine cannot reach it before the shortcut.
    policy = attrs.evolve(IN_BAND, interrupt_ack_timeout=0.2)
    async with open_session(ARGS, claude=fake_claude, policy=policy) as session:
        turn = await session.send("[[fake: tool=60, mute_interrupt]]")
        await tool_running(turn)
        report = await session.cancel()
        assert report is not None and report.path == "kill" and report.respawned
        assert report.step_ms("sigint_sent") is None and report.trigger == "request"
        kill_sent = report.step_ms("kill_sent")
        assert kill_sent is not None and kill_sent < policy.interrupt_timeout * 1000
        assert (await turn.result())["terminal_reason"] == "cancelled"
        assert strays(session, process_audit) == []
        assert (await (await session.send("next")).result())["subtype"] == "success"


async def test_the_turn_timeout_cancels_through_the_ladder_and_reports(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    policy = attrs.evolve(IN_BAND, turn_timeout=1.0)
    async with open_session(ARGS, claude=fake_claude, policy=policy) as session:
        turn = await session.send("[[fake: tool=60, escapee]]")
        result = await turn.result()  # nobody cancels: the turn timeout does
        assert result["terminal_reason"] == "aborted_tools"  # the CLI's own
        # The next turn starts once the cancel is over: its report is there by then.
        assert (await (await session.send("next")).result())["subtype"] == "success"
        report = session.last_report
        assert report is not None and report.trigger == "turn_timeout"
        assert report.path == "interrupt" and report.processes_killed >= 1
        assert strays(session, process_audit) == []


async def test_the_stall_watchdog_cancels_a_silent_turn(fake_claude: Path, home: Path) -> None:
    policy = attrs.evolve(IN_BAND, stall_timeout=1.0)
    async with open_session(ARGS, claude=fake_claude, policy=policy) as session:
        result = await (await session.send("[[fake: stream=60]]")).result()
        assert result["terminal_reason"] == "aborted_streaming"
        # A tool call of 2 s, twice the stall timeout, is not a stall.
        quiet = await (await session.send("[[fake: tool=2]]")).result()
        assert quiet["subtype"] == "success"
        report = session.last_report
        assert report is not None and report.trigger == "stall" and report.path == "interrupt"


async def test_wedged_cli_is_killed_with_its_whole_tree(
    session: Session, process_audit: str
) -> None:
    turn = await session.send("[[fake: tool=60, escapee, stubborn, deep=3, wedge]]")
    await tool_running(turn)
    report = await session.cancel()
    assert report is not None and report.path == "kill" and report.respawned
    assert report.processes_killed >= 5  # CLI, tool, escapee, stubborn child, the chain
    result = await turn.result()
    assert result["terminal_reason"] == "cancelled"
    assert result["supervisor"] == {"synthesized": True}
    assert strays(session, process_audit) == []
    assert (await (await session.send("still there?")).result())["subtype"] == "success"


async def test_cli_ignoring_both_interrupt_and_sigint_is_killed(session: Session) -> None:
    turn = await session.send("[[fake: tool=60, ignore_interrupt, ignore_sigint]]")
    await tool_running(turn)
    report = await session.cancel()
    assert report is not None and report.path == "kill"
    assert report.step_ms("kill_sent") is not None


async def test_report_timings_follow_the_policy(session: Session) -> None:
    turn = await session.send("[[fake: tool=60, ignore_interrupt, ignore_sigint]]")
    await tool_running(turn)
    report = await session.cancel()
    assert report is not None
    sigint, kill = report.step_ms("sigint_sent"), report.step_ms("kill_sent")
    assert sigint is not None and kill is not None
    assert sigint >= FAST.interrupt_timeout * 1000
    assert kill - sigint >= FAST.sigint_timeout * 1000
    assert report.total_ms >= report.steps[-2].ms
    assert [s.ms for s in report.steps] == sorted(s.ms for s in report.steps)


async def test_crash_mid_turn_gives_a_result_and_the_session_recovers(session: Session) -> None:
    await (await session.send("before")).result()
    result = await (await session.send("[[fake: crash]]")).result()
    assert result["terminal_reason"] == "cli_exited"
    assert "exit code 3" in result["result"]
    after = await (await session.send("after")).result()
    assert after["subtype"] == "success"
    assert "before" in after["fake_history"]


@in_band
async def test_supersede_runs_next_and_queued_turns_keep_their_place(session: Session) -> None:
    running = await session.send("[[fake: tool=60]]")
    await tool_running(running)
    queued = await session.send("queued")
    new = await session.supersede("instead")
    first = await new.result()
    assert (await running.result())["is_error"] is True
    second = await queued.result()
    assert first["fake_history"][-1] == "instead"
    assert second["fake_history"][-2:] == ["instead", "queued"]
    assert session.last_report is not None and session.last_report.path == "interrupt"


async def test_cancel_queued_drops_waiting_turns(session: Session) -> None:
    running = await session.send("[[fake: tool=60]]")
    waiting = [await session.send(f"w{i}") for i in range(2)]
    await tool_running(running)
    await session.cancel(cancel_queued=True)
    for turn in waiting:
        result = await turn.result()
        assert result["terminal_reason"] == "cancelled"
    assert not session.busy


async def test_cancel_with_nothing_running_returns_none(session: Session) -> None:
    assert await session.cancel() is None


async def test_lines_over_the_cap_arrive_truncated_not_fatal(fake_claude: Path, home: Path) -> None:
    """The library hands out parsed frames: of a line over the cap, only its head is read."""
    async with open_session(ARGS, claude=fake_claude, policy=FAST, max_line_bytes=100_000) as s:
        turn = await s.send("[[fake: huge=200000]]")
        frames = [f async for f in turn]
        [truncated] = [f for f in frames if f.get("supervisor") == {"truncated": True}]
        assert truncated["type"] == "assistant"
        assert frames[-1]["type"] == "result"
        big = await s.send("[[fake: huge_result=200000]]")
        result = await big.result()  # an over-long result still ends its turn, once
        assert result["type"] == "result" and result["supervisor"] == {"truncated": True}
        assert result["subtype"] == "success"
        assert (await (await s.send("fine")).result())["result"].endswith("to: fine")


async def test_big_lines_under_the_cap_arrive_whole(session: Session) -> None:
    turn = await session.send("[[fake: huge=3000000]]")
    frames = [f async for f in turn]
    text = frames[1]["message"]["content"][0]["text"]
    assert len(text) == 3_000_000


async def test_garbage_from_the_cli_is_reported(session: Session) -> None:
    frames = [f async for f in await session.send("[[fake: garbage]]")]
    [error] = [f for f in frames if f.get("subtype") == "supervisor_error"]
    assert error["error"]["code"] == "cli_invalid_json"
    assert "not json" in error["error"]["preview"]
    assert frames[-1]["type"] == "result"


async def test_slow_start(fake_claude: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CLAUDE_START_DELAY", "2")
    started = trio.current_time()
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as s:
        assert (await (await s.send("hi")).result())["subtype"] == "success"
        assert trio.current_time() - started >= 2  # the start was slow indeed


async def test_a_session_that_cannot_be_resumed_goes_on_as_a_new_one(
    fake_claude: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = [*ARGS, "--no-session-persistence"]  # the fake, like the real CLI, keeps no transcript
    async with open_session(args, claude=fake_claude, policy=FAST) as s:
        first = await (await s.send("remember this")).result()
        turn = await s.send("[[fake: tool=60, wedge]]")
        await tool_running(turn)
        queued = await s.send("queued")
        report = await s.cancel()
        assert report is not None and report.path == "kill" and report.respawned
        assert report.step_ms("started_fresh") is not None
        assert (await turn.result())["is_error"] is True
        after = await queued.result()
        assert after["subtype"] == "success"
        assert after["fake_history"] == ["queued"]  # a new session: the history is gone
        assert after["session_id"] != first["session_id"]
        assert s.sessions_lost == 1
        assert "history is lost" in caplog.text and "No conversation found" in caplog.text
        assert (await (await s.send("more")).result())["fake_history"] == ["queued", "more"]


async def test_when_the_new_session_cannot_start_either_the_session_fails(
    fake_claude: Path, home: Path
) -> None:
    async with open_session(
        [*ARGS, "--no-session-persistence"], claude=fake_claude, policy=FAST
    ) as s:
        turn = await s.send("[[fake: tool=60, wedge]]")
        await tool_running(turn)
        # From now on the CLI cannot start at all, resumed or not.
        await trio.Path(fake_claude).write_text(
            '#!/bin/sh\necho "Error: a broken install" >&2\nexit 1\n'
        )
        queued = await s.send("queued")
        assert await s.cancel() is None  # the session failed instead of coming back
        result = await queued.result()
        assert result["terminal_reason"] == "supervisor_failed"
        assert "a broken install" in result["result"]
        with pytest.raises(supervisor.SessionFailedError, match="new session"):
            await s.send("more")


async def test_content_the_cli_cannot_read_is_refused_at_once(session: Session) -> None:
    running = await session.send("[[fake: tool=2]]")
    await tool_running(running)
    for bad in (123, [1, 2, 3], [{"type": "text"}], ["s"], [None], {"type": "text", "text": "x"}):
        with pytest.raises(ValueError, match="content"):
            await session.send(cast(Any, bad))
        with pytest.raises(ValueError, match="nothing was sent"):
            await session.supersede(cast(Any, bad))
    assert (await running.result())["subtype"] == "success"  # no supersede cancelled it
    assert session.last_report is None
    after = await (await session.send([{"type": "future_block", "x": 1}])).result()
    assert after["fake_history"] == ["[[fake: tool=2]]", ""]  # unknown block types pass


async def test_a_turn_the_cli_never_starts_does_not_hold_the_queue(
    fake_claude: Path, home: Path
) -> None:
    policy = attrs.evolve(FAST, start_timeout=3.0)
    async with open_session(ARGS, claude=fake_claude, policy=policy) as s:
        stuck = await s.send("[[fake: silent]]")
        behind = await s.send("behind")
        frames = [f async for f in stuck]
        [error] = [f for f in frames if f.get("subtype") == "supervisor_error"]
        assert error["error"]["code"] == "turn_not_started"
        assert frames[-1]["terminal_reason"] == "turn_not_started"
        assert (await behind.result())["subtype"] == "success"
        assert s.last_report is not None and s.last_report.respawned


async def test_cli_that_does_not_exist(home: Path, tmp_path: Path) -> None:
    with pytest.raises(supervisor.SessionFailedError, match="No such file"):
        async with open_session(ARGS, claude=tmp_path / "nope"):
            pass


async def test_no_claude_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(supervisor.CliNotFoundError, match="install Claude Code"):
        async with open_session(ARGS):
            pass


async def test_leaving_the_block_during_a_wedged_turn_leaves_nothing(
    fake_claude: Path, home: Path
) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as s:
        turn = await s.send("[[fake: tool=60, escapee, stubborn, wedge]]")
        await tool_running(turn)
    assert (await turn.result())["terminal_reason"] == "cancelled"
    # The process audit fixture fails this test if anything of the tree survived.


async def test_cancel_from_another_task_while_frames_stream(session: Session) -> None:
    turn = await session.send("[[fake: tool=60]]")
    reports = []
    async with trio.open_nursery() as nursery:

        async def canceller() -> None:
            reports.append(await session.cancel())

        async for frame in turn:
            if is_tool_use(frame):
                nursery.start_soon(canceller)
    assert reports[0] is not None and (await turn.result())["is_error"]


async def test_a_nonsense_line_cap_is_refused_at_once(fake_claude: Path) -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        async with open_session(ARGS, claude=fake_claude, max_line_bytes=0):
            pass


async def test_send_after_close_is_refused(fake_claude: Path, home: Path) -> None:
    async with open_session(ARGS, claude=fake_claude, policy=FAST) as s:
        pass
    with pytest.raises(supervisor.SessionClosedError):
        await s.send("late")


async def test_env_and_cwd_reach_the_cli(fake_claude: Path, home: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    other_home = tmp_path / "other-home"  # not the HOME the test already runs with
    other_home.mkdir()
    env = {**os.environ, "HOME": str(other_home)}
    async with open_session(ARGS, claude=fake_claude, policy=FAST, cwd=cwd, env=env) as s:
        turn = await s.send("where?")
        frames = [f async for f in turn]
        assert frames[0]["cwd"] == str(cwd)
        # The fake keeps its transcript under $HOME: the CLI saw the HOME it was given.
        transcript = Path(".claude", "fake-sessions", f"{s.session_id}.jsonl")
        assert (other_home / transcript).is_file()
        assert not (home / transcript).exists()


async def test_many_sessions_cancelled_at_once_all_end_in_band(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    """A turn that leaves nothing behind costs its cancel no thread and no sleep: cancels
    of many sessions at once must not queue behind one another and miss the in-band
    deadline (a generous one here, that only a queue of slow cleanups could miss)."""
    policy = attrs.evolve(IN_BAND, sigint_timeout=2.0, kill_timeout=0.5)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(open_session(ARGS, claude=fake_claude, policy=policy))
            for _ in range(24)
        ]
        turns = [await s.send("[[fake: tool=60]]") for s in sessions]
        for turn in turns:
            await tool_running(turn)
        reports: list[Any] = []

        async def cancel(s: Session) -> None:
            reports.append(await s.cancel())

        async with trio.open_nursery() as nursery:
            for s in sessions:
                nursery.start_soon(cancel, s)
        assert [r.path for r in reports] == ["interrupt"] * len(sessions)
        for turn in turns:
            assert (await turn.result())["terminal_reason"] == "aborted_tools"
