"""The helper's tree kill against hostile trees: survivors and time, over many runs.

Not a test: run it on purpose, it prints numbers.

    .venv/bin/python benchmarks/tree_kill.py [--runs N]

Two trees, each run as the "tool" of a stand-in CLI under a real helper, which is then
sent SIGTERM (what `KillTree` does):

- a fork-and-exit chain of 3000 links (tests/fork_chain.py), plain and with links that
  ignore SIGTERM, killed while it forks: how many of its processes are alive afterwards,
  and how long the helper took to report (a helper that never reports has hung);
- a stopped tree (the CLI and its tool, SIGSTOPped) with a kill_timeout of 0.5 s: how
  long the kill took (a stopped process acts on SIGTERM only once continued).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from supervisor import _hub as hub
from supervisor import _tree as tree
from supervisor._policy import TREE_GRACE

CHAIN = str(Path(__file__).parent.parent / "tests" / "fork_chain.py")
TOKEN = "TREE_KILL_BENCH_TOKEN"


def _cli(tool: list[str]) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "subprocess.Popen(sys.argv[1:], start_new_session=True)\n"
        "time.sleep(300)",
        *tool,
    ]


def _alive(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TOKEN) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _clean_up(token: str) -> None:
    """Whatever a failed kill left (a chain may still be forking): the fixed tree kill."""

    def listing() -> list[tree.Proc]:
        return [proc for proc in map(tree.Proc.of, _alive(token)) if proc is not None]

    tree.terminate(listing, timeout=0.2, grace=TREE_GRACE)


def _run(tool: list[str], kill_timeout: float, ready: Path, stop: bool) -> tuple[float, int]:
    """Seconds from the kill request to the hub's report (inf: it hung), and survivors."""
    token = uuid.uuid4().hex
    process, control = hub.start()
    session = hub.BlockingSession(
        control,
        _cli(tool),
        kill_timeout=kill_timeout,
        grace=TREE_GRACE,
        env={**os.environ, TOKEN: token},
    )
    try:
        assert session.report().get("event") == "spawned"
        while not ready.exists():
            time.sleep(0.005)
        if stop:
            for proc in _alive(token):
                proc.suspend()
        start = time.monotonic()
        session.kill()
        session.sock.settimeout(15)
        try:
            assert session.report().get("event") == "exited"
            took = time.monotonic() - start
        except TimeoutError:
            took = float("inf")
        time.sleep(0.2)
        survivors = len(_alive(token))
        return took, survivors
    finally:
        session.close()
        control.close()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        _clean_up(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("chain", []), ("chain, links ignore SIGTERM", ["stubborn"])):
            results = []
            for i in range(runs):
                ready = Path(tmp) / f"{len(extra)}-{i}"
                tool = [sys.executable, CHAIN, "3000", str(ready), *extra]
                results.append(_run(tool, 0.5, ready, stop=False))
            hung = sum(1 for took, _ in results if took == float("inf"))
            left = sum(1 for _, survivors in results if survivors)
            done = [took for took, _ in results if took != float("inf")]
            worst = f"{max(done) * 1000:.0f} ms" if done else "-"
            print(f"{name}: {left} of {runs} runs left processes; helper hung in {hung}; "
                  f"slowest report {worst}")  # fmt: skip
        times = []
        for i in range(runs):
            ready = Path(tmp) / f"stopped-{i}"
            tool = [
                sys.executable,
                "-c",
                f"open({str(ready)!r}, 'w'); import time; time.sleep(300)",
            ]
            took, _ = _run(tool, 0.5, ready, stop=True)
            times.append(took * 1000)
        print(f"stopped tree, kill_timeout 500 ms: kill took {statistics.median(times):.0f} ms "
              f"median, {max(times):.0f} ms max")  # fmt: skip


if __name__ == "__main__":
    main()
