"""Randomized fault injection through the real executable, the fake CLI and real processes.

Where tests/test_properties.py runs thousands of sequences against a model of the CLI,
this runs fewer, slower ones against the real thing: the wrapper over pipes, the fake
CLI misbehaving as each turn's directives say, real tool processes (deep trees, `setsid`
escapees, children ignoring SIGTERM, fork-and-exit chains), SIGINTs to the wrapper,
cancels and supersedes at random moments, turns the CLI never starts, content it cannot
read, a parent that stops reading for a while, lines over the cap. Afterwards: every user
frame got exactly one result, nothing was merged, nothing unreadable was forwarded, every
cancel ended within its deadlines, no tool process survived, and the wrapper exits 0 at
end of input. `HYPOTHESIS_PROFILE=long` runs many more.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import trio
from conftest import cli_of, stray_processes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wrapper_harness import Frame, Wrapper, is_result, supervisor_argv, user

EXAMPLES = 12 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 200

# Every tool runs long, so a turn with a tool only ends through a cancel: afterwards no
# tool process may be left at all.
directives = st.sampled_from(
    [
        "",
        "tool=30",
        "tool=30, escapee",
        "tool=30, stubborn, deep=3",
        "tool=30, ignore_interrupt",
        "tool=30, mute_interrupt, escapee",
        "tool=30, ignore_interrupt, ignore_sigint",
        "tool=30, wedge, escapee, stubborn",
        "tool=30, forkchain=3000",
        "tool=30, wedge, forkchain=3000",
        "stream=30",
        "crash",
        "garbage",
        "silent",
        "huge=2000000",  # floods the pipe, so that a stalled reader matters
        "huge_result=2000000",  # over the --max-line-bytes below: relayed in pieces
    ]
)
#: Content the real CLI neither answers nor fails on: the wrapper must never forward it.
malformed = st.sampled_from([123, [1, 2, 3], [{"type": "text"}], ["s"], [None]])
steps = st.one_of(
    st.tuples(st.just("send"), directives),
    st.tuples(st.just("supersede"), directives),
    st.tuples(st.just("malformed"), malformed),
    st.tuples(st.just("malformed supersede"), malformed),
    st.tuples(st.just("cancel"), st.booleans()),
    st.tuples(st.just("sigint"), st.none()),
    st.tuples(st.just("pause"), st.sampled_from([0.05, 0.3, 1.0])),
    st.tuples(st.just("stall"), st.sampled_from([0.5, 2.0])),  # the parent stops reading
)

FLAGS = [
    "--interrupt-timeout", "0.3", "--sigint-timeout", "1", "--kill-timeout", "0.3",
    "--start-timeout", "3",
]  # fmt: skip
FLAGS += ["--max-line-bytes", str(1024 * 1024)]
#: A cancel must end within the ladder's deadlines plus a generous respawn allowance.
CANCEL_BOUND_MS = (0.3 + 1 + 0.3 + 5 + 10) * 1000


class Session:
    def __init__(self, wrapper: Wrapper) -> None:
        self.wrapper = wrapper
        self.sent = 0  # user turns sent (supersede_turn frames included)

    def results(self) -> list[Frame]:
        return [f for f in self.wrapper.frames if is_result(f)]

    async def drain(self, seconds: float) -> None:
        """Reads whatever comes within `seconds` (the pace of a real parent)."""
        with trio.move_on_after(seconds):
            while await self.wrapper.next_frame() is not None:
                pass

    async def step(self, kind: str, arg: object) -> None:
        w = self.wrapper
        if kind in ("send", "supersede"):
            self.sent += 1
            text = f"turn {self.sent} [[fake: {arg}]]" if arg else f"turn {self.sent}"
            frame = user(text) if kind == "send" else {"type": "supersede_turn", "content": text}
            await w.send(frame)
        elif kind.startswith("malformed"):
            self.sent += 1
            if kind == "malformed":
                await w.send({"type": "user", "message": {"role": "user", "content": arg}})
            else:
                await w.send({"type": "supersede_turn", "content": arg})
        elif kind == "cancel":
            await w.send({"type": "cancel_turn", "cancel_queued": arg})
        elif kind == "sigint":
            w.signal(signal.SIGINT)
        elif kind == "stall":
            assert isinstance(arg, float)
            await trio.sleep(arg)  # reading nothing while the CLI may flood: that is the step
        await self.drain(arg if kind == "pause" and isinstance(arg, float) else 0.05)

    async def finish(self) -> None:
        """Cancels whatever is stuck until every turn has its result."""
        for _ in range(3 * self.sent + 3):
            if len(self.results()) >= self.sent:
                break
            await self.wrapper.send({"type": "cancel_turn"})
            await self.drain(3.0)
        assert len(self.results()) == self.sent, [f.get("type") for f in self.wrapper.frames]


def strays(wrapper: Wrapper, token: str) -> list[psutil.Process]:
    """Processes of the test other than the wrapper, its helper and the CLI."""
    mine = psutil.Process(wrapper.process.pid)
    keep = {mine.pid}
    for helper in mine.children():
        keep.update((helper.pid, cli_of(helper).pid))
    return stray_processes(token, keep)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(steps, min_size=1, max_size=8))
async def test_random_sessions_keep_every_promise(
    fake_claude: Path, home: Path, process_audit: str, script: list[tuple[str, object]]
) -> None:
    wrapper = await Wrapper.start(supervisor_argv(fake_claude, *FLAGS))
    session = Session(wrapper)
    try:
        # Start as an SDK does, so the wrapper is up before the first SIGINT (Python's
        # own start-up, before any of the wrapper's code runs, cannot ignore it).
        initialize = {"subtype": "initialize", "hooks": None}
        await wrapper.send({"type": "control_request", "request_id": "i", "request": initialize})
        await wrapper.expect(lambda f: f.get("type") == "control_response")
        for kind, arg in script:
            await session.step(kind, arg)
        await session.finish()
        results = session.results()
        texts = [r["fake_history"][-1] for r in results if "fake_history" in r]
        assert not any("\n" in t for t in texts), "turns were merged"
        assert len(texts) == len(set(texts)), "a turn ran twice"
        # The fake reads unreadable content as "": none of it may have reached the CLI.
        assert all(t.startswith("turn ") for r in results for t in r.get("fake_history", []))
        for frame in wrapper.frames:
            if frame.get("subtype") == "supervisor_cancel" and frame["report"]:
                assert frame["report"]["total_ms"] < CANCEL_BOUND_MS, frame
        await session.drain(0.2)
        assert strays(wrapper, process_audit) == []
        await wrapper.close_stdin()
        await wrapper.read_to_end(30)
        assert await wrapper.wait() == 0
        assert len(session.results()) == session.sent
    finally:
        await wrapper.kill()


@pytest.mark.parametrize("attempt", range(3))
async def test_a_fork_chain_does_not_outlive_the_kill_of_a_wedged_cli(
    fake_claude: Path, home: Path, process_audit: str, attempt: int
) -> None:
    """The case the random sessions found: the CLI stops itself while its tool's fork
    chain runs, so the cancel kills the whole tree while the hub is full of the
    chain's exiting links; no link may survive into the respawned session."""
    wrapper = await Wrapper.start(supervisor_argv(fake_claude, *FLAGS))
    session = Session(wrapper)
    try:
        await session.step("send", "tool=30, wedge, forkchain=3000")
        await session.finish()
        cancels = [f for f in wrapper.frames if f.get("subtype") == "supervisor_cancel"]
        assert [f["report"]["path"] for f in cancels] == ["kill"]
        assert strays(wrapper, process_audit) == []
        await wrapper.close_stdin()
        await wrapper.read_to_end(30)
        assert await wrapper.wait() == 0
    finally:
        await wrapper.kill()
