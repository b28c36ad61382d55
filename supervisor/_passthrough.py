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
from collections.abc import Sequence

import psutil
import trio

from . import _tree as tree
from ._config import WrapperConfig
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
    command = tree.helper_command(
        [claude, *claude_args],
        status_fd=status_write,
        lifeline_fd=lifeline_read,
        kill_timeout=config.policy.kill_timeout,
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
        reports: list[dict[str, object]] = []

        def send(signum: int) -> None:
            pid = next((r["pid"] for r in reports if r.get("event") == "spawned"), None)
            if isinstance(pid, int):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).send_signal(signum)

        async def forward() -> None:
            async for signum in signals:
                if not (on_terminal and signum in (signal.SIGINT, signal.SIGQUIT)):
                    send(signum)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_status, status_read, reports)
                nursery.start_soon(forward)
                # The parent is gone: SIGTERM to the helper ends the CLI and its tree
                # (it works even before the CLI's pid is known).
                nursery.start_soon(watch_parent, parent, lambda: helper.send_signal(signal.SIGTERM))
                await helper.wait()
                nursery.cancel_scope.cancel()
        finally:
            os.close(lifeline_write)
    for report in reports:
        if report.get("event") == "spawn_failed":
            raise FileNotFoundError(str(report.get("error")))
        if report.get("event") == "exited":
            code = report.get("returncode")
            if isinstance(code, int):
                return 128 - code if code < 0 else code
    return 1


async def _read_status(fd: int, reports: list[dict[str, object]]) -> None:
    buffer = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            reports.extend(json.loads(line) for line in lines if line.strip())
