"""The supervisor's side of the helper: start it, read its reports, make sure it is gone.

The one owner of how a CLI run is started under its helper (see `_tree`) and how the
helper's status pipe is read, shared by the library's `CliProcess` (`_process`) and the
executable's passthrough mode (`_passthrough`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import psutil
import trio

from . import _tree as tree
from ._framing import LineSplitter
from ._policy import REAP_GRACE, TREE_GRACE

#: A report of the helper's status pipe, one JSON object (see `_tree`).
Report = dict[str, object]

#: The reports that end a run: nothing comes after them.
FINAL_EVENTS = ("exited", "spawn_failed")


class HelperRun:
    """One run of the CLI under its helper, seen from the supervisor.

    `stdin`, `stdout` and `stderr` are the CLI's pipes (None when it was given ours).
    `cli` is the CLI as the `psutil.Process` made when the helper reported it spawned
    (checked against the creation time it reported), dropped at its exit: once the
    helper has reaped the CLI its pid may be reused, and a process made from the bare
    pid then would be the newcomer.
    """

    def __init__(
        self,
        process: trio.Process,
        *,
        status_fd: int,
        lifeline_fd: int,
        tag: str,
        started: float,
        kill_timeout: float,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr
        self.tag = tag
        self.started = started
        self.cli: psutil.Process | None = None
        #: The report that ended the run (`exited` or `spawn_failed`), once it came.
        self.final: Report | None = None
        #: Set when the helper died before its last report: how many processes it left
        #: that were killed by their tag instead.
        self.orphans_killed: int | None = None
        self._status_fd = status_fd
        self._lifeline_fd = lifeline_fd
        self._kill_timeout = kill_timeout
        self._before_turn: frozenset[tree.Identity] = frozenset()

    def kill_tree(self) -> None:
        """Asks the helper to kill the whole tree; it then reports the exit."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def send_to_cli(self, signum: int) -> None:
        """`signum` to the CLI itself while it is ours (never to a reused pid)."""
        if self.cli is not None:
            with contextlib.suppress(psutil.Error):
                self.cli.send_signal(signum)  # checks the creation time first

    def cli_stopped(self) -> bool:
        """Whether the CLI is stopped (SIGSTOP, job control, a debugger)."""
        cli = self.cli
        if cli is None:
            return False
        try:
            # is_running() compares the create time: never report on a reused pid.
            return cli.is_running() and cli.status() in (
                psutil.STATUS_STOPPED,
                psutil.STATUS_TRACING_STOP,
            )
        except tree.GONE:
            return False

    def mark_turn_start(self) -> None:
        """Notes what the tree holds before a turn: `kill_turn_processes` spares it."""
        self._before_turn = tree.snapshot(self.pid)

    async def kill_turn_processes(self) -> int:
        """Kills what the running turn started, leaving the CLI (and what predates it)."""
        helper_pid = self.pid
        keep = {self.cli.pid} if self.cli is not None else set()
        before = self._before_turn

        def listing() -> list[psutil.Process]:
            return tree.turn_processes(helper_pid, before, keep)

        # The common case is a turn that left nothing: two empty listings in a row (the
        # freeze rule's "nothing new twice", which a fork chain cannot slip through both
        # times) settle it here, a bounded walk of our own tree with no thread and no
        # sleep, so that hundreds of sessions cancelled at once do not queue on threads.
        if not listing() and not listing():
            return 0
        kill = functools.partial(tree.terminate, listing, self._kill_timeout, grace=TREE_GRACE)
        return await trio.to_thread.run_sync(kill)

    async def read_status(self, on_report: Callable[[Report], None] = lambda r: None) -> None:
        """Reads the helper's reports to the end of the status pipe.

        Without a final report at the end, the helper died (SIGKILL) before it could
        kill the tree, which lives on, re-parented to init: its work is done here, the
        tree found by its tag (`_tree.kill_tagged`), and `orphans_killed` set.
        """
        splitter = LineSplitter()
        async with trio.lowlevel.FdStream(self._status_fd) as stream:
            async for chunk in stream:
                for line in splitter.feed(chunk):
                    if isinstance(line, bytes):
                        report = json.loads(line)
                        self._on_report(report)
                        on_report(report)
        if self.final is None:
            self.cli = None
            self.orphans_killed = await self._kill_tagged()

    def _on_report(self, report: Report) -> None:
        if report.get("event") == "spawned":
            self.cli = tree.process_of(report)
        else:
            self.cli = None  # gone: never signal that pid again
            if report.get("event") in FINAL_EVENTS:
                self.final = report

    async def wait(self) -> None:
        await self.process.wait()

    async def close(self) -> None:
        """Never leaves the helper (and so the tree) behind; then lets go of the lifeline.

        Call it shielded: it must run to the end even when the caller is cancelled.
        """
        process = self.process
        try:
            if process.returncode is None:
                self.kill_tree()
                with trio.move_on_after(self._kill_timeout + REAP_GRACE):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                    await self._kill_tagged()  # it had no chance to kill the tree
        finally:
            os.close(self._lifeline_fd)
            self.cli = None

    async def _kill_tagged(self) -> int:
        return await trio.to_thread.run_sync(
            tree.kill_tagged, self.tag, self.started, self._kill_timeout, TREE_GRACE
        )


async def start_helper(
    cli: Sequence[str],
    *,
    kill_timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    pipes: bool = True,
    new_session: bool = True,
    process_group: int | None = None,
) -> HelperRun:
    """Starts `cli` under a new helper; raises OSError if the helper cannot be started.

    With `pipes`, the CLI gets three new pipes (`HelperRun.stdin`...), else ours. The
    helper (and so the CLI) runs in a session of its own with `new_session` (a
    terminal's Ctrl-C reaches neither), else in `process_group` (see `subprocess`).
    """
    status_read, status_write = os.pipe()
    # The helper's lifeline: we hold the write end (never written) until the helper has
    # exited; if this process dies, the helper sees end-of-file and kills the tree.
    lifeline_read, lifeline_write = os.pipe()
    tag = tree.new_tag()  # marks every process of this run's tree
    started = time.time() - 1.0  # creation times are rounded: a margin
    stdio = subprocess.PIPE if pipes else None
    try:
        command = tree.helper_command(
            cli,
            status_fd=status_write,
            lifeline_fd=lifeline_read,
            kill_timeout=kill_timeout,
            grace=TREE_GRACE,
            tag=tag,
        )
        process = await trio.lowlevel.open_process(
            command,
            stdin=stdio,
            stdout=stdio,
            stderr=stdio,
            cwd=cwd,
            env=env,
            start_new_session=new_session,
            process_group=None if new_session else process_group,
            pass_fds=(status_write, lifeline_read),
        )
    except BaseException:
        os.close(status_read)
        os.close(lifeline_write)
        raise
    finally:
        os.close(status_write)
        os.close(lifeline_read)
    return HelperRun(
        process,
        status_fd=status_read,
        lifeline_fd=lifeline_write,
        tag=tag,
        started=started,
        kill_timeout=kill_timeout,
    )
