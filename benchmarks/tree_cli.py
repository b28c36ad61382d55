"""A stand-in "CLI" whose tools left a hostile process tree: the tree-kill benchmark's subject.

    python benchmarks/tree_cli.py N PIDFILE STUBBORN_EVERY

Starts N `sleep` processes and then waits: half nested (chains of up to ten, each the
parent of the next, in this process's group) and half `setsid` escapees (double fork, so
they are re-parented away from this process and out of its group and session). Every
STUBBORN_EVERY-th process ignores SIGTERM (SIG_IGN survives exec). Each process appends
its pid to PIDFILE before it execs, so the benchmark knows the whole tree once the file
has N lines. Standard library only, fork without a new interpreter: 1000 processes start
in a few seconds even on a loaded machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time

SLEEP = "/bin/sleep" if os.path.exists("/bin/sleep") else "/usr/bin/sleep"
CHAIN = 10


def become_sleeper(pidfile: int, stubborn: bool) -> None:
    """Record this pid, then turn into `sleep 600` (ignoring SIGTERM if stubborn)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.write(pidfile, f"{os.getpid()}\n".encode())
    try:
        os.execv(SLEEP, ["sleep", "600"])
    finally:
        os._exit(127)


def chain(pidfile: int, indices: list[int], stubborn_every: int) -> None:
    """Fork a chain: each process forks the next one, then becomes a sleeper."""
    if not indices or os.fork() != 0:
        return  # the CLI itself goes on starting the other chains
    for position, index in enumerate(indices):
        if position + 1 < len(indices) and os.fork() == 0:
            continue  # the new child takes the next place in the chain
        become_sleeper(pidfile, index % stubborn_every == 0)


def escapee(pidfile: int, index: int, stubborn_every: int) -> None:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            become_sleeper(pidfile, index % stubborn_every == 0)
        os._exit(0)
    os.waitpid(pid, 0)


def main(argv: list[str]) -> int:
    count, path, stubborn_every = int(argv[0]), argv[1], max(1, int(argv[2]))
    pidfile = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    nested = count // 2
    indices = list(range(nested))
    for start in range(0, nested, CHAIN):
        chain(pidfile, indices[start : start + CHAIN], stubborn_every)
    for index in range(nested, count):
        escapee(pidfile, index, stubborn_every)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
