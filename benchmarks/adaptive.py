"""What the adaptive ladder is tuned on: how fast the real CLI acknowledges an interrupt,
and how long a stopped CLI takes to recover with the default policy.

Not a test: run it on purpose, it prints numbers.

    .venv/bin/python benchmarks/adaptive.py -n 20

The acknowledgement latency is the time from `interrupt_sent` to `interrupt_answered`
in the cancel report of an in-band cancel of a running tool call; the recovery time is
a cancel report's `total_ms` (cancel requested to session ready for the next turn) for
a CLI stopped with SIGSTOP mid-tool, under `EscalationPolicy()`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
from pathlib import Path

import trio

from supervisor import EscalationPolicy, open_session
from supervisor.testing import STREAM_JSON_ARGS


async def _wait_for(path: Path) -> None:
    while not await trio.Path(path).exists():
        await trio.sleep(0.01)


def _summary(name: str, values: list[float]) -> None:
    ordered = sorted(values)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    print(
        f"{name:<34} n={len(values):3d}  min {ordered[0]:8.1f}  median "
        f"{statistics.median(ordered):8.1f}  p90 {p90:8.1f}  max {ordered[-1]:8.1f} ms"
    )


async def run(n: int, stopped_runs: int) -> None:
    from supervisor.testing.claude_install import ensure_claude
    from supervisor.testing.fake_api import FakeMessagesAPI

    claude = str(ensure_claude())
    with tempfile.TemporaryDirectory() as tmp, FakeMessagesAPI() as api:
        root = Path(tmp)
        env = api.env(root)

        def tool(i: int) -> str:
            return f"[[api: bash=touch {root}/m{i}; python3 -c 'import time; time.sleep(300)']]"

        acks: list[float] = []
        policy = EscalationPolicy()
        print(f"policy: {policy}")
        async with open_session(STREAM_JSON_ARGS, claude=claude, env=env, cwd=root) as session:
            await (await session.send("warm up")).result()
            for i in range(n):
                turn = await session.send(tool(i))
                await _wait_for(root / f"m{i}")
                report = await session.cancel()
                assert report is not None
                sent, answered = (
                    report.step_ms("interrupt_sent"),
                    report.step_ms("interrupt_answered"),
                )
                if sent is not None and answered is not None:
                    acks.append(answered - sent)
                await turn.result()
        _summary("interrupt acknowledged after", acks)

        totals: list[float] = []
        async with open_session(STREAM_JSON_ARGS, claude=claude, env=env, cwd=root) as session:
            await (await session.send("warm up")).result()
            for i in range(stopped_runs):
                turn = await session.send(tool(1000 + i))
                await _wait_for(root / f"m{1000 + i}")
                assert session.cli_pid is not None
                os.kill(session.cli_pid, signal.SIGSTOP)
                report = await session.cancel()
                assert report is not None
                totals.append(report.total_ms)
                print(f"  stopped CLI: path {report.path}, {report.total_ms} ms, "
                      f"steps {[(s.name, s.ms) for s in report.steps]}")  # fmt: skip
                await turn.result()
        _summary("stopped CLI ready again after", totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20, help="in-band cancels measured")
    parser.add_argument("--stopped", type=int, default=3, help="stopped-CLI recoveries")
    options = parser.parse_args()
    trio.run(run, options.n, options.stopped)


if __name__ == "__main__":
    main()
