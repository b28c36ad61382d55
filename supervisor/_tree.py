"""Process trees: walking, freezing and killing them, and the helper that owns them.

This module and `_helper.py` (the supervisor's side of the helper: starting it, reading
its reports, and the CLI held as the `psutil.Process` of its `spawned` report, to forward
signals to it and see whether it is stopped) are where signals to the CLI's tree are
decided and sent, and where psutil and Linux specifics live. Elsewhere, the front ends
(`_relay.py`, `_passthrough.py`) receive the executable's own signals and pass them on
through `_helper`, and `_pool.py` reads available memory through psutil.

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
line): `{"event": "spawned", "pid": N, "create_time": T}`, then `{"event": "exited",
"returncode": R, "killed": K, "survivors": S}` once the CLI has exited *and* the rest of
its tree has been killed (S counts processes that outlived every SIGKILL round, stuck in
the kernel), or `{"event": "spawn_failed", "error": "..."}`.

It dies with the supervisor, and kills the tree first, so not even a SIGKILLed
supervisor leaves tools behind. The tie is a *lifeline* pipe: the supervisor holds its
write end and never writes; end-of-file on the read end means the supervisor process is
gone. Linux's parent-death signal would be simpler but follows the parent *thread*, and
trio starts processes from worker threads that exit when idle: it would kill every CLI
about ten seconds after its start. SIGTERM to the helper kills the tree on purpose.

Safety: a process is signalled only as a `psutil.Process` obtained by walking the tree
(or, once the helper is dead, found by the token unique to its run, see `kill_tagged`);
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
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

Identity = tuple[int, float]  # (pid, creation time): a process, safe against pid reuse

# What reading a process that is going away can raise. psutil turns a vanished /proc
# entry into NoSuchProcess only if the pid's directory is still absent when it looks
# again; in a fork chain a new process may already hold the pid, and the raw
# FileNotFoundError escapes (seen in CI, `psutil.Process(pid)` racing a dying link).
GONE = (psutil.Error, OSError)


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
    except GONE:
        return None


def _child_pids(pid: int) -> list[int] | None:
    """The pids of `pid`'s children from /proc/PID/task/*/children (Linux), or None.

    One small read per thread, where psutil's walk reads every process's status: fast
    enough to catch a process that lives a millisecond (a link of a fork-and-exit chain).
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    pids: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                pids.extend(int(word) for word in f.read().split())
        except FileNotFoundError:
            continue  # a thread that ended since the listing
        except (OSError, ValueError):
            return None  # no such file (kernel without CONFIG_PROC_CHILDREN)
    return pids


def children(proc: psutil.Process) -> list[psutil.Process]:
    """The children of `proc`, zombies included; [] if it is gone."""
    pids = _child_pids(proc.pid)
    if pids is None:
        try:
            return proc.children()
        except GONE:
            return []
    found = []
    for pid in pids:
        try:
            child = psutil.Process(pid)
            # The pid was read before the process object was made: if it was reused in
            # between, the newcomer is not our child (unless it is, and then it counts).
            if child.ppid() == proc.pid:
                found.append(child)
        except GONE:
            continue
    return found


def descendants(
    pid: int, *, prune: Callable[[psutil.Process], bool] | None = None
) -> list[psutil.Process]:
    """Every live descendant of `pid`, parents before children; [] if `pid` is gone.

    A process for which `prune` is true is left out, with its whole subtree.
    """
    try:
        root = psutil.Process(pid)
    except GONE:
        return []
    found: list[psutil.Process] = []
    todo = [root]
    while todo:
        for child in children(todo.pop()):
            if prune is None or not prune(child):
                found.append(child)
                todo.append(child)
    return found


def snapshot(pid: int) -> frozenset[Identity]:
    """The identities of `pid`'s descendants now (what existed before a turn started)."""
    return frozenset(i for i in map(identity, descendants(pid)) if i is not None)


def terminate(
    listing: Callable[[], Iterable[psutil.Process]],
    timeout: float,
    *,
    grace: float,
    reap: Callable[[], None] | None = None,
) -> int:
    """Kills every process `listing()` gives, until it gives none; returns how many.

    A listing is out of date as soon as it is made: a fork-and-exit chain (each link
    forks the next, which `setsid`s, and exits) has moved on by the time we signal what
    we listed. So the tree is first *frozen*: every listed process gets SIGSTOP and the
    listing is repeated until it holds nothing new and everything in it has stopped (a
    stopped process cannot fork). Then SIGTERM, and SIGCONT so that stopped processes,
    ours or someone else's (a wedged CLI), can act on it at once rather than after
    `timeout`. After `timeout`, or as soon as the listing is empty, rounds of freeze and
    SIGKILL follow until it is empty, bounded by `timeout + grace` in all: this never
    blocks without a deadline on processes it is trying to kill. (`grace` is
    `_policy.TREE_GRACE`, passed in: this file runs as a script that must not import the
    package.)

    `reap` is called while waiting, by a caller that is the parent of some of them (the
    helper), so that they do not linger as zombies.
    """
    start = time.monotonic()
    deadline = start + timeout + grace
    signalled: set[Identity] = set()

    def send(procs: Iterable[psutil.Process], signum: int) -> None:
        for proc in procs:
            ident = identity(proc)
            if ident is None:
                continue
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
                if signum in (signal.SIGTERM, signal.SIGKILL):
                    signalled.add(ident)

    frozen = _freeze(listing, deadline, reap)
    send(frozen, signal.SIGTERM)
    send(frozen, signal.SIGCONT)
    _wait_gone(listing, min(start + timeout, deadline), reap)
    while True:
        frozen = [p for p in _freeze(listing, deadline, reap) if _running(p)]
        if not frozen and _stays_empty(listing, reap):
            break
        send(frozen, signal.SIGKILL)  # even at the deadline: never leave them stopped
        if time.monotonic() >= deadline:
            break
        _wait_gone(functools.partial(list, frozen), min(time.monotonic() + 0.5, deadline), reap)
    return len(signalled)


def _freeze(
    listing: Callable[[], Iterable[psutil.Process]],
    deadline: float,
    reap: Callable[[], None] | None,
) -> list[psutil.Process]:
    """SIGSTOPs what `listing()` gives until it gives nothing new and all of it stopped.

    Returns the last listing. Bounded by `deadline` (a process in uninterruptible sleep
    does not stop until it leaves it); zombies count as stopped. Two listings in a row
    must bring nothing new: one can miss a link of a chain that exits while it is walked
    (its child is re-parented to a thread of the subreaper that was already read).
    """
    stopped: set[Identity] = set()
    quiet = 0
    while True:
        if reap is not None:
            reap()
        procs = list(listing())
        new = False
        for proc in procs:
            ident = identity(proc)
            if ident is None or ident in stopped:
                continue
            new = True
            stopped.add(ident)
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
        quiet = 0 if new else quiet + 1
        if quiet >= 2 or time.monotonic() >= deadline:
            return procs
        if not new:
            time.sleep(0.001)
            continue
        # SIGSTOP is delivered asynchronously: until a process has stopped it may still
        # fork, and its child is in the next listing only if we list after that.
        wait_until = min(time.monotonic() + 0.2, deadline)
        delay = 0.0005
        while any(not _stopped(p) for p in procs) and time.monotonic() < wait_until:
            time.sleep(delay)
            delay = min(delay * 2, 0.01)


def _stopped(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (
            psutil.STATUS_STOPPED,
            psutil.STATUS_TRACING_STOP,
            psutil.STATUS_ZOMBIE,
            psutil.STATUS_DEAD,
        )
    except GONE:
        return True


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def _stays_empty(
    listing: Callable[[], Iterable[psutil.Process]], reap: Callable[[], None] | None
) -> bool:
    """Whether a few more listings, a moment apart, find nothing running either.

    A listing is not atomic: while it walks, a link of a chain can exit and its child be
    re-parented to a process already read (and the zombie be reaped by the helper while
    the supervisor lists), so one empty listing may be a false one.
    """
    for _ in range(3):
        time.sleep(0.001)
        if reap is not None:
            reap()
        if any(_running(p) for p in listing()):
            return False
    return True


def _wait_gone(
    listing: Callable[[], Iterable[psutil.Process]],
    deadline: float,
    reap: Callable[[], None] | None,
) -> None:
    """Waits until nothing `listing()` gives runs (zombies count as gone), or `deadline`."""
    delay = 0.002
    while True:
        if reap is not None:
            reap()
        if not any(_running(p) for p in listing()) and _stays_empty(listing, reap):
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def turn_processes(
    pid: int, before: Collection[Identity], exclude: Collection[int]
) -> list[psutil.Process]:
    """Descendants of `pid` (the helper) that the running turn's tools started.

    The processes in `exclude` (the CLI) are kept, and so are their children that share
    their session, with everything under those: the CLI starts its own long-lived
    children (stdio MCP servers) as plain children in its session, and may start them
    during a turn, while the Bash tool runs each command in a session of its own. What
    was re-parented to the helper (a tool's escaped grandchild) is a tool's. Of all
    these, only processes that did not exist in `before` count.
    """
    sessions: dict[int, int] = {}
    for keep in exclude:
        with contextlib.suppress(OSError):
            sessions[keep] = os.getsid(keep)

    def prune(proc: psutil.Process) -> bool:
        if proc.pid in exclude:
            return False  # walk into the CLI, but never return it (below)
        try:
            parent = proc.ppid()
            return parent in sessions and os.getsid(proc.pid) == sessions[parent]
        except (OSError, psutil.Error):
            return False

    found = []
    for proc in descendants(pid, prune=prune):
        ident = identity(proc)
        if ident is not None and ident not in before and proc.pid not in exclude:
            found.append(proc)
    return found


# ------------------------------------------------------------- a helper that died

#: Set, in the CLI's environment, to a token unique to one helper run: every process of
#: the tree inherits it, so that the tree can still be found if the helper is SIGKILLed.
TAG_VARIABLE = "CLAUDE_SUPERVISOR_TREE"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged(tag: str, since: float) -> list[psutil.Process]:
    """Live processes created at or after `since` whose environment carries `tag`.

    What a process was started with (/proc/PID/environ), so a program that changes its
    own variables still carries it; one started with a cleared environment does not.
    """
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != me
                and proc.create_time() >= since
                and proc.environ().get(TAG_VARIABLE) == tag
            ):
                found.append(proc)
        except GONE:
            continue
    return found


def kill_tagged(tag: str, since: float, timeout: float, grace: float) -> int:
    """Kills what a dead helper would have killed: every process tagged with `tag`.

    The helper's orphans were re-parented to init (or a subreaper above us), so they are
    found by their tag, not as descendants. Returns how many processes were signalled.

    First a chase: the newest pids (where a fork-and-exit chain's live link is) and then
    every process are looked at, and each tagged one is SIGKILLed as soon as it is seen,
    until a few passes in a row find none; a scan of every process takes milliseconds,
    far longer than a link lives, so killing what a scan listed would come too late.
    No SIGTERM grace: this is the clean-up after a failure. Then the usual kill, for what
    the chase could not end (bounded like it, by `timeout` + `grace`).
    """
    me = os.getpid()
    killed: set[Identity] = set()
    deadline = time.monotonic() + timeout + grace

    def kill_if_tagged(pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            if pid == me or proc.create_time() < since or proc.environ().get(TAG_VARIABLE) != tag:
                return False
            proc.send_signal(signal.SIGKILL)
        except GONE:
            return False
        killed.add((pid, proc.create_time()))
        return True

    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        found = False
        for _ in range(20):  # the newest pids, again and again: cheap, and where links are
            found = any([kill_if_tagged(pid) for pid in _newest_pids()]) or found
        for pid in psutil.pids():
            found = kill_if_tagged(pid) or found
        quiet = 0 if found else quiet + 1
    return len(killed) + terminate(lambda: tagged(tag, since), timeout, grace=grace)


def _newest_pids(before: int = 32, after: int = 8) -> list[int]:
    """The pids handed out last, and the next few, newest first ([] if unknown)."""
    try:
        with open("/proc/sys/kernel/ns_last_pid") as f:
            last = int(f.read())
    except (OSError, ValueError):
        return []
    return list(range(last + after, max(last - before, 0), -1))


def process_of(report: Mapping[str, object]) -> psutil.Process | None:
    """The CLI of a `spawned` report, or None if its pid is no longer that process.

    The helper reports the CLI's creation time along with its pid, before it can have
    reaped it, so a pid reused by the time the report is read is told apart.
    """
    pid, created = report.get("pid"), report.get("create_time")
    if not isinstance(pid, int):
        return None
    try:
        proc = psutil.Process(pid)
        if isinstance(created, float) and proc.create_time() != created:
            return None
        return proc
    except GONE:
        return None


# ------------------------------------------------------------------------ the helper


def helper_command(
    cli: Sequence[str],
    *,
    status_fd: int,
    lifeline_fd: int,
    kill_timeout: float,
    grace: float,
    tag: str = "",
) -> list[str]:
    """The command line that runs `cli` under a helper (see the module docstring).

    `tag` (see `new_tag`) goes into the tree's environment as `TAG_VARIABLE`.
    """
    return [
        sys.executable,
        "-I",  # isolated: no user site, no PYTHON* variables, no cwd on sys.path
        os.path.abspath(__file__),
        str(status_fd),
        str(lifeline_fd),
        str(kill_timeout),
        str(grace),
        tag,
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
    grace, tag = float(argv[3]), argv[4]
    cli = list(argv[6:])
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
    if tag:
        env[TAG_VARIABLE] = tag
    try:
        child = subprocess.Popen(cli, preexec_fn=_child_setup, close_fds=True, env=env)
    except OSError as exc:
        report(event="spawn_failed", error=f"cannot run {cli[0]!r}: {exc.strerror or exc}")
        return 127
    # Not reaped yet (only this thread reaps), so the pid is still the CLI's.
    try:
        created: float | None = psutil.Process(child.pid).create_time()
    except GONE:
        created = None
    report(event="spawned", pid=child.pid, create_time=created)
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
    killed = terminate(lambda: descendants(me), kill_timeout, grace=grace, reap=reap)
    # Whatever is still ours (re-parented orphans): reap it, but never wait without a
    # deadline on a process that may not die (stuck in the kernel).
    deadline = time.monotonic() + 1.0
    while descendants(me) and time.monotonic() < deadline:
        reap()
        time.sleep(0.01)
    reap()
    survivors = sum(1 for proc in descendants(me) if _running(proc))
    report(event="exited", returncode=returncode, killed=killed, survivors=survivors)
    return 0


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
