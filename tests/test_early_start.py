"""The executable's early start: the CLI it starts before the full reading of its
command line is the one that reading asks for, or it is not kept.

`_cli.early_plan` reads the invocation without argparse or attrs, to start the CLI
while the wrapper imports the rest; `_cli._run` keeps that CLI only if the full reading
(`_config.parse_invocation`) agrees. These tests hold the two readings together.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import psutil
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wrapper_harness import STREAM_ARGS, Wrapper, environ, is_result, user

from supervisor._args import split_invocation, wants_stream_json_input
from supervisor._cli import _FLAGS, _resolve_claude, early_plan, find_real_claude, main
from supervisor._config import OPTIONS, ConfigError, parse_invocation
from supervisor._launch import creation_time

STREAM = ["-p", "--input-format", "stream-json", "--output-format", "stream-json"]


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A `claude` on PATH, another one on PATH under another name, one elsewhere."""
    on_path = tmp_path / "bin"
    found = {
        "claude": _executable(on_path / "claude"),
        "other": _executable(on_path / "other-claude"),
        "elsewhere": _executable(tmp_path / "opt" / "claude"),
    }
    monkeypatch.setenv("PATH", str(on_path))
    return found


def test_the_wrappers_flags_are_the_ones_the_early_reading_knows() -> None:
    assert {option.flag for option in OPTIONS} == _FLAGS


@pytest.mark.parametrize(
    ("argv", "prog", "expected"),
    [
        (["-p", "--", "x"], "claude", ("run", [], ["-p", "--", "x"])),
        (["--help"], "claude", ("run", [], ["--help"])),
        (["--help"], "claude-supervisor", ("help", [], [])),
        (["--version"], "claude-supervisor", ("version", [], [])),
        (["demo", "--claude", "c"], "claude-supervisor", ("demo", ["--claude", "c"], [])),
        (["--kill-timeout", "2", "--", "-p"], "cs", ("run", ["--kill-timeout", "2"], ["-p"])),
        (["-p", "--kill-timeout", "2"], "cs", ("run", [], ["-p", "--kill-timeout", "2"])),
    ],
)
def test_a_command_line_splits_into_the_wrappers_and_the_clis_arguments(
    argv: list[str], prog: str, expected: tuple[str, list[str], list[str]]
) -> None:
    assert split_invocation(argv, prog) == expected


def test_the_usual_invocations_start_the_cli_early(clis: dict[str, Path]) -> None:
    """An SDK's (every argument the CLI's, options from the environment), the `--` form,
    and the wrapper installed as `claude`: what would make early starts rare fails here."""
    elsewhere = str(clis["elsewhere"])
    sdk = early_plan(STREAM, "/usr/bin/claude-supervisor", {"CLAUDE_SUPERVISOR_CLAUDE": elsewhere})
    assert sdk == ([elsewhere, *STREAM], 1.0)
    flags = ["--claude", elsewhere, "--kill-timeout", "2.5", "--interrupt-timeout", "3", "--"]
    assert early_plan([*flags, *STREAM], "claude-supervisor", {}) == ([elsewhere, *STREAM], 2.5)
    environ = {"CLAUDE_SUPERVISOR_CLAUDE": "other-claude", "PATH": os.environ["PATH"]}
    assert early_plan(STREAM, "/somewhere/claude", environ) == ([str(clis["other"]), *STREAM], 1.0)


def test_anything_but_a_stream_json_run_is_left_to_the_full_reading(
    clis: dict[str, Path],
) -> None:
    environ = {"CLAUDE_SUPERVISOR_CLAUDE": str(clis["elsewhere"])}
    for argv in (
        ["-p", "hello"],  # pass-through mode: no relay to adopt the CLI
        ["--help"],
        ["demo"],
        ["--cla", str(clis["elsewhere"]), "--", *STREAM],  # argparse's abbreviation
        ["--kill-timeout", "soon", "--", *STREAM],  # an error, said by the full reading
        ["--kill-timeout", "inf", "--", *STREAM],  # one the hub could not wait out
        ["--kill-timeout", "nan", "--", *STREAM],
        ["--kill-timeout", "-1", "--", *STREAM],
        ["--claude", "/no/such/claude", "--", *STREAM],
    ):
        assert early_plan(argv, "claude-supervisor", environ) is None, argv


_VALUES = {
    "--claude": ["elsewhere", "other-claude", "claude", "/no/such/claude", ""],
    "--kill-timeout": ["2", "1", "1e0", "soon", "-1", "inf", ""],
    "--interrupt-timeout": ["3", "0"],
    "--max-line-bytes": ["4096", "5"],
    "--cla": ["elsewhere"],
    "--version": [],
}


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], str, dict[str, str]]:
    own: list[str] = []
    for flag in draw(st.lists(st.sampled_from(sorted(_VALUES)), max_size=4)):
        values = _VALUES[flag]
        if not values:
            own.append(flag)
        elif draw(st.booleans()):
            own.append(f"{flag}={draw(st.sampled_from(values))}")
        else:
            own += [flag, draw(st.sampled_from(values))]
    theirs = draw(
        st.sampled_from(
            [STREAM, ["--input-format=stream-json"], ["-p", "hi"], ["--kill-timeout", "9", *STREAM]]
        )
    )
    separator = draw(st.booleans())
    argv = [*own, "--", *theirs] if separator else theirs
    prog = draw(st.sampled_from(["claude-supervisor", "/bin/claude"]))
    environ: dict[str, str] = {}
    for variable, values in (
        ("CLAUDE_SUPERVISOR_CLAUDE", ["elsewhere", "other-claude", ""]),
        ("CLAUDE_SUPERVISOR_KILL_TIMEOUT", ["3", "soon"]),
        ("CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT", ["2", "-1"]),
    ):
        if draw(st.booleans()):
            environ[variable] = draw(st.sampled_from(values))
    return argv, prog, environ


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invocations())
def test_an_early_start_is_the_start_the_full_reading_asks_for(
    clis: dict[str, Path], invocation: tuple[list[str], str, dict[str, str]]
) -> None:
    """Whenever the early reading starts a CLI and the full reading runs one, they are
    the same CLI with the same arguments and kill timeout (`_run` compares them too)."""
    argv, prog, environ = invocation
    elsewhere = str(clis["elsewhere"])
    argv = [elsewhere if arg.endswith("elsewhere") and "=" not in arg else arg for arg in argv]
    argv = [arg.replace("=elsewhere", f"={elsewhere}") for arg in argv]
    environ = {k: elsewhere if v == "elsewhere" else v for k, v in environ.items()}
    environ["PATH"] = os.environ["PATH"]
    plan = early_plan(argv, prog, environ)
    try:
        full = parse_invocation(argv, prog, environ)
    except ConfigError:
        return  # the executable exits 2; `main` abandons whatever started early
    if full.mode != "run" or not wants_stream_json_input(full.claude_args):
        assert plan is None
        return
    named = full.config.claude or find_real_claude(environ["PATH"])
    resolved, problem = _resolve_claude(named) if named is not None else (None, None)
    if problem is not None or resolved is None:
        assert plan is None
        return
    if full.config.claude == "" and environ.get("CLAUDE_SUPERVISOR_CLAUDE"):
        # The one reading they differ on, known: `--claude ""` is not given to the early
        # reading, which takes the variable's CLI, and given (empty) to argparse; `_run`
        # replaces that CLI, as the wrapper test of the disagreement below shows.
        return
    if plan is not None:
        assert plan == ([resolved, *full.claude_args], full.config.policy.kill_timeout)


async def test_a_cli_started_early_for_a_bad_invocation_is_gone_when_the_wrapper_exits(
    tmp_path: Path,
) -> None:
    """The early reading cannot tell that 5 bytes is too small a line limit: it starts the
    CLI, the full reading refuses the option, and the wrapper ends that CLI before it
    exits with the error, rather than leaving it to its hub. (The CLI ignores SIGTERM
    until it has said it started: the hub's SIGKILL comes a second later.)"""
    started = tmp_path / "started"
    cli = tmp_path / "claude"
    cli.write_text(
        f"#!/bin/sh\ntrap '' TERM\necho $$ > {started}.tmp && mv {started}.tmp {started}\n"
        "exec sleep 60\n"
    )
    cli.chmod(0o755)
    result = await trio.run_process(
        [sys.executable, "-m", "supervisor", "--claude", str(cli), "--max-line-bytes", "5",
         "--", *STREAM],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--max-line-bytes: must be at least 1024 bytes" in result.stderr.decode()
    # It was started (the path under test), and is gone: nothing is left to the audit.
    pid = int(started.read_text())
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pid)


async def test_an_early_cli_the_full_reading_disagrees_with_is_replaced_by_the_right_one(
    fake_claude: Path, home: Path, tmp_path: Path
) -> None:
    """`--claude ""` is "not given" to the early reading, which then takes the variable's
    CLI; to argparse it is given, empty, and the CLI on PATH runs. The early CLI is
    ended and the one the full reading asks for serves the session."""
    started = tmp_path / "wrong-started"
    wrong = tmp_path / "wrong" / "claude"
    wrong.parent.mkdir()
    wrong.write_text(
        f"#!/bin/sh\ntrap '' TERM\necho $$ > {started}.tmp && mv {started}.tmp {started}\n"
        "exec sleep 60\n"
    )
    wrong.chmod(0o755)
    env = environ(
        CLAUDE_SUPERVISOR_CLAUDE=str(wrong),
        PATH=f"{fake_claude.parent}{os.pathsep}{os.environ['PATH']}",
    )
    w = await Wrapper.start(["--claude", "", "--", *STREAM_ARGS], env=env)
    try:
        await w.send(user("hello"))
        result = await w.expect(is_result)
        assert result.get("subtype") == "success"
        # The wrong CLI had started (the path under test), and is gone.
        pid = int(started.read_text())
        with pytest.raises(psutil.NoSuchProcess):
            psutil.Process(pid)
    finally:
        await w.close_stdin()
        assert await w.wait() == 0


def test_the_creation_time_read_without_psutil_is_psutils() -> None:
    """The hub reports its CLIs' creation times read without psutil (the prestarted
    one, before it imports it); the host checks them against psutil's
    (`_tree.process_of`), so the two must agree."""
    assert creation_time(os.getpid()) == psutil.Process().create_time()
    assert creation_time(os.getppid()) == psutil.Process(os.getppid()).create_time()


#: Run in a process of its own: `prestart` forks, and only a process with one thread may.
_PRESTART = """
import json, sys, time
from supervisor._launch import prestart
from supervisor._tree import process_of
early = prestart(sys.argv[1:], kill_timeout=1.0, grace=1.0)
reports = early.sock.makefile("rb")
spawned = json.loads(reports.readline())
if sys.argv[1] == "true":
    accepted, exited = None, json.loads(reports.readline())
else:
    proc = process_of(spawned)
    accepted, exited = proc is not None and proc.cmdline() == sys.argv[1:], None
print(json.dumps({"spawned": spawned, "accepted": accepted, "exited": exited}))
early.abandon()
"""


async def _prestarted(*args: str) -> dict[str, Any]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-c", _PRESTART, *args], capture_stdout=True, check=True
        )
    return cast(dict[str, Any], json.loads(result.stdout))


async def test_a_prestarted_hub_reports_its_cli_as_psutil_sees_it() -> None:
    """The report comes from the hub before its loop exists (`_launch._report_spawned`),
    in the loop's format: the host takes it for its CLI, pid and creation time."""
    seen = await _prestarted("sleep", "30")
    assert seen["spawned"]["event"] == "spawned"
    assert seen["accepted"] is True


async def test_a_cli_that_exits_while_its_hub_waits_for_it_to_boot_is_reported() -> None:
    """The CLI's exit comes before the hub's loop and its SIGCHLD handler (`BOOT_IDLE`):
    the loop still reaps it and reports its end, rather than waiting for another
    child's signal or for the host to give up."""
    seen = await _prestarted("true")
    assert seen["spawned"]["event"] == "spawned"
    assert seen["exited"]["event"] == "exited"
    assert seen["exited"]["returncode"] == 0


async def test_a_wrapper_sigkilled_while_its_cli_boots_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILLed before its relay exists, while its hub waits out the CLI's boot before
    it imports its loop (`_launch.BOOT_IDLE`): the hub wakes at its host's end and kills
    the CLI (and the audit finds no hub left either)."""
    started = tmp_path / "started"
    os.mkfifo(started)
    cli = tmp_path / "claude"
    cli.write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 60\n")
    cli.chmod(0o755)
    wrapper = await trio.lowlevel.open_process(
        [sys.executable, "-m", "supervisor", "--claude", str(cli), "--", *STREAM],
        stdin=subprocess.PIPE,
    )
    with trio.fail_after(30):
        pid = int(await trio.to_thread.run_sync(started.read_text))
    wrapper.kill()
    await wrapper.wait()
    with contextlib.suppress(psutil.NoSuchProcess):
        booting = psutil.Process(pid)
        _gone, left = await trio.to_thread.run_sync(lambda: psutil.wait_procs([booting], 15))
        assert left == []


def test_the_collector_held_off_during_the_imports_is_given_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`main` holds the collector off while it imports; a caller in the same process
    (a test, an embedding program) gets it back as it was."""
    assert gc.isenabled()
    assert main(["--version"]) == 0
    assert "claude-supervisor" in capsys.readouterr().out
    assert gc.isenabled()
