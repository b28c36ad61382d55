"""`claude-supervisor demo --claude PATH` against the real CLI (offline, the fake API)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.real_cli


async def test_the_demo_runs_every_rung_on_the_real_cli(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "supervisor", "demo", "--claude", str(claude_cli)],
            env=cli_env,
            cwd=workdir,
            capture_stdout=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    for rung in ("ended by: interrupt", "ended by: sigint", "ended by: kill"):
        assert rung in out, out
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert len(headers) == 5 and all(lines[i + 1].startswith("   ") for i in headers), out
    assert "(not the end of the turn)" in out and "aborted_tools: the CLI's own result" in out
    assert "killed: the stopped CLI" in out, out
    # The history survived: the resumed session is the same one.
    assert "same session id as the first turn" in out, out
    # The stopped CLI took the adaptive path: straight from the interrupt to the kill.
    wedged = out[out.index("== 4.") : out.index("== 5.")]
    assert "cli_stopped" in wedged and "sigint_sent" not in wedged, wedged
