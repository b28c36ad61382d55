"""Every mode but stream-json input: the wrapper stays out of the way.

Interactive sessions and `-p "prompt"` runs get the terminal and the pipes unchanged; the
wrapper forwards signals, propagates the exit code, and (through the same helper as in
stream-json mode) kills whatever the CLI's tools left running when the CLI ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence

import psutil
import trio

from . import _tree as tree
from ._config import WrapperConfig
from ._framing import LineSplitter
from ._machine import exit_code
from ._policy import TREE_GRACE
from ._relay import watch_parent

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def run_passthrough(
    config: WrapperConfig, claude: str, claude_args: Sequence[str], parent: int
) -> int:
    # On a terminal the CLI must stay in the foreground process group to read it; the
    # terminal then signals it directly, so terminal signals must not be forwarded twice.
    on_terminal = os.isatty(0)
    status_read, status_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()  # see supervisor/_tree.py
    status = _Status(tree.new_tag(), config.policy.kill_timeout)
    command = tree.helper_command(
        [claude, *claude_args],
        status_fd=status_write,
        lifeline_fd=lifeline_read,
        kill_timeout=config.policy.kill_timeout,
        grace=TREE_GRACE,
        tag=status.tag,
    )
    with trio.open_signal_receiver(*FORWARDED) as signals:
        try:
            helper = await trio.lowlevel.open_process(
                command,
                pass_fds=(status_write, lifeline_read),
                process_group=None if on_terminal else 0,
            )
        finally:
            os.close(status_write)
            os.close(lifeline_read)

        async def forward() -> None:
            async for signum in signals:
                if not (on_terminal and signum in (signal.SIGINT, signal.SIGQUIT)):
                    status.send(signum)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                # The parent is gone: SIGTERM to the helper ends the CLI and its tree
                # (it works even before the CLI's pid is known).
                nursery.start_soon(watch_parent, parent, lambda: helper.send_signal(signal.SIGTERM))
                # To the end of the status pipe, which only the helper holds: its last
                # report, or (if it was SIGKILLed) the clean-up of what it left.
                await status.read(status_read)
                await helper.wait()
                nursery.cancel_scope.cancel()
        finally:
            os.close(lifeline_write)
    for report in status.reports:
        if report.get("event") == "spawn_failed":
            raise FileNotFoundError(str(report.get("error")))
        if report.get("event") == "exited":
            code = report.get("returncode")
            if isinstance(code, int):
                return exit_code(code)
    return 1


class _Status:
    """The helper's reports, and the CLI to forward signals to while it is ours.

    The CLI is held as the `psutil.Process` made when the helper reported it spawned
    (checked against the creation time it reported) and dropped at `exited`: once the
    helper has reaped the CLI, its pid may be reused, and a process made from the bare pid
    then would be the newcomer.
    """

    def __init__(self, tag: str, kill_timeout: float) -> None:
        self.tag = tag
        self.started = time.time() - 1.0  # creation times are rounded: a margin
        self.kill_timeout = kill_timeout
        self.reports: list[dict[str, object]] = []
        self.cli: psutil.Process | None = None

    def on_report(self, report: dict[str, object]) -> None:
        self.reports.append(report)
        if report.get("event") == "spawned":
            self.cli = tree.process_of(report)
        else:
            self.cli = None

    def send(self, signum: int) -> None:
        if self.cli is not None:
            with contextlib.suppress(psutil.Error):
                self.cli.send_signal(signum)  # checks the creation time first

    async def read(self, fd: int) -> None:
        splitter = LineSplitter()
        async with trio.lowlevel.FdStream(fd) as stream:
            async for chunk in stream:
                for line in splitter.feed(chunk):
                    if isinstance(line, bytes) and line.strip():
                        self.on_report(json.loads(line))
        if not any(r.get("event") in ("exited", "spawn_failed") for r in self.reports):
            # The helper died (SIGKILL) before it killed the tree: do it (_tree.kill_tagged).
            self.cli = None
            await trio.to_thread.run_sync(
                tree.kill_tagged, self.tag, self.started, self.kill_timeout, TREE_GRACE
            )
