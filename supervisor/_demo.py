"""`claude-supervisor demo`: a scripted session that shows every rung of the ladder.

With no `--claude`, it runs the bundled fake CLI (no account, no network), told by
directives in each message how to misbehave. With `--claude PATH` it runs a real CLI
(which needs its account or API settings in the environment) and provokes the same
rungs from outside: a deadline shorter than the CLI's answer for SIGINT, and SIGSTOP
for a wedged CLI. The wedged CLI shows the adaptive ladder: a stopped CLI can act on
neither the interrupt nor SIGINT, so the supervisor kills it at once.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import trio

from ._errors import SupervisorError
from ._policy import EscalationPolicy
from ._report import CancelReport
from ._session import Session, Turn, open_session
from .testing import STREAM_JSON_ARGS

CLAUDE_ARGS = list(STREAM_JSON_ARGS)
LONG_TOOL = 'python3 -c "import time; time.sleep(120)"'
#: Asked of a real model; `supervisor.testing.fake_api` understands it too.
LONG_TOOL_REQUEST = f"Use the Bash tool to run exactly this command: {LONG_TOOL}"


#: What each step of a cancel's timeline means, printed next to it.
STEP_MEANINGS = {
    "interrupt_sent": "the in-band interrupt (a control_request) went to the CLI",
    "interrupt_answered": "the CLI acknowledged the interrupt (not the end of the turn)",
    "result": "the turn's result arrived: the turn is over",
    "sigint_sent": "no result in time: SIGINT to the CLI",
    "exited": "the CLI exited",
    "kill_sent": "still no result: SIGKILL to the CLI and its whole process tree",
    "tree_killed": "the CLI and every process under it are gone",
    "turn_processes_killed": "what the turn's tools left running is killed",
    "respawned": "a new CLI started with --resume <session id>",
    "ready": "the session takes the next turn",
}

#: What a result's terminal_reason says about who ended the turn.
REASON_MEANINGS = {
    "completed": "the turn finished",
    "aborted_tools": "the CLI's own result: it stopped the turn during a tool call",
    "aborted_streaming": "the CLI's own result: it stopped the model's answer",
    "cancelled": "written by the supervisor: the CLI was killed before it wrote one",
}

#: Where the fake CLI's own stderr goes, so it can be shown indented at the right place
#: instead of landing in the middle of the output.
_stderr_log: Path | None = None
_stderr_seen = 0


def _say(text: str = "") -> None:
    _show_cli_stderr()
    print(text, flush=True)


def _show_cli_stderr() -> None:
    """Print, indented, what the fake CLI wrote on stderr since the last look."""
    global _stderr_seen
    if _stderr_log is None:
        return
    try:
        with _stderr_log.open("rb") as log:
            log.seek(_stderr_seen)
            new = log.read()
    except OSError:
        return
    complete = new[: new.rfind(b"\n") + 1]
    _stderr_seen += len(complete)
    for line in complete.decode(errors="replace").splitlines():
        print(f"    (the CLI's stderr: {line})", flush=True)


def _summary(frame: Mapping[str, Any]) -> str:
    kind = frame.get("type")
    if kind == "assistant":
        parts = []
        for block in frame.get("message", {}).get("content", []):
            if block.get("type") == "text":
                parts.append(repr(_short(block.get("text", ""))))
            elif block.get("type") == "tool_use":
                parts.append(f"tool_use {block.get('name')}")
        return "assistant " + ", ".join(parts)
    if kind == "result":
        reason = frame.get("terminal_reason", "-")
        errors = frame.get("errors")
        text = frame.get("result") or (errors[0] if isinstance(errors, list) and errors else "")
        meaning = REASON_MEANINGS.get(str(reason))
        return f"result {frame.get('subtype')} ({reason}{': ' + meaning if meaning else ''})" + (
            f": {_short(str(text))!r}" if text else ""
        )
    subtype = frame.get("subtype")
    return f"{kind}/{subtype}" if subtype else str(kind)


def _short(text: str, width: int = 70) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder="...")


def _timeline(report: CancelReport | None, killed: str) -> None:
    if report is None:
        _say("    nothing was running")
        return
    _say(
        f"    ended by: {report.path}   trigger: {report.trigger}   "
        f"total: {report.total_ms:.0f} ms   "
        f"respawned: {'yes' if report.respawned else 'no'}   "
        f"processes killed: {report.processes_killed}"
    )
    for step in report.steps:
        _say(f"    {step.ms:>9.1f} ms  {step.name:<22} {STEP_MEANINGS.get(step.name, '')}")
    if report.processes_killed == 0:
        _say("    killed: nothing was left to kill")
    else:
        _say(f"    killed: {killed}")


async def _until_tool_runs(turn: Turn) -> None:
    async for frame in turn:
        _say(f"    <- {_summary(frame)}")
        blocks = frame.get("message", {}).get("content", []) if frame.get("type") else []
        if frame.get("type") == "assistant" and any(
            isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks
        ):
            await trio.sleep(0.3)  # let the tool's processes start: there is no frame for it
            return


async def _turn(session: Session, text: str) -> Mapping[str, Any]:
    _say(f"    -> {_short(text)!r}")
    turn = await session.send(text)
    async for frame in turn:
        _say(f"    <- {_summary(frame)}")
    return await turn.result()


async def _cancel_scene(
    session: Session,
    text: str,
    *,
    wedge: bool = False,
    killed: str = "the processes the turn's tools left running",
) -> None:
    _say(f"    -> {_short(text)!r}")
    turn = await session.send(text)
    await _until_tool_runs(turn)
    if wedge and session.cli_pid is not None:
        os.kill(session.cli_pid, signal.SIGSTOP)
        await _until_stopped(session.cli_pid)
        _say("    (the CLI is stopped with SIGSTOP: it answers nothing, SIGINT does nothing)")
    _say("    cancel!")
    report = await session.cancel()
    result = await turn.result()
    _say(f"    <- {_summary(result)}")
    _timeline(report, killed)


async def _until_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously; the scene is about a CLI already stopped."""
    with trio.move_on_after(2):
        while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
            await trio.sleep(0.005)


def _scene(title: str, why: str) -> None:
    """A section's title, and one line on what is about to happen and why."""
    _say()
    _say(f"== {title}")
    _say(f"   {why}")


async def run_demo(claude: str | None) -> int:
    global _stderr_log
    _stderr_log = None  # set by _fake_claude_shim when the fake runs
    with tempfile.TemporaryDirectory(prefix="claude-supervisor-demo-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        env = dict(os.environ)
        fake = claude is None
        if fake:
            claude = str(_fake_claude_shim(root))
            env["HOME"] = str(root)  # the fake keeps its transcripts under $HOME/.claude
        assert claude is not None
        policy = EscalationPolicy(interrupt_timeout=1.0, sigint_timeout=3.0, kill_timeout=1.0)
        _say(f"claude-supervisor demo: {'the bundled fake CLI' if fake else claude}")
        _say(f"policy: {policy}")
        _say("One supervised session: turns go to the CLI (->), frames come back (<-), and each")
        _say("cancel climbs the ladder (in-band interrupt, SIGINT, kill of the whole tree,")
        _say("respawn with --resume) only as far as it must. Timelines: ms since the cancel.")
        try:
            async with open_session(
                CLAUDE_ARGS, claude=claude, policy=policy, cwd=work, env=env
            ) as session:
                await _script(session, fake)
                _say()
                _say(f"session {session.session_id}: still the same session, ready for more.")
            if not fake:
                await _real_sigint_scene(claude, work, env)
        except SupervisorError as exc:
            _say(f"claude-supervisor demo: {exc}")
            return 1
    return 0


async def _script(session: Session, fake: bool) -> None:
    if fake:
        tool = "Run a long tool. [[fake: tool=120]]"
        ignores = "Run a long tool, and ignore interrupts. [[fake: tool=120, ignore_interrupt]]"
        wedged = (
            "Run a tool that leaves an escaped grandchild and a child that ignores SIGTERM, "
            "then wedge. [[fake: tool=120, escapee, stubborn, wedge]]"
        )
        wedged_killed = (
            "the wedged CLI, its tool, the tool's child that ignores SIGTERM, and the "
            "grandchild that escaped with setsid (re-parented, it is still found)"
        )
    else:
        tool = LONG_TOOL_REQUEST
        wedged = tool
        wedged_killed = "the stopped CLI and its tool's processes (the shell and python3)"
    _scene("1. a turn", "An ordinary turn first, to show that frames pass through unchanged.")
    first = await _turn(session, "Hello! Please answer in one short sentence.")
    _scene(
        "2. cancel, answered in-band (the interrupt control_request)",
        "A long tool runs; the cancel first asks the CLI itself to stop it (cheap, no restart).",
    )
    await _cancel_scene(session, tool)
    if fake:
        _scene(
            "3. cancel, the CLI ignores the interrupt: SIGINT, then respawn with --resume",
            "This CLI acknowledges the interrupt but goes on: SIGINT after 1 s, then a new CLI.",
        )
        await _cancel_scene(session, ignores)
    _scene(
        "4. cancel, the CLI is stopped: the ladder skips SIGINT and kills the tree at once",
        "This CLI is stopped (SIGSTOP), like a hung one: it can act on neither the interrupt "
        "nor SIGINT, so only killing its whole tree ends it; then it is respawned.",
    )
    await _cancel_scene(session, wedged, wedge=not fake, killed=wedged_killed)
    _scene(
        "5. the session goes on, with its history",
        "After the respawns above, the session must still know what was said: ask it.",
    )
    last = await _turn(session, "What did I ask you first?")
    history = last.get("fake_history")
    if isinstance(history, list) and history:
        _say(
            f"    the CLI knows the {len(history)} user messages of this session, "
            f"the first: {_short(str(history[0]), 50)!r}"
        )
    else:
        _say("    (the answer comes from the resumed session, which has the earlier turns)")
    if last.get("session_id") and last.get("session_id") == first.get("session_id"):
        _say(f"    same session id as the first turn: {last.get('session_id')}")


async def _real_sigint_scene(claude: str, work: Path, env: dict[str, str]) -> None:
    """A real CLI answers the interrupt in ~50 ms: a shorter deadline shows the SIGINT rung."""
    _scene(
        "3. cancel with an interrupt deadline (10 ms) shorter than the CLI's answer: SIGINT",
        "A real CLI answers an interrupt in ~50 ms; a 10 ms deadline shows SIGINT (own session).",
    )
    policy = EscalationPolicy(interrupt_timeout=0.01)
    async with open_session(CLAUDE_ARGS, claude=claude, policy=policy, cwd=work, env=env) as s:
        await _cancel_scene(s, LONG_TOOL_REQUEST)


def _fake_claude_shim(root: Path) -> Path:
    """The fake CLI as an executable; its stderr goes to a log the demo shows indented."""
    global _stderr_log, _stderr_seen
    bin_dir = root / "bin"
    bin_dir.mkdir()
    _stderr_log, _stderr_seen = root / "fake-cli-stderr.log", 0
    shim = bin_dir / "claude"
    shim.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"'
        f' 2>>"{_stderr_log}"\n'
    )
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return shim
