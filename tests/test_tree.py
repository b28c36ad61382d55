"""The process-tree kill on its own: real processes under a real hub (the subreaper).

Hostile trees that a kill which lists once and waits for that listing misses: a
fork-and-exit chain whose links `setsid` (each link lives a fraction of a millisecond and
is re-parented as its parent exits), and a tree of stopped processes, which act on no
SIGTERM until continued.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import processes_with_token

from supervisor import _hub as hub
from supervisor import _tree as tree
from supervisor._policy import TREE_GRACE

CHAIN = str(Path(__file__).with_name("fork_chain.py"))


class Helper:
    """A hub running one stand-in CLI, as the library runs it (`supervisor._hub`)."""

    def __init__(self, cli: list[str], kill_timeout: float) -> None:
        self.started = time.time() - 1.0
        self.proc, self._control = hub.start()
        self.session = hub.BlockingSession(
            self._control, cli, kill_timeout=kill_timeout, grace=TREE_GRACE
        )
        self.tag = self.session.tag
        spawned = self.session.report()
        assert spawned["event"] == "spawned"
        self.cli = psutil.Process(spawned["pid"])

    def stop(self, timeout: float) -> dict[str, object]:
        """A `KillTree`, then the end of the hub (its only session is over); the
        session's `exited` report."""
        self.session.kill()
        self.session.sock.settimeout(timeout)
        report = self.session.report()
        self.close(timeout)
        return report

    def close(self, timeout: float = 30) -> None:
        self.session.close()
        self._control.close()  # the hub's lifeline: it ends
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def helper(cli: list[str], kill_timeout: float = 0.5) -> Iterator[Helper]:
    h = Helper(cli, kill_timeout)
    try:
        yield h
    finally:
        h.close()


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def alive(token: str, *, but: int | None = None) -> list[psutil.Process]:
    found = []
    for proc in processes_with_token(token):
        try:
            if proc.pid != but and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def a_cli_with_tool(tool: list[str]) -> list[str]:
    """A stand-in CLI that runs `tool` in a session of its own, as the Bash tool does."""
    return [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "subprocess.Popen(sys.argv[1:], start_new_session=True)\n"
        "time.sleep(300)",
        *tool,
    ]


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignoring-sigterm"])
def test_a_fork_chain_is_killed_to_its_last_link(
    tmp_path: Path, process_audit: str, stubborn: bool
) -> None:
    marker = tmp_path / "chain-started"
    chain = [sys.executable, CHAIN, "3000", str(marker), *(["stubborn"] if stubborn else [])]
    with helper(a_cli_with_tool(chain)) as h:
        wait_for(marker)  # the chain is forking now
        report = h.stop(timeout=30)  # the helper never hangs on a surviving link
        assert alive(process_audit) == []
        assert report["event"] == "exited"
        assert report["survivors"] == 0


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignoring-sigterm"])
def test_a_fork_chain_started_by_a_turn_is_killed_and_the_cli_kept(
    tmp_path: Path, process_audit: str, stubborn: bool
) -> None:
    """The in-band cancel's clean-up: from outside the helper, as the supervisor runs it."""
    marker = tmp_path / "chain-started"
    chain = [sys.executable, CHAIN, "3000", str(marker), *(["stubborn"] if stubborn else [])]
    with helper(a_cli_with_tool(chain)) as h:
        before: frozenset[tree.Identity] = frozenset()
        wait_for(marker)

        def listing() -> list[tree.Proc]:
            return tree.turn_processes(h.proc.pid, before, {h.cli.pid})

        tree.terminate(listing, timeout=0.5, grace=TREE_GRACE)
        assert alive(process_audit, but=h.proc.pid) == [h.cli]
        assert h.stop(timeout=30)["event"] == "exited"


def test_a_stopped_tree_is_killed_without_waiting_for_kill_timeout(
    tmp_path: Path, process_audit: str
) -> None:
    """A stopped process acts on SIGTERM only once continued: the kill must not wait its
    whole `kill_timeout` (here 60 s) for processes that cannot run."""
    marker = tmp_path / "tool-started"
    tool = [sys.executable, "-c", f"open({str(marker)!r}, 'w'); import time; time.sleep(300)"]
    with helper(a_cli_with_tool(tool), kill_timeout=60) as h:
        wait_for(marker)
        stopped = alive(process_audit, but=h.proc.pid)
        assert len(stopped) == 2  # the CLI and its tool
        for proc in stopped:
            proc.suspend()  # SIGSTOP: a wedged CLI
        start = time.monotonic()
        report = h.stop(timeout=90)
        assert time.monotonic() - start < 30  # generous: it takes milliseconds
        assert report["survivors"] == 0
        assert alive(process_audit) == []


def test_a_tool_that_catches_sigterm_gets_its_time_and_what_it_starts_too(
    tmp_path: Path, process_audit: str
) -> None:
    """The kill ends at once what SIGTERM would kill outright, but a process that
    catches SIGTERM runs its handler, and what the handler starts (a shell's trap
    running a clean-up command) still gets the rest of `kill_timeout`."""
    marker, cleaned = tmp_path / "tool-started", tmp_path / "cleaned-up"
    cleanup = f"import time; time.sleep(0.5); open({str(cleaned)!r}, 'w')"
    tool = [
        sys.executable,
        "-c",
        "import signal, subprocess, sys, time\n"
        "def on_term(signum, frame):\n"
        f"    subprocess.Popen([sys.executable, '-c', {cleanup!r}])\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "for _ in range(20):\n"  # plain children, which SIGTERM kills outright
        "    subprocess.Popen(['sleep', '300'])\n"
        f"open({str(marker)!r}, 'w')\n"
        "time.sleep(300)",
    ]
    with helper(a_cli_with_tool(tool), kill_timeout=20) as h:
        wait_for(marker)
        start = time.monotonic()
        report = h.stop(timeout=60)
        assert cleaned.exists()  # the clean-up ran to its end, not SIGKILLed
        assert time.monotonic() - start < 15  # generous: about half a second
        assert report["survivors"] == 0
        assert alive(process_audit) == []


def test_processes_in_the_clis_own_session_are_not_a_turns(
    tmp_path: Path, process_audit: str
) -> None:
    """The CLI's own children (stdio MCP servers) share its session and may start during
    a turn; the Bash tool's shells have sessions of their own. Only the latter, with
    what they started and what was re-parented to the helper, are the turn's."""
    marker = tmp_path / "started"
    cli = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "own = subprocess.Popen(sleep)\n"  # an MCP server: same session
        "tool = subprocess.Popen(sleep, start_new_session=True)\n"
        f"open({str(marker)!r}, 'w')\n"
        "time.sleep(300)",
    ]
    with helper(cli) as h:
        wait_for(marker)
        own, tool = sorted(h.cli.children(), key=lambda p: p.create_time())
        assert os.getsid(own.pid) == os.getsid(h.cli.pid) != os.getsid(tool.pid)
        found = tree.turn_processes(h.proc.pid, frozenset(), {h.cli.pid})
        assert found == [tree.Proc.of(tool)]
        tree.terminate(lambda: found, timeout=5, grace=TREE_GRACE)
        assert not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE
        assert own.is_running() and own.status() != psutil.STATUS_ZOMBIE
        assert h.stop(timeout=30)["survivors"] == 0


def test_a_fork_chain_left_by_a_sigkilled_helper_is_killed_by_its_tag(
    tmp_path: Path, process_audit: str
) -> None:
    """Its links are re-parented to init, found only by the tag in their environment,
    and each lives a fraction of a millisecond: far less than a scan of every process."""
    marker = tmp_path / "chain-started"
    chain = [sys.executable, CHAIN, "3000", str(marker), "stubborn"]
    with helper(a_cli_with_tool(chain)) as h:
        wait_for(marker)
        h.proc.kill()
        h.proc.wait()
        assert tree.kill_tagged(h.tag, h.started, timeout=0.5, grace=TREE_GRACE) >= 1
        for _ in range(3):  # one scan may miss a live link; three in a row will not
            assert alive(process_audit) == []
            time.sleep(0.05)
