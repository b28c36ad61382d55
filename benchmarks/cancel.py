"""Cancel to ready, per path, on the real CLI (pinned) against the fake Messages API.

In-band: the bare CLI with its `control_request` interrupt against the same cancel
through `claude-supervisor` (a `cancel_turn` frame) and through the library
(`Session.cancel()`), during a long Bash tool call. The bare CLI is ready when its
`result` arrives; the supervisor when its `supervisor_cancel` frame arrives (executable)
or `cancel()` returns (library).

Kill: what bridges do (kill the CLI's process group and respawn it with `--resume`,
ready when the new CLI answers `initialize`) against the supervisor's ladder on a CLI
stopped with SIGSTOP, which answers nothing: the ladder must climb to the kill rung, and
the benchmark asserts that each report's path is the one measured. The tool leaves a
`setsid` escapee; what each side leaves running is counted, then killed.

Every timer is here (`perf_counter_ns`); trials alternate between the variants, and the
first round is dropped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import trio

import supervisor
from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI

from .common import (
    TOKEN_VARIABLE,
    Json,
    Progress,
    alive,
    clean_up,
    comparison,
    group_arguments,
    interleaved,
    kill_all,
    ms_since,
    now_ns,
    summary,
    with_token,
    write_group,
)
from .relay import wrapper_command

ARGS = list(STREAM_JSON_ARGS)
INTERRUPT = {"type": "control_request", "request_id": "", "request": {"subtype": "interrupt"}}
INITIALIZE = {
    "type": "control_request",
    "request_id": "bench-init",
    "request": {"subtype": "initialize", "hooks": None},
}
#: The ladder's deadlines for the stopped-CLI cancels (seconds).
LADDER = supervisor.EscalationPolicy(interrupt_timeout=0.2, sigint_timeout=0.2, kill_timeout=0.2)


def long_tool(marker: Path, *, escapee: bool = False) -> str:
    """A Bash call that runs until killed; it touches `marker` once it runs."""
    sleeper = "python3 -c 'import time; time.sleep(300)'"
    command = f"touch {marker}; "
    if escapee:
        command += f"setsid -f {sleeper} >/dev/null 2>&1 </dev/null; "
    return f"[[api: bash={command}{sleeper}]]"


async def wait_for_file(path: Path, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not await trio.Path(path).exists():
            await trio.sleep(0.005)


class AsyncPipe:
    """A stream-json process on trio pipes; each frame stamped when its bytes arrived."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""
        self._stamp = 0

    @classmethod
    async def start(cls, command: list[str], env: dict[str, str], cwd: Path) -> AsyncPipe:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
        return cls(process)

    async def write(self, frame: Json) -> int:
        assert self.process.stdin is not None
        data = json.dumps(frame).encode() + b"\n"
        start = now_ns()
        await self.process.stdin.send_all(data)
        return start

    async def send(self, text: str) -> int:
        return await self.write({"type": "user", "message": {"role": "user", "content": text}})

    async def until(self, wanted: Callable[[Json], bool]) -> tuple[int, Json]:
        assert self.process.stdout is not None
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                chunk = await self.process.stdout.receive_some(1 << 20)
                self._stamp = now_ns()
                if not chunk:
                    raise RuntimeError("the process's output ended before the frame awaited")
                self._buffer += chunk
                continue
            raw, self._buffer = self._buffer[: newline + 1], self._buffer[newline + 1 :]
            frame = json.loads(raw)
            if isinstance(frame, dict) and wanted(frame):
                return self._stamp, frame

    async def close(self) -> None:
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(20):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def is_type(kind: str, subtype: str | None = None) -> Callable[[Json], bool]:
    return lambda f: f.get("type") == kind and (subtype is None or f.get("subtype") == subtype)


class Bench:
    def __init__(self, root: Path, claude: str, api: FakeMessagesAPI, token: str) -> None:
        self.root = root
        self.claude = claude
        self.api = api
        self.token = token
        self.count = 0
        self.tokens: dict[str, str] = {}

    def place(self, name: str) -> tuple[Path, dict[str, str]]:
        """A fresh HOME and cwd for one variant; its processes carry the variant's token."""
        home, work = self.root / name / "home", self.root / name / "work"
        home.mkdir(parents=True)
        work.mkdir(parents=True)
        self.tokens[name] = f"{self.token}-{name}"
        return work, self.api.env(home, **{TOKEN_VARIABLE: self.tokens[name]})

    def marker(self) -> Path:
        self.count += 1
        return self.root / f"marker-{self.count}"


# ------------------------------------------------------------------ in-band cancels


async def bare_inband(pipe: AsyncPipe, bench: Bench) -> tuple[float, float]:
    marker = bench.marker()
    await pipe.send(long_tool(marker))
    await wait_for_file(marker)
    start = await pipe.write({**INTERRUPT, "request_id": f"bench-{bench.count}"})
    stamp, result = await pipe.until(is_type("result"))
    # The in-band path: the CLI ended the turn itself and lives on.
    assert result.get("subtype") == "error_during_execution", result
    assert pipe.process.returncode is None
    return ms_since(start, stamp), ms_since(start, stamp)


async def wrapper_inband(pipe: AsyncPipe, bench: Bench) -> tuple[float, float]:
    marker = bench.marker()
    await pipe.send(long_tool(marker))
    await wait_for_file(marker)
    start = await pipe.write({"type": "cancel_turn"})
    result_at: int | None = None
    while True:
        stamp, frame = await pipe.until(
            lambda f: f.get("type") == "result" or f.get("subtype") == "supervisor_cancel"
        )
        if frame.get("type") == "result":
            result_at = stamp
            continue
        report = frame.get("report") or {}
        assert report.get("path") == "interrupt", report  # the path measured
        assert result_at is not None, "supervisor_cancel came before the result"
        return ms_since(start, result_at), ms_since(start, stamp)


async def library_inband(session: supervisor.Session, bench: Bench) -> tuple[float, float]:
    marker = bench.marker()
    turn = await session.send(long_tool(marker))
    await wait_for_file(marker)
    result_at: list[int] = []

    async def await_result() -> None:
        await turn.result()
        result_at.append(now_ns())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(await_result)
        await trio.lowlevel.checkpoint()  # the result task waits first
        start = now_ns()
        report = await session.cancel()
        ready = now_ns()
    assert report is not None and report.path == "interrupt", report
    return ms_since(start, result_at[0]), ms_since(start, ready)


# ------------------------------------------------------------------- kill cancels


def tool_processes(token: str, exclude: set[int]) -> set[psutil.Process]:
    return set(with_token(token, exclude))


async def bridge_kill(state: dict[str, object], bench: Bench, settle: float) -> tuple[float, int]:
    """Kill the CLI's group, respawn with --resume, until it answers initialize."""
    pipe = state["pipe"]
    assert isinstance(pipe, AsyncPipe)
    work, env = state["work"], state["env"]
    assert isinstance(work, Path) and isinstance(env, dict)
    marker = bench.marker()
    await pipe.send(long_tool(marker, escapee=True))
    _, init = await pipe.until(is_type("system", "init"))
    session_id = init["session_id"]
    await wait_for_file(marker)
    await trio.sleep(settle)  # the escapee is out
    before = tool_processes(bench.tokens["bridge"], {pipe.process.pid})
    start = now_ns()
    os.killpg(pipe.process.pid, signal.SIGKILL)
    await pipe.process.wait()
    new = await AsyncPipe.start([bench.claude, *ARGS, "--resume", session_id], env, work)
    await new.write(INITIALIZE)
    ready, _ = await new.until(is_type("control_response"))
    elapsed = ms_since(start, ready)
    left = [p for p in before if alive(p)]
    kill_all(left)
    state["pipe"] = new
    return elapsed, len(left)


async def supervisor_kill(
    session: supervisor.Session, bench: Bench, settle: float
) -> tuple[float, int]:
    """The ladder on a stopped CLI: interrupt and SIGINT go unanswered, then the kill."""
    marker = bench.marker()
    turn = await session.send(long_tool(marker, escapee=True))
    await wait_for_file(marker)
    await trio.sleep(settle)
    cli_pid = session.cli_pid
    assert cli_pid is not None
    helper = psutil.Process(cli_pid).ppid()
    before = tool_processes(bench.tokens["ladder"], {helper})
    os.kill(cli_pid, signal.SIGSTOP)
    start = now_ns()
    report = await session.cancel()
    elapsed = ms_since(start)
    assert report is not None and report.path == "kill", report  # the path measured
    await turn.result()
    left = [p for p in before if alive(p)]
    kill_all(left)
    return elapsed, len(left)


async def run(quick: bool, out: Path) -> None:
    progress = Progress("cancel")
    trials = 3 if quick else 10
    kill_trials = 2 if quick else 6
    token = uuid.uuid4().hex
    claude = str(ensure_claude())
    comparisons: list[Json] = []
    series: Json = {}
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp, FakeMessagesAPI() as api:
        bench = Bench(Path(tmp), claude, api, token)
        try:
            await inband(bench, trials, progress, comparisons, series)
            await kills(bench, kill_trials, progress, comparisons, series)
        finally:
            for variant_token in bench.tokens.values():
                clean_up(variant_token, progress)
    write_group(out, "cancel", comparisons, series)


async def inband(
    bench: Bench, trials: int, progress: Progress, comparisons: list[Json], series: Json
) -> None:
    work_b, env_b = bench.place("bare")
    work_w, env_w = bench.place("wrapper")
    work_l, env_l = bench.place("library")
    bare = await AsyncPipe.start([bench.claude, *ARGS], env_b, work_b)
    wrapper = await AsyncPipe.start(
        [*wrapper_command(), "--claude", bench.claude, "--", *ARGS], env_w, work_w
    )
    results: dict[str, list[float]] = {"bare CLI": [], "claude-supervisor": [], "library": []}
    readies: dict[str, list[float]] = {name: [] for name in results}
    try:
        async with supervisor.open_session(
            ARGS, claude=bench.claude, env=env_l, cwd=work_l
        ) as session:
            steps = list(interleaved(list(results), trials))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                progress.trial(f"in-band cancel, {name}", done, len(steps))
                if name == "bare CLI":
                    result, ready = await bare_inband(bare, bench)
                elif name == "claude-supervisor":
                    result, ready = await wrapper_inband(wrapper, bench)
                else:
                    result, ready = await library_inband(session, bench)
                if not warmup:
                    results[name].append(result)
                    readies[name].append(ready)
    finally:
        await bare.close()
        await wrapper.close()
    base = summary("bare CLI (result)", results["bare CLI"])
    for name in ("claude-supervisor", "library"):
        subject = summary(f"{name} (result)", results[name])
        bound = max(base["median"] * 1.1, base["median"] + 2)
        comp = comparison(
            f"in-band cancel to result, {name}",
            "ms",
            base,
            subject,
            target="result within 1.1x of the bare CLI or +2 ms",
            met=subject["median"] <= bound,
            value=f"+{subject['median'] - base['median']:.1f} ms "
            f"({subject['median'] / base['median']:.2f}x)",
        )
        progress.result(comp)
        comparisons.append(comp)
        subject = summary(f"{name} (ready)", readies[name])
        comp = comparison(
            f"in-band cancel to ready, {name}",
            "ms",
            base,
            subject,
            target="ready within +5 ms of the bare CLI's result",
            met=subject["median"] <= base["median"] + 5,
            value=f"+{subject['median'] - base['median']:.1f} ms",
        )
        progress.result(comp)
        comparisons.append(comp)
    series["inband"] = {
        "result_ms": {name: results[name] for name in results},
        "ready_ms": {name: readies[name] for name in readies},
    }


async def kills(
    bench: Bench, trials: int, progress: Progress, comparisons: list[Json], series: Json
) -> None:
    settle = 0.3
    work_b, env_b = bench.place("bridge")
    work_s, env_s = bench.place("ladder")
    state: dict[str, object] = {
        "pipe": await AsyncPipe.start([bench.claude, *ARGS], env_b, work_b),
        "work": work_b,
        "env": env_b,
    }
    times: dict[str, list[float]] = {"bridge": [], "supervisor": []}
    left: dict[str, list[int]] = {"bridge": [], "supervisor": []}
    try:
        async with supervisor.open_session(
            ARGS, claude=bench.claude, env=env_s, cwd=work_s, policy=LADDER
        ) as session:
            steps = list(interleaved(list(times), trials))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                progress.trial(f"kill and respawn, {name}", done, len(steps))
                if name == "bridge":
                    elapsed, survivors = await bridge_kill(state, bench, settle)
                else:
                    elapsed, survivors = await supervisor_kill(session, bench, settle)
                if not warmup:
                    times[name].append(elapsed)
                    left[name].append(survivors)
    finally:
        pipe = state["pipe"]
        assert isinstance(pipe, AsyncPipe)
        await pipe.close()
    base = summary("bridge: killpg + respawn --resume", times["bridge"])
    subject = summary("supervisor ladder, stopped CLI", times["supervisor"])
    base["survivors"] = max(left["bridge"])
    subject["survivors"] = max(left["supervisor"])
    deadlines = (LADDER.interrupt_timeout + LADDER.sigint_timeout + LADDER.kill_timeout) * 1000
    comp = comparison(
        "kill and respawn to ready",
        "ms",
        base,
        subject,
        note=f"processes left running: bridge {base['survivors']}, supervisor "
        f"{subject['survivors']}; the ladder waits its deadlines first "
        f"(interrupt {LADDER.interrupt_timeout * 1000:.0f} ms + SIGINT "
        f"{LADDER.sigint_timeout * 1000:.0f} ms, kill grace {LADDER.kill_timeout * 1000:.0f} ms)",
    )
    progress.result(comp)
    comparisons.append(comp)
    sums = summary("sum of configured deadlines", [deadlines] * len(times["supervisor"]))
    comp = comparison(
        "full ladder vs the sum of its deadlines",
        "ms",
        sums,
        summary("full ladder, stopped CLI", times["supervisor"], keep=False),
        note=f"overhead over the deadlines: {subject['median'] - deadlines:+.0f} ms "
        "(kill, reap and respawn with --resume to ready)",
    )
    progress.result(comp)
    comparisons.append(comp)
    series["kill"] = {"ms": times, "survivors": left, "deadlines_ms": deadlines}


def main() -> None:
    options = group_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    trio.run(run, options.quick, options.out)


if __name__ == "__main__":
    main()
