"""Test harness: every test runs under a process audit.

Each test gets a unique token in the environment variable `CLAUDE_SUPERVISOR_TEST_TOKEN`,
which every process it starts inherits (the CLI, its helper, its tools, escaped
grandchildren re-parented to init). After the test, any process still carrying the token
is a leak: the test fails, and the leftovers are killed. A process is recognised by the
token, never by its name, and psutil's creation-time check guards against pid reuse.
"""

from __future__ import annotations

import os
import stat
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

TOKEN_VARIABLE = "CLAUDE_SUPERVISOR_TEST_TOKEN"

#: How long a process may take to finish exiting after its test, before it is a leak.
SETTLE_SECONDS = 10.0


def processes_with_token(token: str) -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TOKEN_VARIABLE) == token:
                found.append(proc)
        except (psutil.Error, OSError):  # see supervisor._tree.GONE
            continue
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):  # see supervisor._tree.GONE
        return False


def stray_processes(token: str, keep: Iterable[int | None]) -> list[psutil.Process]:
    """Live processes carrying the test's token, other than those in `keep`."""
    kept = set(keep)
    return [p for p in processes_with_token(token) if p.pid not in kept and _alive(p)]


def cli_of(helper: psutil.Process) -> psutil.Process:
    """The CLI under a supervisor's helper: its first child (the helper, a subreaper,
    also adopts orphans such as a tool's escaped grandchild)."""
    return min(helper.children(), key=lambda child: child.create_time())


@pytest.fixture(autouse=True)
def process_audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VARIABLE, token)
    yield token
    leftovers = [p for p in processes_with_token(token) if _alive(p)]
    if not leftovers:
        return
    _gone, alive = psutil.wait_procs(leftovers, timeout=SETTLE_SECONDS)
    alive = [p for p in alive if _alive(p)]
    if not alive:
        return
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except (psutil.Error, OSError):  # see supervisor._tree.GONE
            continue
    psutil.wait_procs(alive, timeout=5)
    pytest.fail("processes left running after the test:\n  " + "\n  ".join(described))


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    """An executable named `claude` that runs the package's fake CLI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "claude"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME (and working directory) of the test's own, so transcripts never mix."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.chdir(work)
    return home
