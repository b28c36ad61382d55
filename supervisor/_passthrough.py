"""Every mode but stream-json input: the wrapper stays out of the way.

Interactive sessions and `-p "prompt"` runs get the terminal and the pipes unchanged; the
wrapper forwards signals, propagates the exit code, and (through the same helper as in
stream-json mode, started by `_helper`) kills whatever the CLI's tools left running when
the CLI ends.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import trio

from ._config import WrapperConfig
from ._helper import Hub, start_run
from ._machine import exit_code
from ._relay import watch_parent

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def run_passthrough(
    config: WrapperConfig, claude: str, claude_args: Sequence[str], parent: int
) -> int:
    # On a terminal the CLI must stay in the foreground process group to read it; the
    # terminal then signals it directly, so terminal signals must not be forwarded twice.
    on_terminal = os.isatty(0)
    # A hub of its own (one session), in the process group the terminal needs.
    hub = Hub(new_session=False, process_group=None if on_terminal else 0)
    lease = hub.lease()
    try:
        with trio.open_signal_receiver(*FORWARDED) as signals:
            helper = await start_run(
                [claude, *claude_args],
                hub=hub,
                kill_timeout=config.policy.kill_timeout,
                env=None,
                pipes=False,
            )

            async def forward() -> None:
                async for signum in signals:
                    if not (on_terminal and signum in (signal.SIGINT, signal.SIGQUIT)):
                        # A signal that came before the CLI's pid was read waits for it,
                        # so it reaches the CLI rather than nothing.
                        await helper.settled.wait()
                        helper.send_to_cli(signum)

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(forward)
                    # The parent is gone: the hub ends the CLI and its tree (it works
                    # even before the CLI's pid is known).
                    nursery.start_soon(watch_parent, parent, helper.kill_tree)
                    # To the run's last report, or (if the hub was SIGKILLed) the
                    # clean-up of what it left.
                    await helper.read_status()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await helper.close()
    finally:
        await lease.aclose()
    report = helper.final or {}
    if report.get("event") == "spawn_failed":
        raise FileNotFoundError(str(report.get("error")))
    code = report.get("returncode")
    return exit_code(code) if isinstance(code, int) else 1
