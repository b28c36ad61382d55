"""Process trees: the only module that knows about psutil, signals and Linux specifics.

Why a helper process. The CLI's Bash tool runs its shells in their own session, and a
tool may `setsid` a grandchild that is then re-parented away: neither is reached by
signalling the CLI's process group, and once a parent dies its orphans no longer show up
as anyone's descendants. A *child subreaper* keeps them: orphans in its subtree are
re-parented to it, so "everything the CLI ever started" stays "every descendant of the
subreaper". Being a subreaper is process-wide, though, and a library must not make its
host program adopt unrelated orphans. So each session runs a tiny helper, this file run
as a script, that is the subreaper and the CLI's parent:

    supervisor ── helper (subreaper, lifeline) ── claude ── tool shells ...

The helper hands its stdin/stdout/stderr to the CLI and keeps none of them, so the
supervisor talks to the CLI directly. It reports on a status pipe (one JSON object a
line): `{"event": "spawned", "pid": N}`, then `{"event": "exited", "returncode": R,
"killed": K}` once the CLI has exited *and* the rest of its tree has been killed, or
`{"event": "spawn_failed", "error": "..."}`.

It dies with the supervisor, and kills the tree first, so not even a SIGKILLed
supervisor leaves tools behind. The tie is a *lifeline* pipe: the supervisor holds its
write end and never writes; end-of-file on the read end means the supervisor process is
gone. Linux's parent-death signal would be simpler but follows the parent *thread*, and
trio starts processes from worker threads that exit when idle: it would kill every CLI
about ten seconds after its start. SIGTERM to the helper kills the tree on purpose.

Safety: a process is signalled only as a `psutil.Process` obtained by walking the tree;
psutil checks the process's creation time before each signal, so a pid reused by an
unrelated process is never signalled.

Elsewhere than Linux there is no subreaper and no parent-death signal: the helper still
runs, dies with the supervisor (the lifeline is a plain pipe) and kills the CLI's
descendants, but escaped grandchildren can be missed (see docs/architecture.md).

This file imports only the standard library and psutil, so that running it as a script
(not as part of the package, whose import would load trio) starts fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

#: How long SIGKILLed processes may take to disappear before we stop waiting for them.
_REAP_GRACE = 5.0

Identity = tuple[int, float]  # (pid, creation time): a process, safe against pid reuse


def _prctl(option: int, value: int) -> bool:
    """Calls prctl(2) on Linux; False elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux)."""
    return _prctl(_PR_SET_PDEATHSIG, signum)


def become_subreaper() -> bool:
    """Adopt the orphans of this process's subtree (Linux)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def identity(proc: psutil.Process) -> Identity | None:
    try:
        return (proc.pid, proc.create_time())
    except psutil.Error:
        return None


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of `pid`, parents before children; [] if `pid` is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def snapshot(pid: int) -> frozenset[Identity]:
    """The identities of `pid`'s descendants now (what existed before a turn started)."""
    return frozenset(i for i in map(identity, descendants(pid)) if i is not None)


def terminate(
    listing: Callable[[], Iterable[psutil.Process]],
    timeout: float,
    *,
    reap: Callable[[], None] | None = None,
) -> int:
    """SIGTERM every process `listing()` gives, SIGKILL what remains after `timeout`.

    `listing` is called again before SIGKILL, so that processes started in the meantime
    (a shell forking as it dies) are caught too. `reap` is called while waiting, by a
    caller that is the parent of some of them (the helper), so that they do not linger as
    zombies. Returns how many distinct processes were signalled.
    """
    signalled: set[Identity] = set()

    def send(procs: Iterable[psutil.Process], signum: int) -> list[psutil.Process]:
        sent = []
        for proc in procs:
            ident = identity(proc)
            if ident is None:
                continue
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
                sent.append(proc)
                signalled.add(ident)
        return sent

    alive = send(list(listing()), signal.SIGTERM)
    alive = _wait_gone(alive, timeout, reap)
    for _ in range(10):  # bounded: each round SIGKILLs all that is left
        remaining = {p.pid: p for p in [*alive, *listing()] if _running(p)}
        if not remaining:
            break
        alive = _wait_gone(send(remaining.values(), signal.SIGKILL), _REAP_GRACE, reap)
    return len(signalled)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(
    procs: list[psutil.Process], timeout: float, reap: Callable[[], None] | None
) -> list[psutil.Process]:
    """Waits until none of `procs` runs (zombies count as gone) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if reap is not None:
            reap()
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def turn_processes(
    pid: int, before: Collection[Identity], exclude: Collection[int]
) -> list[psutil.Process]:
    """Descendants of `pid` that did not exist in `before`: what a turn started."""
    found = []
    for proc in descendants(pid):
        ident = identity(proc)
        if ident is not None and ident not in before and proc.pid not in exclude:
            found.append(proc)
    return found


# ------------------------------------------------------------------------ the helper


def helper_command(
    cli: Sequence[str], *, status_fd: int, lifeline_fd: int, kill_timeout: float
) -> list[str]:
    """The command line that runs `cli` under a helper (see the module docstring)."""
    return [
        sys.executable,
        "-I",  # isolated: no user site, no PYTHON* variables, no cwd on sys.path
        os.path.abspath(__file__),
        str(status_fd),
        str(lifeline_fd),
        str(kill_timeout),
        "--",
        *cli,
    ]


class _Stop(Exception):
    """Raised by the helper's SIGTERM/SIGHUP handler to stop waiting and kill the tree."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _child_setup() -> None:
    """In the CLI, between fork and exec: plain signal handling, die with the helper.

    The helper forks from its only thread, so the parent-death signal is sound here.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    set_parent_death_signal(signal.SIGKILL)


def _watch_lifeline(fd: int) -> None:
    """Blocks until the supervisor is gone (EOF), then stops the helper like SIGTERM."""
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def helper_main(argv: Sequence[str]) -> int:
    status_fd, lifeline_fd, kill_timeout = int(argv[0]), int(argv[1]), float(argv[2])
    cli = list(argv[4:])
    status = os.fdopen(status_fd, "w", buffering=1)

    def report(**fields: object) -> None:
        with contextlib.suppress(OSError):
            status.write(json.dumps(fields) + "\n")

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # terminal signals are for the CLI
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    become_subreaper()
    env = {**os.environ, "CLAUDE_SUPERVISOR_HELPER_PID": str(os.getpid())}
    try:
        child = subprocess.Popen(cli, preexec_fn=_child_setup, close_fds=True, env=env)
    except OSError as exc:
        report(event="spawn_failed", error=f"cannot run {cli[0]!r}: {exc.strerror or exc}")
        return 127
    report(event="spawned", pid=child.pid)
    # Started after the fork above (no thread may run while forking with preexec_fn).
    threading.Thread(target=_watch_lifeline, args=(lifeline_fd,), daemon=True).start()
    # The CLI has the pipes now; holding them would hide its end-of-output.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    returncode: int | None = None

    def reap(block: bool = False) -> None:
        """Reaps exited children (orphans included), noting the CLI's exit status."""
        nonlocal returncode
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, wait_status = os.waitpid(-1, 0 if block else os.WNOHANG)
                if pid == 0:
                    return
                if pid == child.pid:
                    returncode = os.waitstatus_to_exitcode(wait_status)
                    if block:
                        return

    try:
        while returncode is None:
            reap(block=True)
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    me = os.getpid()
    killed = terminate(lambda: descendants(me), kill_timeout, reap=reap)
    with contextlib.suppress(ChildProcessError):
        while True:  # whatever is still ours (re-parented orphans): reap it all
            pid, wait_status = os.wait()
            if pid == child.pid:
                returncode = os.waitstatus_to_exitcode(wait_status)
    report(event="exited", returncode=returncode, killed=killed)
    return 0


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
