"""The session pool against the bundled fake CLI: admission, eviction, resume, isolation,
persistence, moving chats, shutdown."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import stray_processes
from wrapper_harness import is_tool_use

import supervisor
from supervisor import (
    ChatEvicted,
    ChatExport,
    ChatFailed,
    ChatStarted,
    EscalationPolicy,
    PoolEvent,
    QueueFullError,
    SessionPool,
    TranscriptLost,
    Turn,
)

ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
FAST = EscalationPolicy(interrupt_timeout=0.5, sigint_timeout=2.0, kill_timeout=0.5)
#: For cancels meant to end in-band: deadlines a loaded machine cannot miss (a stopped
#: CLI is still killed at once).
IN_BAND = EscalationPolicy(
    interrupt_timeout=30.0, interrupt_ack_timeout=30.0, sigint_timeout=2.0, kill_timeout=0.5
)
#: Generous: the machine running the tests may be busy.
DEADLINE = 120


def fake_transcript(config_dir: Path, cwd: str, session_id: str) -> Path:
    """Where the fake CLI keeps transcripts (the real CLI's layout is under projects/)."""
    return config_dir / "fake-sessions" / f"{session_id}.jsonl"


class Recorder:
    """Collects the pool's events, and the number of live CLIs each time one starts."""

    def __init__(self) -> None:
        self.events: list[PoolEvent] = []
        self.live_at_start: list[int] = []
        self.pool: SessionPool | None = None
        self._changed = trio.Event()

    def __call__(self, event: PoolEvent) -> None:
        self.events.append(event)
        if isinstance(event, ChatStarted) and self.pool is not None:
            self.live_at_start.append(self.pool.stats.live)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, kind: type[PoolEvent], **fields: Any) -> PoolEvent:
        with trio.fail_after(DEADLINE):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and all(
                        getattr(event, k) == v for k, v in fields.items()
                    ):
                        return event
                await self._changed.wait()


@asynccontextmanager
async def open_pool(
    fake_claude: Path, recorder: Recorder | None = None, **options: Any
) -> AsyncIterator[SessionPool]:
    options.setdefault("policy", FAST)
    async with SessionPool(
        ARGS,
        claude=fake_claude,
        transcript_path=fake_transcript,
        on_event=recorder,
        **options,
    ) as pool:
        if recorder is not None:
            recorder.pool = pool
        yield pool


async def answer(turn: Turn) -> dict[str, Any]:
    with trio.fail_after(DEADLINE):
        return await turn.result()


async def until_tool_runs(turn: Turn) -> None:
    with trio.fail_after(DEADLINE):
        async for frame in turn:
            if is_tool_use(frame):
                return
    raise AssertionError("the turn ended before its tool ran")


async def test_more_chats_than_max_active_all_get_their_answers(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    recorder = Recorder()
    async with open_pool(fake_claude, recorder, max_active=2) as pool:
        turns = {f"chat-{i}": await pool.send(f"chat-{i}", f"hello {i}") for i in range(6)}
        for key, turn in turns.items():
            result = await answer(turn)
            assert result["result"] == f"reply #1 to: hello {key[5:]}"
            assert result["session_id"] == pool.session_id(key)
        assert len(recorder.live_at_start) == 6
        assert max(recorder.live_at_start) <= 2
        assert pool.stats.started == 6 and pool.stats.evictions >= 4
    assert stray_processes(process_audit, []) == []


async def test_an_evicted_chat_resumes_transparently(fake_claude: Path, home: Path) -> None:
    recorder = Recorder()
    async with open_pool(fake_claude, recorder, max_active=1) as pool:
        first = await answer(await pool.send("a", "remember the word tangerine"))
        session_id = pool.session_id("a")
        assert first["session_id"] == session_id
        await answer(await pool.send("b", "hello"))
        await recorder.wait_for(ChatEvicted, key="a", reason="lru")
        again = await answer(await pool.send("a", "what was the word?"))
        assert again["session_id"] == session_id == pool.session_id("a")
        assert again["fake_history"] == ["remember the word tangerine", "what was the word?"]
        assert pool.stats.resumes == 1 and pool.stats.evictions >= 2


async def test_an_idle_cli_is_closed_and_the_chat_resumes(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    recorder = Recorder()
    async with open_pool(fake_claude, recorder, idle_timeout=0.5) as pool:
        await answer(await pool.send("a", "one"))
        await recorder.wait_for(ChatEvicted, key="a", reason="idle")
        assert pool.stats.live == 0 and pool.stats.idle_closes == 1
        assert stray_processes(process_audit, []) == []  # the CLI and its helper are gone
        result = await answer(await pool.send("a", "two"))
        assert result["fake_history"] == ["one", "two"]


async def test_a_burst_on_one_chat_does_not_starve_the_others(
    fake_claude: Path, home: Path
) -> None:
    finished: list[str] = []

    async def collect(name: str, turn: Turn) -> None:
        await answer(turn)
        finished.append(name)

    async with open_pool(fake_claude, max_active=1, max_queued=10) as pool:
        burst = [await pool.send("busy", f"message {i}") for i in range(6)]
        late = [await pool.send("b", "hi from b"), await pool.send("c", "hi from c")]
        async with trio.open_nursery() as nursery:
            for i, turn in enumerate(burst):
                nursery.start_soon(collect, f"busy-{i}", turn)
            nursery.start_soon(collect, "b", late[0])
            nursery.start_soon(collect, "c", late[1])
    # First come, first served: b and c asked before the burst's second turn was run.
    assert finished[:3] == ["busy-0", "b", "c"]
    assert finished[3:] == [f"busy-{i}" for i in range(1, 6)]


async def test_a_full_queue_raises_and_drops_nothing(fake_claude: Path, home: Path) -> None:
    async with open_pool(fake_claude, max_queued=2, policy=IN_BAND) as pool:
        running = await pool.send("a", "[[fake: tool=60]]")
        await until_tool_runs(running)
        queued = [await pool.send("a", "second"), await pool.send("a", "third")]
        with pytest.raises(QueueFullError) as caught:
            await pool.send("a", "fourth")
        assert caught.value.key == "a" and caught.value.limit == 2
        assert "'a'" in str(caught.value) and "2" in str(caught.value)
        assert pool.stats.queued == {"a": 2} and pool.stats.rejected == 1
        # Other chats have queues of their own.
        other = await pool.send("b", "hello")
        report = await pool.cancel("a")
        assert report is not None and report.path == "interrupt"
        assert (await answer(running))["terminal_reason"] == "aborted_tools"
        results = [await answer(turn) for turn in queued]
        assert [r["result"] for r in results] == ["reply #2 to: second", "reply #3 to: third"]
        assert (await answer(other))["subtype"] == "success"
        assert pool.stats.cancels_by_path == {"interrupt": 1}


async def test_a_wedged_or_crashing_chat_never_delays_the_others(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    async with open_pool(fake_claude, max_active=5, policy=IN_BAND) as pool:
        wedged = await pool.send("wedged", "[[fake: tool=60, wedge]]")
        await until_tool_runs(wedged)
        stalled = await pool.send("stalled", "[[fake: stream=60]]")
        crashed = await pool.send("crashing", "[[fake: crash]]")
        # The wedged CLI stays wedged while the others run turn after turn.
        for i in range(3):
            turns = [await pool.send(key, f"turn {i}") for key in ("b", "c")]
            for turn in turns:
                assert (await answer(turn))["result"] == f"reply #{i + 1} to: turn {i}"
        assert (await answer(crashed))["terminal_reason"] == "cli_exited"
        assert (await answer(await pool.send("crashing", "again")))["subtype"] == "success"
        assert not wedged.done and not stalled.done
        report = await pool.cancel("stalled")
        assert report is not None and report.path == "interrupt"
        assert (await answer(stalled))["terminal_reason"] == "aborted_streaming"
        report = await pool.cancel("wedged")
        assert report is not None and report.path == "kill" and report.respawned
        assert (await answer(wedged))["terminal_reason"] == "cancelled"
        after = await answer(await pool.send("wedged", "still there?"))
        assert after["subtype"] == "success"
        assert pool.stats.cancels_by_path == {"interrupt": 1, "kill": 1}
    assert stray_processes(process_audit, []) == []


async def test_a_restarted_pool_resumes_its_chats(fake_claude: Path, home: Path) -> None:
    store = home / "pool.db"
    async with open_pool(fake_claude, store=store) as pool:
        await answer(await pool.send("a", "remember the word tangerine"))
        pool.configure("b", cwd=home)
        await answer(await pool.send("b", "b's first"))
        ids = {key: pool.session_id(key) for key in ("a", "b")}
    async with open_pool(fake_claude, store=store) as pool:
        assert sorted(pool.keys()) == ["a", "b"]
        assert {key: pool.session_id(key) for key in ("a", "b")} == ids
        result = await answer(await pool.send("a", "what was the word?"))
        assert result["session_id"] == ids["a"]
        assert result["fake_history"] == ["remember the word tangerine", "what was the word?"]
        b = await answer(await pool.send("b", "b's second"))
        assert b["fake_history"] == ["b's first", "b's second"]
        assert pool.stats.resumes == 2 and pool.stats.started == 0


async def test_a_lost_transcript_starts_a_new_session_and_says_so(
    fake_claude: Path, home: Path
) -> None:
    store = home / "pool.db"
    async with open_pool(fake_claude, store=store) as pool:
        await answer(await pool.send("a", "first"))
        old = pool.session_id("a")
    assert old is not None
    transcript = home / ".claude" / "fake-sessions" / f"{old}.jsonl"
    transcript.unlink()
    recorder = Recorder()
    async with open_pool(fake_claude, recorder, store=store) as pool:
        turn = await pool.send("a", "second")
        frames = [frame async for frame in turn]
        result = frames[-1]
        assert result["subtype"] == "success" and result["fake_history"] == ["second"]
        # The failed resume is not part of the turn: it looks like a fresh session's.
        assert [f["type"] for f in frames] == ["system", "assistant", "result"]
        new = pool.session_id("a")
        assert new != old and result["session_id"] == new
        lost = await recorder.wait_for(TranscriptLost, key="a")
        assert isinstance(lost, TranscriptLost)
        assert (lost.old_session_id, lost.new_session_id) == (old, new)
        assert "No conversation found" in lost.message
        stats = pool.stats
        assert (stats.lost_transcripts, stats.failed_resumes, stats.resumes) == (1, 1, 1)
    async with open_pool(fake_claude, store=store) as pool:
        assert pool.session_id("a") == new  # the new session is what is remembered


async def test_closing_the_pool_leaves_no_process_and_answers_every_turn(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    async with open_pool(fake_claude, max_active=3) as pool:
        running = [await pool.send(key, "[[fake: tool=60]]") for key in ("a", "b")]
        wedged = await pool.send("c", "[[fake: tool=60, wedge, escapee]]")
        waiting = await pool.send("d", "never started")
        queued = await pool.send("a", "behind the tool")
        for turn in [*running, wedged]:
            await until_tool_runs(turn)
    assert stray_processes(process_audit, []) == []
    for turn in [*running, wedged, waiting, queued]:
        assert turn.done
        assert (await turn.result())["is_error"] is True
    assert (await waiting.result())["terminal_reason"] == "cancelled"
    assert "pool was closed" in (await queued.result())["result"]
    with pytest.raises(supervisor.SessionClosedError):
        await pool.send("a", "too late")


async def test_two_hundred_chats_in_one_pool(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    recorder = Recorder()
    async with open_pool(fake_claude, recorder, max_active=8) as pool:
        turns = [await pool.send(f"chat-{i}", f"hello {i}") for i in range(200)]
        results = [await answer(turn) for turn in turns]
        assert [r["result"] for r in results] == [f"reply #1 to: hello {i}" for i in range(200)]
        assert len({r["session_id"] for r in results}) == 200
        assert max(recorder.live_at_start) <= 8
        # A few of them come back, after their CLIs were evicted.
        again = [await pool.send(f"chat-{i}", "again") for i in range(0, 200, 50)]
        for turn in again:
            assert (await answer(turn))["fake_history"][-1] == "again"
        assert pool.stats.resumes == 4
    assert pool.stats.live == 0
    assert stray_processes(process_audit, []) == []


async def test_prewarm_starts_the_cli_before_the_first_turn(fake_claude: Path, home: Path) -> None:
    async with open_pool(fake_claude, max_active=1) as pool:
        assert await pool.prewarm("a") is True
        assert pool.stats.live == 1 and pool.stats.started == 1
        assert await pool.prewarm("b") is False  # no free slot: a pre-warm never evicts
        result = await answer(await pool.send("a", "hello"))
        assert result["session_id"] == pool.session_id("a")
        assert pool.stats.started == 1  # the pre-warmed CLI took the turn


async def test_no_cli_starts_below_the_memory_floor(
    fake_claude: Path, home: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_pool(fake_claude, min_available_memory=2**62) as pool:
        turn = await pool.send("a", "hello")
        with trio.move_on_after(60):
            await turn.result()
        assert not turn.done
        assert pool.stats.live == 0 and pool.stats.waiting == 1
    assert (await turn.result())["terminal_reason"] == "cancelled"


async def test_supersede_and_cancel_queued(fake_claude: Path, home: Path) -> None:
    async with open_pool(fake_claude) as pool:
        running = await pool.send("a", "[[fake: tool=60]]")
        await until_tool_runs(running)
        queued = await pool.send("a", "queued")
        instead = await pool.supersede("a", "instead")
        assert (await answer(running))["terminal_reason"] == "aborted_tools"
        assert (await answer(instead))["result"] == "reply #2 to: instead"
        assert (await answer(queued))["result"] == "reply #3 to: queued"
        assert pool.stats.cancels_by_path == {"interrupt": 1}

        again = await pool.send("a", "[[fake: tool=60]]")
        await until_tool_runs(again)
        dropped = await pool.send("a", "dropped")
        report = await pool.cancel("a", cancel_queued=True)
        assert report is not None
        assert (await answer(dropped))["terminal_reason"] == "cancelled"
        assert pool.stats.cancels_by_path == {"interrupt": 2}
        # By trigger too, once reports say what asked for the cancel.
        by_trigger, trigger = pool.stats.cancels_by_trigger, getattr(report, "trigger", None)
        if trigger is None:
            assert by_trigger == {}
        else:
            assert sum(by_trigger.values()) == 2 and by_trigger[str(trigger)] >= 1
        assert await pool.cancel("a") is None  # nothing runs


async def test_a_chat_moves_to_another_host(fake_claude: Path, home: Path, tmp_path: Path) -> None:
    async with open_pool(fake_claude) as pool:
        turn = await pool.send("a", "remember the word tangerine")
        with pytest.raises(supervisor.ChatBusyError, match="'a'"):
            await pool.export_chat("a")  # a turn is waiting: the transcript is not final
        await answer(turn)
        exported = await pool.export_chat("a")
        assert pool.stats.live == 0  # closed first, so the transcript is complete
        await pool.forget("a")
        assert pool.session_id("a") is None
    moved = ChatExport.from_json(exported.to_json())
    assert moved == exported
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    env = {**os.environ, "HOME": str(other_home)}
    async with open_pool(fake_claude, env=env) as pool:
        await pool.import_chat(moved)
        assert (other_home / ".claude" / "fake-sessions" / f"{moved.session_id}.jsonl").exists()
        result = await answer(await pool.send("a", "what was the word?"))
        assert result["session_id"] == moved.session_id
        assert result["fake_history"] == ["remember the word tangerine", "what was the word?"]


def test_the_claude_transcript_path_mangles_the_working_directory() -> None:
    path = supervisor.claude_transcript_path(Path("/cfg"), "/home/me/my.project_x", "s1")
    assert path == Path("/cfg/projects/-home-me-my-project-x/s1.jsonl")


async def test_arguments_that_choose_the_session_are_refused(fake_claude: Path) -> None:
    with pytest.raises(ValueError, match="--resume"):
        SessionPool([*ARGS, "--resume", "x"], claude=fake_claude)
    async with SessionPool(ARGS, claude=fake_claude) as pool:
        with pytest.raises(ValueError, match="--session-id"):
            pool.configure("a", claude_args=[*ARGS, "--session-id=x"])


async def test_a_cli_that_cannot_start_fails_the_turn_not_the_pool(
    tmp_path: Path, home: Path
) -> None:
    broken = tmp_path / "broken-claude"
    broken.write_text('#!/bin/sh\necho "boom: no such model" >&2\nexit 2\n')
    broken.chmod(0o755)
    recorder = Recorder()
    async with open_pool(broken, recorder) as pool:
        for text in ("first", "second"):
            result = await answer(await pool.send("a", text))
            assert result["is_error"] is True
            assert result["terminal_reason"] == "supervisor_failed"
            assert "boom: no such model" in result["result"]
        failed = await recorder.wait_for(ChatFailed, key="a")
        assert isinstance(failed, ChatFailed) and "boom" in failed.message
