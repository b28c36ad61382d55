"""Fixtures for the tests that run the real Claude Code CLI (pinned, from npm) offline.

The CLI runs against `FakeMessagesAPI` on loopback; each test has its own HOME and
working directory. If the CLI cannot be installed (no npm, no registry), the tests
error with the installer's message: they are never skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI

ARGS = list(STREAM_JSON_ARGS)


def long_tool(marker: Path, *, escapee: bool = False, seconds: int = 300) -> str:
    """A fake-API directive for a Bash call that runs until killed.

    The command touches `marker` once it runs, so a test awaits that file instead of
    guessing how long the CLI takes to start it. With `escapee`, it also leaves a
    `setsid` grandchild, re-parented away from the tool, as real tools sometimes do.
    """
    sleeper = f"python3 -c 'import time; time.sleep({seconds})'"
    command = f"touch {marker}; "
    if escapee:
        command += f"setsid -f {sleeper} >/dev/null 2>&1 </dev/null; "
    command += sleeper
    return f"[[api: bash={command}]]"


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
