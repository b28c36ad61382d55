"""Fixtures for the tests that run the real Claude Code CLI (pinned, from npm) offline.

The CLI runs against `FakeMessagesAPI` on loopback; each test has its own HOME and
working directory. If the CLI cannot be installed (no npm, no registry), the tests
error with the installer's message: they are never skipped silently.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import trio
from conftest import TOKEN_VARIABLE, stray_processes

from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI

ARGS = list(STREAM_JSON_ARGS)


def long_tool(marker: Path, *, escapee: bool = False, seconds: int = 300) -> str:
    """A fake-API directive for a Bash call that runs until killed.

    The command touches `marker` once it runs, so a test awaits that file instead of
    guessing how long the CLI takes to start it. With `escapee`, it also leaves a
    `setsid` grandchild, re-parented away from the tool, as real tools sometimes do; the
    marker comes after it, so that a test finding the marker finds the escapee too.
    """
    sleeper = f"python3 -c 'import time; time.sleep({seconds})'"
    command = ""
    if escapee:
        command += f"setsid -f {sleeper} >/dev/null 2>&1 </dev/null; "
    command += f"touch {marker}; " + sleeper
    return f"[[api: bash={command}]]"


#: The drop-in executable, as a user's program finds it.
WRAPPER = Path(sys.executable).parent / "claude-supervisor"


def stubborn_tool(marker: Path, seconds: int = 300) -> str:
    """A fake-API directive for a Bash call that ignores SIGTERM (it touches `marker`
    once it runs and its handler is set)."""
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(marker)!r}).touch(); time.sleep({seconds})"
    )
    return f'[[api: bash=python3 -c "{code}"]]'


def wrapper_env(claude_cli: Path, cli_env: dict[str, str]) -> dict[str, str]:
    """The environment an SDK passes the wrapper: it finds the real CLI and takes its own
    settings from these variables (an SDK passes the CLI's arguments only).

    The SDK tests' interrupts are meant to end in-band (or, for a stopped CLI, to go
    straight to the kill): an interrupt deadline a loaded machine cannot miss, with the
    unanswered-interrupt shortcut off (its deadline is not shorter)."""
    return {
        **cli_env,
        "CLAUDE_SUPERVISOR_CLAUDE": str(claude_cli),
        "CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT": "30",
        "CLAUDE_SUPERVISOR_INTERRUPT_ACK_TIMEOUT": "30",
        "CLAUDE_SUPERVISOR_SIGINT_TIMEOUT": "3",
        "CLAUDE_SUPERVISOR_KILL_TIMEOUT": "1",
    }


async def seconds_until_gone(keep: Iterable[int], timeout: float = 60) -> float:
    """How long until no process of this test is left but those in `keep` (the test's own
    client); fails if some still run after `timeout`. There is no event for "a process
    elsewhere exited", so this polls."""
    token = os.environ[TOKEN_VARIABLE]
    kept = list(keep)
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while await trio.to_thread.run_sync(stray_processes, token, kept):
            await trio.sleep(0.02)
        return trio.current_time() - start
    left = [" ".join(p.cmdline())[:120] for p in stray_processes(token, kept)]
    raise AssertionError(f"still running {timeout:.0f} s after close: {left}")


async def wait_for_file(path: Path, timeout: float = 30) -> None:
    """Waits until a tool has created `path` (there is no frame for "the tool runs")."""
    with trio.fail_after(timeout):
        while not await trio.Path(path).exists():
            await trio.sleep(0.02)


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    return ensure_claude()


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def cli_env(api: FakeMessagesAPI, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return api.env(home)
