"""Many sessions: N library sessions on the bundled fake CLI, in this one process.

At each N (sessions are added, never restarted): the supervisor's own memory per
session (this host process's USS growth since before the first session, plus the USS of
every per-session helper; the CLI processes under the helpers are not counted), the
CPU the host and the helpers use while every session is idle, and the latency of an
in-band cancel (each report's path is asserted): one session at a time while the others
idle, and every session at once (time until the last one is ready), against a single
session's cancel at N=1 and against as many bare fake CLIs sent the interrupt at once
(the floor: N processes answering on the same cores). "Per-session helper" is the
shared hub now: one for all N.
"""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import trio

import supervisor

from .common import (
    STREAM_ARGS,
    Json,
    Progress,
    bench_env,
    clean_up,
    comparison,
    group_arguments,
    interleaved,
    ms_since,
    now_ns,
    summary,
    write_group,
)

TOOL = "run it [[fake: tool=300]]"


def is_tool_call(frame: dict[str, object]) -> bool:
    message = frame.get("message")
    content = message.get("content", []) if isinstance(message, dict) else []
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_use" for block in content
    )


async def start_tool(session: supervisor.Session) -> supervisor.Turn:
    """A turn whose (fake) tool runs: cancelling it takes the in-band path."""
    turn = await session.send(TOOL)
    with trio.fail_after(120):
        async for frame in turn:
            if is_tool_call(frame):
                return turn
    raise RuntimeError(f"the turn ended before its tool ran: {await turn.result()}")


async def cancel_one(session: supervisor.Session) -> float:
    turn = await start_tool(session)
    start = now_ns()
    report = await session.cancel()
    elapsed = ms_since(start)
    assert report is not None and report.path == "interrupt", report
    await turn.result()
    return elapsed


async def cancel_all(
    sessions: list[supervisor.Session], paths: dict[str, int]
) -> tuple[float, list[float]]:
    """(ms until the last session is ready, each session's own ms).

    The turns are all in a tool call, so each cancel starts in-band; under the load of N
    simultaneous cancels a result may miss the interrupt deadline and the ladder climb.
    That is what a user would get, so it is counted in `paths` (a finding), not refused.
    """
    turns: list[supervisor.Turn] = []

    async def begin(session: supervisor.Session) -> None:
        turns.append(await start_tool(session))

    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(begin, session)
    each: list[float] = []

    async def cancel(session: supervisor.Session, start: int) -> None:
        report = await session.cancel()
        each.append(ms_since(start))
        assert report is not None, "a turn was running, yet nothing was cancelled"
        paths[report.path] = paths.get(report.path, 0) + 1

    start = now_ns()
    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(cancel, session, start)
    total = ms_since(start)
    for turn in turns:
        await turn.result()
    return total, each


class BareCli:
    """A fake CLI run bare, on pipes, as a bridge without a supervisor runs it."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def write(self, frame: Json) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(frame).encode() + b"\n")

    async def until(self, wanted: Callable[[Json], bool]) -> None:
        assert self.process.stdout is not None
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.strip() and wanted(json.loads(line)):
                    return
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError("the bare fake CLI ended its output")
            self._buffer += chunk


async def bare_cancel_all(command: list[str], env: dict[str, str], cwd: Path, count: int) -> float:
    """The floor under `cancel_all`: `count` bare fake CLIs, each in a tool call, sent
    the in-band interrupt at once; ms until the last `result` (a bare CLI's "ready")."""
    clis: list[BareCli] = []
    try:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd
            )
            clis.append(BareCli(process))

        async def begin(cli: BareCli) -> None:
            await cli.write({"type": "user", "message": {"role": "user", "content": TOOL}})
            with trio.fail_after(120):
                await cli.until(is_tool_call)

        async with trio.open_nursery() as nursery:
            for cli in clis:
                nursery.start_soon(begin, cli)

        async def cancel(cli: BareCli) -> None:
            interrupt = {"subtype": "interrupt"}
            await cli.write({"type": "control_request", "request_id": "i", "request": interrupt})
            await cli.until(lambda frame: frame.get("type") == "result")

        start = now_ns()
        async with trio.open_nursery() as nursery:
            for cli in clis:
                nursery.start_soon(cancel, cli)
        return ms_since(start)
    finally:
        for cli in clis:
            if cli.process.stdin is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await cli.process.stdin.aclose()
        for cli in clis:
            with trio.move_on_after(10):
                await cli.process.wait()
            if cli.process.returncode is None:
                cli.process.kill()
                await cli.process.wait()


def memory_and_helpers() -> tuple[int, list[psutil.Process]]:
    me = psutil.Process()
    return me.memory_full_info().uss, me.children()


def helper_uss(helpers: list[psutil.Process]) -> int:
    total = 0
    for helper in helpers:
        with contextlib.suppress(psutil.Error):
            total += helper.memory_full_info().uss
    return total


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


async def run(quick: bool, out: Path) -> None:
    progress = Progress("sessions")
    sizes = [1, 50, 200]
    singles = 3 if quick else 10
    alls = 1 if quick else 3
    idle_window = 2.0 if quick else 5.0
    token = uuid.uuid4().hex
    comparisons: list[Json] = []
    points: list[Json] = []
    single_at: dict[int, list[float]] = {}
    all_at: dict[int, list[float]] = {}
    bare_at: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
        root = Path(tmp)
        shim = root / "claude"
        shim.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m supervisor.testing.fake_claude "$@"\n'
        )
        shim.chmod(0o755)
        env = bench_env(token)
        env["HOME"] = str(root)

        def opener() -> contextlib.AbstractAsyncContextManager[supervisor.Session]:
            return supervisor.open_session(STREAM_ARGS, claude=shim, env=env, cwd=root)

        try:
            progress.say("warm-up session")
            async with opener() as warm:
                await (await warm.send("hello")).result()
                await cancel_one(warm)
            gc.collect()
            base_uss, _ = memory_and_helpers()
            sessions: list[supervisor.Session] = []
            async with contextlib.AsyncExitStack() as stack:
                for size in sizes:
                    progress.say(f"opening sessions up to N={size}")
                    fresh = []
                    while len(sessions) < size:
                        session = await stack.enter_async_context(opener())
                        sessions.append(session)
                        fresh.append(session)
                    async with trio.open_nursery() as nursery:
                        for session in fresh:
                            nursery.start_soon(first_turn, session)
                    gc.collect()
                    await trio.sleep(0.5)
                    host_uss, helpers = memory_and_helpers()
                    helpers_uss = helper_uss(helpers)
                    growth = host_uss - base_uss
                    per_session = (growth + helpers_uss) / size / 1e6
                    watched = [psutil.Process(), *helpers]
                    cpu_before, wall = cpu_seconds(watched), time.monotonic()
                    progress.say(f"N={size}: idle CPU over {idle_window:.0f} s")
                    await trio.sleep(idle_window)
                    idle_cpu = (cpu_seconds(watched) - cpu_before) / (time.monotonic() - wall)

                    single: list[float] = []
                    steps = list(interleaved(["single"], singles))
                    for done, (_round, _name, warmup) in enumerate(steps, 1):
                        progress.trial(f"N={size} one cancel at a time", done, len(steps))
                        elapsed = await cancel_one(sessions[done % size])
                        if not warmup:
                            single.append(elapsed)
                    at_once: list[float] = []
                    each: list[float] = []
                    paths: dict[str, int] = {}
                    steps = list(interleaved(["all"], alls))
                    for done, (_round, _name, warmup) in enumerate(steps, 1):
                        progress.trial(f"N={size} all {size} cancelled at once", done, len(steps))
                        total, latencies = await cancel_all(sessions, paths)
                        if not warmup:
                            at_once.append(total)
                            each.extend(latencies)
                    single_at[size] = single
                    all_at[size] = at_once
                    point = {
                        "n": size,
                        "host_growth_mb": growth / 1e6,
                        "helpers_uss_mb": helpers_uss / 1e6,
                        "per_session_mb": per_session,
                        "idle_cpu_percent": idle_cpu * 100,
                        "single_cancel_ms": summary("single", single, keep=False)["median"],
                        "all_at_once_ms": summary("all", at_once, keep=False)["median"],
                        "all_at_once_each_median_ms": summary("each", each, keep=False)["median"],
                        "all_at_once_paths": paths,
                    }
                    points.append(point)
                    progress.say(
                        f"  N={size}: {per_session:.2f} MB per session (host +{growth / 1e6:.1f}"
                        f" MB, helpers {helpers_uss / 1e6:.1f} MB USS), idle CPU "
                        f"{idle_cpu * 100:.2f}% of a core, one cancel "
                        f"{point['single_cancel_ms']:.1f} ms, all at once "
                        f"{point['all_at_once_ms']:.1f} ms (paths {paths})"
                    )
                progress.say(f"closing {len(sessions)} sessions")
            largest = sizes[-1]
            steps = list(interleaved(["bare"], alls))
            for done, (_round, _name, warmup) in enumerate(steps, 1):
                progress.trial(f"{largest} bare fake CLIs cancelled at once", done, len(steps))
                elapsed = await bare_cancel_all([str(shim), *STREAM_ARGS], env, root, largest)
                if not warmup:
                    bare_at.append(elapsed)
        finally:
            clean_up(token, progress)

    largest = sizes[-1]
    first, last = points[0], points[-1]
    base = summary("N=1", [first["per_session_mb"]])
    subject = summary(f"N={largest}", [last["per_session_mb"]])
    comparisons.append(
        comparison(
            "supervisor memory per session",
            "MB",
            base,
            subject,
            target="< 1 MB per session at N=200",
            met=last["per_session_mb"] < 1 if largest == 200 else None,
            value=f"{last['per_session_mb']:.2f} MB at N={largest}",
            note=f"host growth {last['host_growth_mb']:.1f} MB + helpers "
            f"{last['helpers_uss_mb']:.1f} MB USS at N={largest}; idle CPU "
            f"{last['idle_cpu_percent']:.2f}% of a core",
        )
    )
    base = summary("one session at N=1", single_at[1])
    subject = summary(f"all {largest} at once", all_at[largest])
    ratio = subject["median"] / base["median"]
    comparisons.append(
        comparison(
            f"cancel to ready, all {largest} sessions at once vs one",
            "ms",
            base,
            subject,
            target="all 200 at once within 3x of a single session's",
            met=ratio <= 3 if largest == 200 else None,
            value=f"{ratio:.1f}x at N={largest}",
            note=f"paths taken by the {largest} simultaneous cancels (all rounds): "
            f"{last['all_at_once_paths']}; each starts in-band, any other path is the "
            "interrupt deadline missed under load",
        )
    )
    comparisons.append(
        comparison(
            f"cancel to ready, all {largest} at once: bare CLIs vs sessions",
            "ms",
            summary(f"{largest} bare fake CLIs (result)", bare_at),
            summary(f"{largest} sessions (ready)", all_at[largest]),
            note="the floor: the same fake CLIs, each sent the in-band interrupt at once "
            "without a supervisor, on the same cores",
        )
    )
    comparisons.append(
        comparison(
            f"cancel to ready, one at a time at N={largest} vs N=1",
            "ms",
            summary("N=1", single_at[1]),
            summary(f"N={largest}", single_at[largest]),
        )
    )
    for comp in comparisons:
        progress.result(comp)
    write_group(out, "sessions", comparisons, {"points": points})


async def first_turn(session: supervisor.Session) -> None:
    with trio.fail_after(120):
        await (await session.send("hello")).result()


def main() -> None:
    options = group_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    trio.run(run, options.quick, options.out)


if __name__ == "__main__":
    main()
