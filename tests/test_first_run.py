"""What a new user meets first: a wrong `--claude`, and the demo's output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio


async def run(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "supervisor", *args],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize("demo", [False, True], ids=["wrapper", "demo"])
async def test_a_directory_as_claude_is_refused_at_once(tmp_path: Path, demo: bool) -> None:
    prefix = tmp_path / "prefix"  # as `npm install --prefix` leaves it
    (prefix / "node_modules" / ".bin").mkdir(parents=True)
    inner = prefix / "node_modules" / ".bin" / "claude"
    inner.write_text("#!/bin/sh\nexit 0\n")
    inner.chmod(0o755)
    if demo:
        args = ["demo", "--claude", str(prefix)]
    else:
        args = ["--claude", str(prefix), "--", "-p", "--input-format", "stream-json"]
    code, out, err = await run(*args)
    assert code == 127 and out == ""
    assert f"'{prefix}' is a directory" in err
    assert "give the path of the `claude` executable" in err  # what to do
    assert f"did you mean {inner}?" in err


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("#!/bin/sh\n"), "is not an executable file; make it executable"),
    ],
    ids=["missing", "not-executable"],
)
async def test_every_wrong_claude_is_refused_with_what_to_do(
    tmp_path: Path, make: Callable[[Path], object], said: str
) -> None:
    path = tmp_path / "claude"
    make(path)
    code, out, err = await run("--claude", str(path), "--", "-p", "hi")
    assert code == 127 and out == ""
    assert said in err and "--claude or CLAUDE_SUPERVISOR_CLAUDE" in err


async def test_a_bare_name_not_on_path_says_what_to_do() -> None:
    code, _, err = await run("--claude", "no-such-claude-here", "--", "-p", "hi")
    assert code == 127 and "give its path, or install the CLI" in err


async def test_the_demo_explains_what_it_shows(home: Path) -> None:
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "supervisor", "demo"],
            capture_stdout=True,
            stderr=subprocess.STDOUT,  # as a terminal shows both
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    lines = out.splitlines()
    # Each section says first, in one line, what is about to happen and why.
    headers = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert len(headers) == 5, out
    for i in headers:
        assert lines[i + 1].startswith("   ") and len(lines[i + 1].split()) >= 8, lines[i + 1]
    # The terms it prints are explained where they appear.
    assert any("interrupt_answered" in x and "not the end of the turn" in x for x in lines)
    assert any("aborted_tools: the CLI's own result" in x for x in lines), out
    assert any("cancelled: written by the supervisor" in x for x in lines), out
    assert any("killed: nothing was left to kill" in x for x in lines), out
    assert any("killed: the wedged CLI" in x and "escaped" in x for x in lines), out
    # The history survived the respawns: the CLI knows every earlier message.
    history = next(x for x in lines if "the CLI knows the" in x)
    assert "the 5 user messages" in history and "'Hello!" in history
    # The fake CLI's own stderr is shown indented, never in the middle of a line or flush left.
    session = lines[headers[0] :]
    assert any(x.startswith("    (the CLI's stderr: fake_claude: wedging") for x in session)
    assert all(x == "" or x.startswith(("== ", " ", "session ")) for x in session), out
