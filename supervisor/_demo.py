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


def _say(text: str = "") -> None:
    print(text, flush=True)


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
        return (
            f"result {frame.get('subtype')} ({frame.get('terminal_reason', '-')}): "
            f"{_short(str(frame.get('result', '')))!r}"
        )
    subtype = frame.get("subtype")
    return f"{kind}/{subtype}" if subtype else str(kind)


def _short(text: str, width: int = 70) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder="...")


def _timeline(report: CancelReport | None) -> None:
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
        _say(f"    {step.ms:>9.1f} ms  {step.name}")


async def _until_tool_runs(turn: Turn) -> None:
    async for frame in turn:
        _say(f"    <- {_summary(frame)}")
        blocks = frame.get("message", {}).get("content", []) if frame.get("type") else []
        if frame.get("type") == "assistant" and any(
            isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks
        ):
            await trio.sleep(0.3)  # let the tool's processes start: there is no frame for it
            return


async def _turn(session: Session, text: str) -> None:
    _say(f"    -> {_short(text)!r}")
    turn = await session.send(text)
    async for frame in turn:
        _say(f"    <- {_summary(frame)}")


async def _cancel_scene(session: Session, text: str, *, wedge: bool = False) -> None:
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
    _timeline(report)


async def _until_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously; the scene is about a CLI already stopped."""
    with trio.move_on_after(2):
        while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
            await trio.sleep(0.005)


def _scene(title: str) -> None:
    _say()
    _say(f"== {title}")


async def run_demo(claude: str | None) -> int:
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
    else:
        tool = LONG_TOOL_REQUEST
        wedged = tool
    _scene("1. a turn")
    await _turn(session, "Hello! Please answer in one short sentence.")
    _scene("2. cancel, answered in-band (the interrupt control_request)")
    await _cancel_scene(session, tool)
    if fake:
        _scene("3. cancel, the CLI ignores the interrupt: SIGINT, then respawn with --resume")
        await _cancel_scene(session, ignores)
    _scene(
        "4. cancel, the CLI is stopped: it can act on neither the interrupt nor SIGINT, so "
        "the ladder skips SIGINT and kills the tree at once, then respawns"
    )
    await _cancel_scene(session, wedged, wedge=not fake)
    _scene("5. the session goes on, with its history")
    await _turn(session, "What did I ask you first?")


async def _real_sigint_scene(claude: str, work: Path, env: dict[str, str]) -> None:
    """A real CLI answers the interrupt in ~50 ms: a shorter deadline shows the SIGINT rung."""
    _scene("3. cancel with an interrupt deadline (10 ms) shorter than the CLI's answer: SIGINT")
    policy = EscalationPolicy(interrupt_timeout=0.01)
    async with open_session(CLAUDE_ARGS, claude=claude, policy=policy, cwd=work, env=env) as s:
        await _cancel_scene(s, LONG_TOOL_REQUEST)


def _fake_claude_shim(root: Path) -> Path:
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "claude"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return shim
