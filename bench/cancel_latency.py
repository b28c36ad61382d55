"""How long a cancel takes on each rung, and what the in-band rung saves.

Not a test: run it on purpose, it prints numbers and ratios.

    .venv/bin/python bench/cancel_latency.py            # the bundled fake CLI
    .venv/bin/python bench/cancel_latency.py --real     # the pinned real CLI, offline

Each rung is provoked as in the test suite: a long tool call cancelled in-band; a CLI
that ignores the interrupt (fake) or an interrupt deadline shorter than its answer
(real) for SIGINT; a stopped CLI for the kill. "kill at once" is what bridges without a
supervisor do: kill the CLI and respawn it with --resume, never asking in-band.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

from supervisor import EscalationPolicy, Session, open_session

ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
REAL_ARGS = [*ARGS, "--allowedTools", "Bash"]


async def _wait_for(path: Path) -> None:
    while not await trio.Path(path).exists():
        await trio.sleep(0.01)


async def measure(
    session: Session, prompt: Callable[[int], str], marker: Callable[[int], Path | None], n: int,
    before_cancel: Callable[[Session], None] = lambda s: None,
) -> list[float]:  # fmt: skip
    totals = []
    for i in range(n):
        turn = await session.send(prompt(i))
        path = marker(i)
        if path is not None:
            await _wait_for(path)
        else:
            async for frame in turn:
                content = frame.get("message", {}).get("content", [])
                if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
                    break
        before_cancel(session)
        report = await session.cancel()
        assert report is not None
        totals.append(report.total_ms)
        await turn.result()
    return totals


def stop_cli(session: Session) -> None:
    if session.cli_pid is not None:
        os.kill(session.cli_pid, signal.SIGSTOP)


def show(name: str, totals: list[float], baseline: float | None) -> float:
    median = statistics.median(totals)
    p90 = sorted(totals)[max(0, int(len(totals) * 0.9) - 1)]
    ratio = ""
    if baseline:
        factor = baseline / median
        ratio = (
            f"{factor:6.1f}x faster than kill at once"
            if factor >= 1
            else f"{1 / factor:6.1f}x slower than kill at once"
        )
    print(f"{name:<28} median {median:8.1f} ms   p90 {p90:8.1f} ms   {ratio}")
    return median


async def run(real: bool, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = dict(os.environ, HOME=str(root))
        api = None
        if real:
            from supervisor.testing.claude_install import ensure_claude
            from supervisor.testing.fake_api import FakeMessagesAPI

            claude = str(ensure_claude())
            api = FakeMessagesAPI()
            env = api.env(root)
            args = REAL_ARGS
        else:
            shim = root / "claude"
            shim.write_text(
                f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"\n'
            )
            shim.chmod(0o755)
            claude, args = str(shim), ARGS

        def tool(i: int) -> str:
            if real:
                return f"[[api: bash=touch {root}/m{i}; python3 -c 'import time; time.sleep(300)']]"
            return "[[fake: tool=300]]"

        def marker(i: int) -> Path | None:
            return root / f"m{i}" if real else None

        counter = iter(range(10_000))

        def fresh(i: int) -> str:
            return tool(next(counter) + 1000)

        def fresh_marker(i: int) -> Path | None:
            return None

        async def scenario(
            policy: EscalationPolicy,
            prompt: Callable[[int], str],
            mark: Callable[[int], Path | None],
            hook: Callable[[Session], None] = lambda s: None,
        ) -> list[float]:
            async with open_session(args, claude=claude, policy=policy, env=env, cwd=root) as s:
                await (await s.send("warm up")).result()
                return await measure(s, prompt, mark, n, hook)

        default = EscalationPolicy()
        at_once = EscalationPolicy(interrupt_timeout=0.001, sigint_timeout=0.001)
        print(f"{'real CLI' if real else 'fake CLI'}: {n} cancels each; {default}")
        kill_now = statistics.median(await scenario(at_once, fresh, fresh_marker))
        inband = await scenario(default, tool, marker)
        show("in-band interrupt", inband, kill_now)
        if real:
            sigint = await scenario(EscalationPolicy(interrupt_timeout=0.001), fresh, fresh_marker)
        else:
            sigint = await scenario(default, lambda i: "[[fake: tool=300, ignore_interrupt]]",
                                    fresh_marker)  # fmt: skip
        show("SIGINT rung (+respawn)", sigint, kill_now)
        killed = await scenario(EscalationPolicy(interrupt_timeout=0.2, sigint_timeout=0.2),
                                fresh, fresh_marker, stop_cli)  # fmt: skip
        show("kill rung, CLI stopped", killed, kill_now)
        show("kill at once (+respawn)", [kill_now], None)
        if api is not None:
            api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--real", action="store_true", help="use the pinned real CLI, offline")
    parser.add_argument("-n", type=int, default=10, help="cancels per rung (default 10)")
    options = parser.parse_args()
    trio.run(run, options.real, options.n)


if __name__ == "__main__":
    main()
