"""Tree kill: the supervisor's helper against `killpg` of the CLI's process group.

The subject is the per-session helper the library and the executable both run (the
child subreaper that is the CLI's parent; SIGTERM to it kills the CLI's whole tree and
it then reports `exited` on its status pipe). The "CLI" is benchmarks/tree_cli.py: N
processes, half nested and half `setsid` escapees, every tenth ignoring SIGTERM. The
baseline is what a bridge does without a helper: `killpg` (SIGTERM, then SIGKILL after
the same grace) of the group the CLI was started in, which cannot reach the escapees.

Time runs from the signal to "nothing of the group is left" (baseline) or to the
helper's `exited` report (subject), measured here. Survivors are counted from the pids
the tree wrote, by creation time, and killed afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from supervisor import (
    _hub,  # read-only: the hub, run as the library runs it
    _launch,
)
from supervisor._policy import TREE_GRACE

from .common import (
    Json,
    Progress,
    bench_env,
    clean_up,
    comparison,
    group_arguments,
    interleaved,
    kill_all,
    ms_since,
    now_ns,
    reap_children,
    summary,
    wait_until,
    write_group,
)

TREE_CLI = Path(__file__).resolve().parent / "tree_cli.py"
STUBBORN_EVERY = 10
#: The grace between SIGTERM and SIGKILL, for both sides (the helper's --kill-timeout).
KILL_GRACE = 0.1


def _tree_pids(pidfile: Path, count: int) -> list[psutil.Process]:
    wait_until(
        lambda: pidfile.exists() and len(pidfile.read_text().split()) >= count,
        120,
        f"{count} tree processes",
    )
    procs = []
    for word in pidfile.read_text().split():
        try:
            procs.append(psutil.Process(int(word)))  # remembers the creation time
        except psutil.Error:
            continue
    # Each has written its pid just before exec: wait until they all are `sleep`.
    wait_until(lambda: all(_is_sleep(p) for p in procs), 60, "every tree process to exec sleep")
    return procs


def _is_sleep(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "sleep"
    except psutil.Error:
        return True  # gone already: nothing to wait for


def _survivors(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.Error:
            continue
    return left


def supervisor_kill(count: int, env: dict[str, str], work: Path) -> tuple[float, int]:
    pidfile = work / f"pids-{uuid.uuid4().hex}"
    cli = [sys.executable, str(TREE_CLI), str(count), str(pidfile), str(STUBBORN_EVERY)]
    hub, control = _hub.start()
    devnull = os.open(os.devnull, os.O_RDWR)
    session = None
    try:
        session = _hub.BlockingSession(
            control, cli, kill_timeout=KILL_GRACE, grace=TREE_GRACE, env=env, stdio=(devnull, 1, 2)
        )
        spawned = session.report()
        assert spawned.get("event") == "spawned", spawned
        procs = _tree_pids(pidfile, count)
        start = now_ns()
        session.kill()
        report = session.report()
        elapsed = ms_since(start)
        assert report.get("event") == "exited", report
        left = _survivors(procs)
        kill_all(left)
        return elapsed, len(left)
    finally:
        os.close(devnull)
        if session is not None:
            session.close()
        control.close()  # the hub ends with its last session
        try:
            hub.wait(timeout=30)
        finally:
            if hub.poll() is None:
                hub.kill()
                hub.wait()


def killpg_kill(count: int, env: dict[str, str], work: Path) -> tuple[float, int]:
    pidfile = work / f"pids-{uuid.uuid4().hex}"
    cli = [sys.executable, str(TREE_CLI), str(count), str(pidfile), str(STUBBORN_EVERY)]
    child = subprocess.Popen(cli, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    group = child.pid
    try:
        procs = _tree_pids(pidfile, count)
        members = [psutil.Process(child.pid), *(p for p in procs if _pgid(p) == group)]
        start = now_ns()
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while _survivors(members) and time.monotonic() < deadline:
            reap_children()
            time.sleep(0.002)
        if _survivors(members):
            os.killpg(group, signal.SIGKILL)
            while _survivors(members):
                reap_children()
                time.sleep(0.002)
        elapsed = ms_since(start)
        child.wait(timeout=30)
        left = _survivors(procs)
        kill_all(left)
        return elapsed, len(left)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


def main() -> None:
    options = group_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    progress = Progress("treekill")
    sizes = [10, 100, 1000] if options.quick else [10, 100, 500, 1000]
    trials = 2 if options.quick else 5
    token = uuid.uuid4().hex
    env = bench_env(token)
    # Orphans of the killpg baseline come to us, so that we reap them (not init).
    _launch.become_subreaper()
    comparisons: list[Json] = []
    series: Json = {"sizes": sizes, "kill_grace_s": KILL_GRACE, "points": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
            work = Path(tmp)
            for size in sizes:
                times: dict[str, list[float]] = {"killpg": [], "supervisor": []}
                left: dict[str, list[int]] = {"killpg": [], "supervisor": []}
                steps = list(interleaved(["killpg", "supervisor"], trials))
                for done, (_round, variant, warmup) in enumerate(steps, 1):
                    progress.trial(f"N={size} {variant}", done, len(steps))
                    run = supervisor_kill if variant == "supervisor" else killpg_kill
                    elapsed, survivors = run(size, env, work)
                    if not warmup:
                        times[variant].append(elapsed)
                        left[variant].append(survivors)
                base = summary("killpg of the CLI's group", times["killpg"])
                subject = summary("supervisor (helper)", times["supervisor"])
                base["survivors"] = max(left["killpg"])
                subject["survivors"] = max(left["supervisor"])
                target = met = value = None
                if size == 1000:
                    target = "1000 processes killed in < 250 ms, 0 survivors"
                    met = subject["median"] < 250 and subject["survivors"] == 0
                    value = f"{subject['median']:.0f} ms, {subject['survivors']} survivors"
                comp = comparison(
                    f"tree kill, N={size}",
                    "ms",
                    base,
                    subject,
                    target=target,
                    met=met,
                    value=value,
                    note=f"survivors: killpg {base['survivors']}, "
                    f"supervisor {subject['survivors']}; SIGTERM-to-SIGKILL grace "
                    f"{KILL_GRACE * 1000:.0f} ms, every {STUBBORN_EVERY}th process ignores "
                    "SIGTERM",
                )
                progress.result(comp)
                comparisons.append(comp)
                series["points"].append(
                    {
                        "n": size,
                        "killpg_ms": base["median"],
                        "supervisor_ms": subject["median"],
                        "killpg_survivors": base["survivors"],
                        "supervisor_survivors": subject["survivors"],
                    }
                )
    finally:
        clean_up(token, progress)
    write_group(options.out, "treekill", comparisons, series)


if __name__ == "__main__":
    main()
