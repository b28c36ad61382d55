"""Process trees: walking, freezing and killing them, and finding one session's part.

This module, `_hub.py` (the hub process: the subreaper and parent of every CLI) and
`_helper.py` (the supervisor's side of the hub: starting it, reading its reports, and
the CLI held as the `psutil.Process` of its `spawned` report, to forward signals to it
and see whether it is stopped) are where signals to the CLI's tree are decided and
sent, and where psutil and Linux specifics live. Elsewhere, the front ends
(`_relay.py`, `_passthrough.py`) receive the executable's own signals and pass them on
through `_helper`, and `_pool.py` reads available memory through psutil.

What a tree is, and why a hub, is in `_hub.py`. Here: the walk (`descendants`, from
`/proc/PID/task/*/children`), one session's part of a hub shared by many
(`SessionFilter`: its CLI, and the hub's orphans that carry its tag), the processes a
turn started (`turn_processes`), the kill (`terminate_steps`: freeze, SIGTERM, SIGKILL
rounds, written as steps so that the hub can run many side by side), and the clean-up
after a hub that died (`kill_tagged`).

Safety: a process is signalled only as a `psutil.Process` obtained by walking the tree
(or, once the hub is dead, found by the token unique to its run, see `kill_tagged`);
psutil checks the process's creation time before each signal, so a pid reused by an
unrelated process is never signalled.

This file imports only the standard library and psutil: the hub imports it, and must
start fast (not load trio).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from typing import TypeVar, cast

import psutil

from ._launch import TAG_VARIABLE as TAG_VARIABLE

Identity = tuple[int, float]  # (pid, creation time): a process, safe against pid reuse

#: What is known of processes' tags: pid -> (creation time, tag; "" for none).
Tags = dict[int, tuple[float, str]]

# What reading a process that is going away can raise. psutil turns a vanished /proc
# entry into NoSuchProcess only if the pid's directory is still absent when it looks
# again; in a fork chain a new process may already hold the pid, and the raw
# FileNotFoundError escapes (seen in CI, `psutil.Process(pid)` racing a dying link).
GONE = (psutil.Error, OSError)


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


def children(
    proc: psutil.Process,
    skip: Callable[[int], bool] | None = None,
    sighted: Callable[[int], None] | None = None,
) -> list[psutil.Process]:
    """The children of `proc`, zombies included, newest first; [] if it is gone.

    Pids for which `skip` is true are left out before anything is read about them;
    `sighted` is called with each other one, before anything is read about it.
    """
    pids = _child_pids(proc.pid)
    if pids is None:
        try:
            return [c for c in proc.children() if skip is None or not skip(c.pid)]
        except GONE:
            return []
    found = []
    for pid in reversed(pids):  # newest first (see `descendants`)
        if skip is not None and skip(pid):
            continue
        if sighted is not None:
            sighted(pid)
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
    pid: int,
    *,
    prune: Callable[[psutil.Process, int], bool] | None = None,
    skip: Callable[[int], bool] | None = None,
    seen_one: Callable[[psutil.Process], None] | None = None,
    sighted: Callable[[int], None] | None = None,
) -> list[psutil.Process]:
    """Every live descendant of `pid`, parents before children; [] if `pid` is gone.

    A process for which `prune(process, its parent's pid)` is true is left out, with
    its whole subtree; so is a child of `pid` itself whose pid `skip` rejects, before
    anything is read about it (a hub's children: the other sessions' CLIs).

    `seen_one` is called with each process as soon as it is found, before the walk goes
    on (`stop_on_sight`). The root's children are looked at newest first: that is where
    a fork chain's live link is; `sighted` is called with each of them before anything
    else is read about it (`SessionFilter.listing`).
    """
    try:
        root = psutil.Process(pid)
    except GONE:
        return []
    found: list[psutil.Process] = []
    looked_at: set[int] = set()  # a child re-parented mid-walk is met twice
    todo: list[psutil.Process] = []

    def take(child: psutil.Process, parent: int) -> None:
        if child.pid in looked_at:
            return
        looked_at.add(child.pid)
        if prune is None or not prune(child, parent):
            if seen_one is not None:
                seen_one(child)
            found.append(child)
            todo.append(child)

    for _ in range(_ROOT_READS):
        # The root's children again, after the walk below them: a process that exited
        # while it was walked has handed its children to the root (a subreaper), which
        # had already been read. A fork chain does this at every link.
        fresh = [c for c in children(root, skip, sighted) if c.pid not in looked_at]
        if not fresh:
            break
        for child in fresh:
            take(child, root.pid)
        while todo:
            parent = todo.pop()
            for child in children(parent):
                take(child, parent.pid)
    return found


def stop_on_sight(proc: psutil.Process) -> None:
    """SIGSTOP at once (a `seen_one` for `descendants`), for the listings that freeze a
    tree: a fork chain's link lives about a millisecond, less than a listing of a tree
    with a few dozen processes takes, so stopping what a listing gave once it is done
    can come too late for every link, listing after listing.

    A process that leads its own process group (a link `setsid`s) is stopped with its
    group: its child is in that group until it `setsid`s in turn, and a signal to a
    group during a fork reaches the child as well, so the next link is held too. The
    group of a process that is the session's is the session's (a group cannot span
    sessions, and its members are the leader's descendants that stayed in it).
    """
    try:
        proc.send_signal(signal.SIGSTOP)  # checks the creation time first
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGSTOP)
    except GONE:
        pass


#: How many times `descendants` reads the root's children, at most: more only while a
#: chain keeps handing it new ones (a caller that must see all of it, `terminate`,
#: lists again until it stops).
_ROOT_READS = 4


class SessionFilter:
    """Which of a shared hub's descendants are one session's (`descendants(hub, ...)`).

    Of the hub's children it keeps the session's CLI and, among the others, those that
    carry the session's tag (a tool's orphan, re-parented to the hub); everything below
    them is the session's too. `others` are pids known to be other sessions' CLIs:
    skipped at once, before anything is read about them (so that a listing costs no
    more with 200 sessions than with one). `tags`, kept from one listing to the next,
    remembers each process's tag: a tree killed after its CLI has hundreds of orphans,
    listed again and again.
    """

    def __init__(
        self,
        hub: int,
        *,
        cli: int | None,
        tag: str,
        others: Collection[int] = (),
        tags: Tags | None = None,
    ) -> None:
        self.hub, self.cli, self.tag, self.others, self.tags = hub, cli, tag, others, tags
        self._unsure: set[int] = set()  # this listing's unreadable hub children
        self._held: set[int] = set()  # stopped before their tag was read

    def _hold(self, pid: int) -> None:
        """Stops a hub child whose tag is not known yet, before reading it (freezing).

        Reading a process's environment waits while it forks (the kernel holds its
        memory map), and a fork chain's link does little else: by the time its tag is
        read, or even its `/proc/PID/stat` (a `psutil.Process`), the link has forked
        the next one and exited, listing after listing. So a freezing listing stops a
        hub child the moment its pid is read, and reads after; `prune` lets go
        (SIGCONT) of what turns out not to be the session's: another session's orphan,
        seen once (its tag is then remembered), is held for the time of one read.

        The bare pid is signalled here, not a `psutil.Process`: it was read from the
        hub's children an instant before, and a child's pid is not reused before its
        parent has reaped it and the kernel has gone round the whole pid space.
        """
        if pid == self.cli or self.tags is None:
            return
        known = self.tags.get(pid)
        if known is not None and known[1] != self.tag:
            return  # another session's, or nobody's (a newcomer on a reused pid is
            # then judged by its tag without being held, as any listing does)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
            self._held.add(pid)

    def _let_go(self, pid: int) -> None:
        if pid in self._held:
            self._held.discard(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    def unsure(self, pid: int) -> bool:
        """Whether the last walk found `pid` among the hub's children and could not
        tell whose it is (walked into, never listed)."""
        return pid in self._unsure

    def skip(self, pid: int) -> bool:
        return pid != self.cli and pid in self.others

    def prune(self, proc: psutil.Process, parent: int) -> bool:
        if proc.pid == self.cli or (parent != self.hub and parent not in self._unsure):
            return False
        ident = identity(proc)
        tags = self.tags if self.tags is not None else {}
        known = tags.get(proc.pid)
        tag = known[1] if known is not None and ident is not None and known[0] == ident[1] else None
        if tag is None:
            try:
                environ = proc.environ()
            except GONE:
                environ = {}
            if not environ:
                # Unreadable, or empty: a process that is exiting has no environment
                # left to read while it still has children (a fork chain's link whose
                # child is the live one), and one mid-start may not have one yet.
                # Walked into but never listed: its children say by their own tag
                # whose they are.
                self._unsure.add(proc.pid)
                self._let_go(proc.pid)
                return False
            tag = environ.get(TAG_VARIABLE) or ""
            if ident is not None and self.tags is not None:
                if len(tags) > 100_000:
                    tags.clear()
                tags[proc.pid] = (ident[1], tag)
        if tag != self.tag:
            self._let_go(proc.pid)
            return True
        return False

    def listing(
        self, seen_one: Callable[[psutil.Process], None] | None = None
    ) -> list[psutil.Process]:
        """The session's processes now, parents before children (see `walk`)."""
        found = self.walk(self.prune, seen_one)
        return [proc for proc in found if proc.pid not in self._unsure]

    def walk(
        self,
        prune: Callable[[psutil.Process, int], bool],
        seen_one: Callable[[psutil.Process], None] | None = None,
        wanted: Callable[[psutil.Process], bool] = lambda proc: True,
    ) -> list[psutil.Process]:
        """`descendants` of the hub, with `prune` (which must call `self.prune` first).

        With `seen_one` (a freezing listing, see `stop_on_sight`), called for the
        `wanted` processes found, the hub's children are held (`_hold`) until their tag
        is read; those `seen_one` is called for stay stopped, and every other one is
        let go before this returns.
        """
        self._unsure = set()
        self._held = set()

        def seen(proc: psutil.Process) -> None:
            if seen_one is not None and proc.pid not in self._unsure and wanted(proc):
                self._held.discard(proc.pid)
                seen_one(proc)

        try:
            return descendants(
                self.hub,
                prune=prune,
                skip=self.skip,
                seen_one=None if seen_one is None else seen,
                sighted=None if seen_one is None else self._hold,
            )
        finally:
            for pid in list(self._held):
                self._let_go(pid)


def snapshot(
    pid: int, *, cli: int | None = None, tag: str | None = None, others: Collection[int] = ()
) -> frozenset[Identity]:
    """The identities of `pid`'s descendants now (what existed before a turn started).

    With `tag`, `pid` is a shared hub and only that session's part counts (see
    `SessionFilter`).
    """
    if tag is None:
        procs = descendants(pid)
    else:
        procs = SessionFilter(pid, cli=cli, tag=tag, others=others).listing()
    return frozenset(i for i in map(identity, procs) if i is not None)


#: A kill is written as steps: a generator that yields how long to wait before its next
#: step and returns its result. `run_steps` runs one with `time.sleep`; the hub runs many
#: side by side in its one thread.
T = TypeVar("T")


def run_steps(steps: Generator[float, None, T]) -> T:
    """Runs `steps` to the end, sleeping where it waits; returns its result."""
    while True:
        try:
            delay = next(steps)
        except StopIteration as stop:
            return cast(T, stop.value)
        time.sleep(delay)


def terminate(
    listing: Callable[[], Iterable[psutil.Process]],
    timeout: float,
    *,
    grace: float,
    reap: Callable[[], None] | None = None,
    seize: Callable[[], Iterable[psutil.Process]] | None = None,
) -> int:
    """Kills every process `listing()` gives, until it gives none; returns how many.

    The blocking form of `terminate_steps`, which says how.
    """
    return run_steps(terminate_steps(listing, timeout, grace=grace, reap=reap, seize=seize))


def terminate_steps(
    listing: Callable[[], Iterable[psutil.Process]],
    timeout: float,
    *,
    grace: float,
    reap: Callable[[], None] | None = None,
    seize: Callable[[], Iterable[psutil.Process]] | None = None,
) -> Generator[float, None, int]:
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
    `_policy.TREE_GRACE`, passed in: the hub must not import the package's trio side.)

    `seize`, if given, is the listing used to freeze: the same processes, each stopped
    as soon as it is found (`stop_on_sight`). `reap` is called while waiting, by a
    caller that is the parent of some of them (the hub), so that they do not linger as
    zombies. Where it waits, it yields the delay.
    """
    freezing = seize if seize is not None else listing
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

    frozen = yield from _freeze(freezing, deadline, reap)
    send(frozen, signal.SIGTERM)
    send(frozen, signal.SIGCONT)
    yield from _wait_gone(listing, min(start + timeout, deadline), reap)
    while True:
        frozen = [p for p in (yield from _freeze(freezing, deadline, reap)) if running(p)]
        if not frozen and (yield from _stays_empty(listing, reap)):
            break
        send(frozen, signal.SIGKILL)  # even at the deadline: never leave them stopped
        if time.monotonic() >= deadline:
            break
        again: Callable[[], list[psutil.Process]] = functools.partial(list, frozen)
        yield from _wait_gone(again, min(time.monotonic() + 0.5, deadline), reap)
    return len(signalled)


def _freeze(
    listing: Callable[[], Iterable[psutil.Process]],
    deadline: float,
    reap: Callable[[], None] | None,
) -> Generator[float, None, list[psutil.Process]]:
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
            yield 0.001
            continue
        # SIGSTOP is delivered asynchronously: until a process has stopped it may still
        # fork, and its child is in the next listing only if we list after that.
        wait_until = min(time.monotonic() + 0.2, deadline)
        delay = 0.0005
        while any(not _stopped(p) for p in procs) and time.monotonic() < wait_until:
            yield delay
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


def running(proc: psutil.Process) -> bool:
    """Whether `proc` is still the process it was and has not exited (zombies have)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def _stays_empty(
    listing: Callable[[], Iterable[psutil.Process]], reap: Callable[[], None] | None
) -> Generator[float, None, bool]:
    """Whether a few more listings, a moment apart, find nothing running either.

    A listing is not atomic: while it walks, a link of a chain can exit and its child be
    re-parented to a process already read (and the zombie be reaped by the hub while
    the supervisor lists), so one empty listing may be a false one.
    """
    for _ in range(3):
        yield 0.001
        if reap is not None:
            reap()
        if any(running(p) for p in listing()):
            return False
    return True


def _wait_gone(
    listing: Callable[[], Iterable[psutil.Process]],
    deadline: float,
    reap: Callable[[], None] | None,
) -> Generator[float, None, None]:
    """Waits until nothing `listing()` gives runs (zombies count as gone), or `deadline`."""
    delay = 0.002
    while True:
        if reap is not None:
            reap()
        if not any(running(p) for p in listing()) and (yield from _stays_empty(listing, reap)):
            return
        if time.monotonic() >= deadline:
            return
        yield delay
        delay = min(delay * 2, 0.05)


def turn_processes(
    pid: int,
    before: Collection[Identity],
    exclude: Collection[int],
    *,
    tag: str | None = None,
    others: Collection[int] = (),
    tags: Tags | None = None,
    seen_one: Callable[[psutil.Process], None] | None = None,
) -> list[psutil.Process]:
    """Descendants of `pid` (the hub) that the running turn's tools started.

    The processes in `exclude` (the CLI) are kept, and so are their children that share
    their session, with everything under those: the CLI starts its own long-lived
    children (stdio MCP servers) as plain children in its session, and may start them
    during a turn, while the Bash tool runs each command in a session of its own. What
    was re-parented to the hub (a tool's escaped grandchild) is a tool's. Of all
    these, only processes that did not exist in `before` count. With `tag`, `pid` is a
    hub shared by several sessions, and only this session's part of it is looked at
    (`SessionFilter`, with the CLI in `exclude`, and `tags` its cache). `seen_one` is
    called as in `descendants`, for those only.
    """
    sessions: dict[int, int] = {}
    for keep in exclude:
        with contextlib.suppress(OSError):
            sessions[keep] = os.getsid(keep)
    cli = next(iter(exclude), None)
    mine = None
    if tag is not None:
        mine = SessionFilter(pid, cli=cli, tag=tag, others=others, tags=tags)

    def prune(proc: psutil.Process, parent: int) -> bool:
        if mine is not None and mine.prune(proc, parent):
            return True
        if proc.pid in exclude:
            return False  # walk into the CLI, but never return it (below)
        try:
            return parent in sessions and os.getsid(proc.pid) == sessions[parent]
        except (OSError, psutil.Error):
            return False

    def counts(proc: psutil.Process) -> bool:
        if proc.pid in exclude or (mine is not None and mine.unsure(proc.pid)):
            return False
        ident = identity(proc)
        return ident is not None and ident not in before

    def seen(proc: psutil.Process) -> None:
        if seen_one is not None and counts(proc):
            seen_one(proc)

    if mine is not None:
        walk = mine.walk(prune, seen_one, wanted=counts)
    else:
        walk = descendants(pid, prune=prune, seen_one=None if seen_one is None else seen)
    return [proc for proc in walk if counts(proc)]


# ------------------------------------------------------------- a helper that died


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
