"""Process trees: walking, freezing and killing them, and finding one session's part.

This module, `_hub.py` (the hub process: the subreaper and parent of every CLI) and
`_helper.py` (the supervisor's side of the hub: starting it, reading its reports, and
the CLI held as the `psutil.Process` of its `spawned` report, to forward signals to it
and see whether it is stopped) are where signals to the CLI's tree are decided and
sent, and where psutil and Linux specifics live. Elsewhere, the front ends
(`_relay.py`, `_passthrough.py`) receive the executable's own signals and pass them on
through `_helper`, and `_pool.py` reads available memory through psutil.

What a tree is, and why a hub, is in `_hub.py`. Here: a process as one read of its
`/proc/PID/stat` (`Proc`), the walk (`descendants`, from `/proc/PID/task/*/children`),
one session's part of a hub shared by many (`SessionFilter`: its CLI, and the hub's
orphans that carry its tag), the processes a turn started (`turn_processes`), the kill
(`terminate_steps`: freeze, SIGTERM, SIGKILL rounds, written as steps so that the hub
can run many side by side), and the clean-up after a hub that died (`kill_tagged`).

Safety: a process is signalled only as a `Proc` obtained by walking the tree (or, once
the hub is dead, found by the token unique to its run, see `kill_tagged`), and only
through a pidfd (`Proc.send`): opened on its pid, then checked against the start time
the walk read, so a pid reused by an unrelated process before the signal is never
signalled, and one reused after the check cannot be (a pidfd holds its process, not its
pid). The walk itself is a few small reads per process: psutil is kept for what is not
hot (the CLI of a `spawned` report, the fallback walk, a scan of every process).

This file imports only the standard library and psutil: the hub imports it, and must
start fast (not load trio).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import (
    Callable,
    Collection,
    Container,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TypeVar, cast

import psutil

from ._launch import TAG_VARIABLE as TAG_VARIABLE
from ._launch import started_at

#: (pid, start time in clock ticks since boot): a process, safe against pid reuse.
Identity = tuple[int, int]

#: What is known of processes' tags: pid -> (start time, tag; "" for none).
Tags = dict[int, tuple[int, str]]

# What reading a process that is going away can raise (through psutil, where it is
# still used). psutil turns a vanished /proc entry into NoSuchProcess only if the pid's
# directory is still absent when it looks again; in a fork chain a new process may
# already hold the pid, and the raw FileNotFoundError escapes.
GONE = (psutil.Error, OSError)

_TAG_ENTRY = TAG_VARIABLE.encode() + b"="


class Proc:
    """A process as one read of `/proc/PID/stat` saw it (Linux).

    What the walk and the kill need, for one small read: a `psutil.Process` costs three
    to five reads of that same file (its creation time, its parent, its status, and again
    before each signal), which made a listing of a thousand processes take 200 ms.
    `start` (when it started, in clock ticks since boot) tells it from a later process
    on the same pid: `identity`. Nothing here is read again unless asked (`again`).

    `term_kills`: SIGTERM would end it without its running any code of its own (its
    default action, neither blocked, ignored nor caught; one thread, whose mask that
    is). While it is stopped, what it would do about SIGTERM cannot change.
    """

    __slots__ = (
        "_pidfd",
        "pgrp",
        "pid",
        "ppid",
        "session",
        "start",
        "state",
        "term_kills",
        "threads",
    )

    def __init__(
        self,
        pid: int,
        ppid: int,
        pgrp: int,
        session: int,
        state: str,
        threads: int,
        start: int,
        term_kills: bool = False,
    ) -> None:
        self.pid, self.ppid, self.pgrp, self.session = pid, ppid, pgrp, session
        self.state, self.threads, self.start = state, threads, start
        self.term_kills = term_kills
        self._pidfd: int | None = None  # opened before it was read (`children`)

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        """The process on `pid` now, or None if there is none (or it cannot be read)."""
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        # Fields 32 to 34 (from 1) are the masks of blocked, ignored and caught signals.
        fields = data[data.rfind(b")") + 2 :].split()
        try:
            threads = int(fields[17])
            handled = int(fields[29]) | int(fields[30]) | int(fields[31])
            return cls(
                pid,
                ppid=int(fields[1]),
                pgrp=int(fields[2]),
                session=int(fields[3]),
                state=fields[0].decode(),
                threads=threads,
                start=int(fields[19]),
                term_kills=threads == 1 and not handled & _SIGTERM_BIT,
            )
        except (IndexError, ValueError):
            return None

    @classmethod
    def of(cls, process: psutil.Process) -> Proc | None:
        """The `Proc` of `process`, or None if its pid no longer holds it."""
        proc = cls.read(process.pid)
        try:
            # Read first, checked after: still there then, so there when read.
            return proc if proc is not None and process.is_running() else None
        except GONE:
            return None

    @property
    def identity(self) -> Identity:
        return (self.pid, self.start)

    @property
    def exited(self) -> bool:
        """Whether it had exited when read (a zombie, not reaped yet)."""
        return self.state in ("Z", "X")

    @property
    def stopped(self) -> bool:
        """Whether it could not run when read (stopped, traced, or exited)."""
        return self.state in ("T", "t", "Z", "X")

    def again(self) -> Proc | None:
        """The same process read now; None if it is gone (reaped, or its pid reused)."""
        now = Proc.read(self.pid)
        return now if now is not None and now.start == self.start else None

    def create_time(self) -> float:
        """When it started, in seconds since the epoch (as `psutil` computes it)."""
        return started_at(self.start)

    def tag(self) -> str | None:
        """`TAG_VARIABLE` in what it was started with ("" without); None if that cannot
        be read or is empty (a process exiting, or one not started yet)."""
        try:
            fd = os.open(f"/proc/{self.pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        environ = b"".join(chunks)
        if not environ:
            return None
        for entry in environ.split(b"\0"):
            if entry.startswith(_TAG_ENTRY):
                return entry[len(_TAG_ENTRY) :].decode(errors="replace")
        return ""

    def send(self, *signums: int, group: bool = False) -> bool:
        """Sends `signums`, in order, if the process is still this one; whether it was.

        Through a pidfd, opened and then checked against `start` (`_checked`). With
        `group`, a process that leads its own process group (read after the signals)
        has the group signalled too, while the pidfd shows it is not reaped: the group
        of a live leader can hold only processes that joined it.
        """

        def act(now: Proc, send: Callable[[int], None]) -> None:
            for signum in signums:
                send(signum)
            if group and os.getpgid(self.pid) == self.pid:
                send(0)  # raises if reaped meanwhile
                for signum in signums:
                    os.killpg(self.pid, signum)

        return self._checked(act) is not None

    def endable(self, *, kill: bool) -> bool:
        """Whether, as read, it has stopped and would die running none of its code: of
        SIGKILL, with `kill`; else of SIGTERM and SIGCONT (`term_kills`, not traced)."""
        if kill:
            return self.state in ("T", "t")
        return self.state == "T" and self.term_kills

    def end_if_stopped(self, *, kill: bool) -> Proc | None:
        """Ends the process if it is still this one and `endable` (read now): SIGKILL,
        with `kill`, else SIGTERM and SIGCONT; the process as read for the check, or
        None if it is gone."""

        def act(now: Proc, send: Callable[[int], None]) -> None:
            if now.endable(kill=kill):
                for signum in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGCONT):
                    send(signum)

        return self._checked(act)

    def _checked(self, act: Callable[[Proc, Callable[[int], None]], None]) -> Proc | None:
        """`act(now, send)` if the pid still holds this process (`now`, read after the
        pidfd was opened); `now`, or None if it does not (or a signal found it gone).

        The pidfd is opened first, then checked against `start`: the pid held this
        process when the pidfd was opened (a pid is reused only once its process has
        been reaped, after which the check fails), and from then on the pidfd is this
        process whatever becomes of the pid. Where pidfds are missing (an old kernel,
        no descriptor left), the check comes right before `kill`, as psutil does it. A
        process read with a pidfd opened just before (`children`, `pinned`) was read
        after it was opened: it is not read again.
        """
        pinned = self._pidfd is not None
        try:
            pidfd = self._pidfd if pinned else os.pidfd_open(self.pid)
        except ProcessLookupError:
            return None
        except OSError:
            pidfd = None

        def send(signum: int) -> None:
            if pidfd is None:
                os.kill(self.pid, signum)
            else:
                signal.pidfd_send_signal(pidfd, signum)

        try:
            now = self if pinned else self.again()
            if now is not None:
                act(now, send)
            return now
        except OSError:  # gone (ESRCH), or not ours to signal (EPERM)
            return None
        finally:
            if pidfd is not None and not pinned:
                os.close(pidfd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proc) and self.identity == other.identity

    def __hash__(self) -> int:
        return hash(self.identity)

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, ppid={self.ppid}, state={self.state!r})"


_SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _has_children_files() -> bool:
    """Whether the kernel lists a thread's children (CONFIG_PROC_CHILDREN)."""
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


_CHILDREN_FILES = _has_children_files()


def _child_pids(proc: Proc) -> list[int]:
    """The pids of `proc`'s children from /proc/PID/task/*/children (Linux); [] if gone.

    One small read per thread (a single-threaded process has one task: no listing of
    them), where psutil's walk reads every process's status: fast enough to catch a
    process that lives a millisecond (a link of a fork-and-exit chain).
    """
    pid = proc.pid
    if proc.threads == 1:
        tasks = [str(pid)]
    else:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    pids: list[int] = []
    for task in tasks:
        try:
            fd = os.open(f"/proc/{pid}/task/{task}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone, or a thread that ended since the listing
        try:
            while chunk := os.read(fd, 65536):
                pids.extend(map(int, chunk.split()))
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return pids


def children(
    proc: Proc,
    skip: Container[int] = (),
    sighted: Callable[[int], None] | None = None,
    *,
    pinned: bool = False,
) -> Iterator[Proc]:
    """The children of `proc`, zombies included, newest first; none if it is gone.

    Pids in `skip` are left out before anything is read about them;
    `sighted` is called with each other one, before anything is read about it. Each is
    read when the one before has been dealt with. `pinned`: each comes with a pidfd
    opened before it was read, so that it is signalled without being read again
    (`Proc._checked`), until the next one is asked for.
    """
    if not _CHILDREN_FILES:
        try:
            pids = [c.pid for c in psutil.Process(proc.pid).children()]
        except GONE:
            return
        pids.sort()  # oldest first, as the kernel lists them (pids wrap: close enough)
    else:
        pids = _child_pids(proc)
    for pid in reversed(pids):  # newest first (see `descendants`)
        if pid in skip:
            continue
        if sighted is not None:
            sighted(pid)
        pidfd = _pidfd_open(pid) if pinned else None
        child = Proc.read(pid)
        # The pid was read before the process: if it was reused in between, the
        # newcomer is not our child (unless it is, and then it counts).
        if child is None or child.ppid != proc.pid:
            if pidfd is not None:
                os.close(pidfd)
            continue
        child._pidfd = pidfd
        try:
            yield child
        finally:
            child._pidfd = None
            if pidfd is not None:
                os.close(pidfd)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None  # gone (then there is nothing to read either), or no pidfds


def descendants(
    pid: int,
    *,
    prune: Callable[[Proc, int], bool] | None = None,
    skip: Collection[int] = (),
    seen_one: Callable[[Proc], None] | None = None,
    sighted: Callable[[int], None] | None = None,
) -> list[Proc]:
    """Every live descendant of `pid`, parents before children; [] if `pid` is gone.

    A process for which `prune(process, its parent's pid)` is true is left out, with
    its whole subtree; so is a child of `pid` itself whose pid is in `skip`, before
    anything is read about it (a hub's children: the other sessions' CLIs; a set, so
    that hundreds of them are left out at the cost of one set operation).

    `seen_one` is called with each process as soon as it is found, before the walk goes
    on (`stop_on_sight`). The root's children are looked at newest first: that is where
    a fork chain's live link is; `sighted` is called with each of them before anything
    else is read about it (`SessionFilter.listing`).
    """
    root = Proc.read(pid)
    if root is None:
        return []
    pinned = seen_one is not None  # it signals what it finds: no second read for that
    found: list[Proc] = []
    looked_at: set[int] = set()  # a child re-parented mid-walk is met twice
    todo: list[Proc] = []

    def take(child: Proc, parent: int) -> None:
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
        # had already been read. A fork chain does this at every link. (A thread the
        # root started since it was read is not looked at: the hub has one.)
        fresh = False
        # Met before, in this walk: not read, nor `sighted`, again (`SessionFilter._hold`
        # would stop it and then let it go, as one it did not get to read).
        left_out = looked_at.union(skip) if skip else looked_at
        for child in children(root, left_out, sighted, pinned=pinned):
            fresh = True
            take(child, root.pid)
        if not fresh:
            break
        while todo:
            parent = todo.pop()
            for child in children(parent, pinned=pinned):
                take(child, parent.pid)
    return found


def stop_on_sight(proc: Proc) -> None:
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
    # Already stopped when read (held, or by a freezing listing before this one): not
    # signalled again, unless it leads a group, which may not be.
    if proc.state not in ("T", "t") or proc.pgrp == proc.pid:
        proc.send(signal.SIGSTOP, group=True)


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
        read, or even its `/proc/PID/stat` (a `Proc`), the link has forked the next one
        and exited, listing after listing. So a freezing listing stops a hub child the
        moment its pid is read, and reads after; `prune` lets go (SIGCONT) of what turns
        out not to be the session's: another session's orphan, seen once (its tag is
        then remembered), is held for the time of one read.

        The bare pid is signalled here, not through a `Proc`: it was read from the
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

    def skipped(self) -> set[int]:
        """The hub's children left out unread: the other sessions' CLIs."""
        return set(self.others).difference((self.cli,))

    def prune(self, proc: Proc, parent: int) -> bool:
        if proc.pid == self.cli or (parent != self.hub and parent not in self._unsure):
            return False
        tags = self.tags if self.tags is not None else {}
        known = tags.get(proc.pid)
        tag = known[1] if known is not None and known[0] == proc.start else None
        if tag is None:
            tag = proc.tag()
            if tag is None:
                # Unreadable, or empty: a process that is exiting has no environment
                # left to read while it still has children (a fork chain's link whose
                # child is the live one), and one mid-start may not have one yet.
                # Walked into but never listed: its children say by their own tag
                # whose they are.
                self._unsure.add(proc.pid)
                self._let_go(proc.pid)
                return False
            if self.tags is not None:
                if len(tags) > 100_000:
                    tags.clear()
                tags[proc.pid] = (proc.start, tag)
        if tag != self.tag:
            self._let_go(proc.pid)
            return True
        return False

    def listing(self, seen_one: Callable[[Proc], None] | None = None) -> list[Proc]:
        """The session's processes now, parents before children (see `walk`)."""
        found = self.walk(self.prune, seen_one)
        return [proc for proc in found if proc.pid not in self._unsure]

    def walk(
        self,
        prune: Callable[[Proc, int], bool],
        seen_one: Callable[[Proc], None] | None = None,
        wanted: Callable[[Proc], bool] = lambda proc: True,
    ) -> list[Proc]:
        """`descendants` of the hub, with `prune` (which must call `self.prune` first).

        With `seen_one` (a freezing listing, see `stop_on_sight`), called for the
        `wanted` processes found, the hub's children are held (`_hold`) until their tag
        is read; those `seen_one` is called for stay stopped, and every other one is
        let go before this returns.
        """
        self._unsure = set()
        self._held = set()

        def seen(proc: Proc) -> None:
            if seen_one is not None and proc.pid not in self._unsure and wanted(proc):
                self._held.discard(proc.pid)
                seen_one(proc)

        try:
            return descendants(
                self.hub,
                prune=prune,
                skip=self.skipped(),
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
    return frozenset(proc.identity for proc in procs)


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
    listing: Callable[[], Iterable[Proc]],
    timeout: float,
    *,
    grace: float,
    reap: Callable[[], None] | None = None,
    seize: Callable[[], Iterable[Proc]] | None = None,
) -> int:
    """Kills every process `listing()` gives, until it gives none; returns how many.

    The blocking form of `terminate_steps`, which says how.
    """
    return run_steps(terminate_steps(listing, timeout, grace=grace, reap=reap, seize=seize))


def terminate_steps(
    listing: Callable[[], Iterable[Proc]],
    timeout: float,
    *,
    grace: float,
    reap: Callable[[], None] | None = None,
    seize: Callable[[], Iterable[Proc]] | None = None,
) -> Generator[float, None, int]:
    """Kills every process `listing()` gives, until it gives none; returns how many.

    A listing is out of date as soon as it is made: a fork-and-exit chain (each link
    forks the next, which `setsid`s, and exits) has moved on by the time we signal what
    we listed. So the tree is first *frozen*: every listed process gets SIGSTOP and the
    listing is repeated until it holds nothing new and everything in it has stopped (a
    stopped process cannot fork). Then SIGTERM, and SIGCONT so that stopped processes,
    ours or someone else's (a wedged CLI), can act on it at once rather than after
    `timeout`. Until `timeout` has passed, or what was frozen has exited and the
    listing stays empty (then it is done), it waits; then rounds of freeze and SIGKILL
    follow until the listing is empty, bounded by `timeout + grace` in all: this never
    blocks without a deadline on processes it is trying to kill. (`grace` is
    `_policy.TREE_GRACE`, passed in: the hub must not import the package's trio side.)
    A process that SIGTERM, or in those rounds SIGKILL, ends without its running any
    code gets it as soon as it is seen stopped, while the freeze goes on (`_freeze`).

    What was frozen is waited for on its own, not listed again: the listing is the
    costly part (a walk of every process of the tree), and a round of freeze lists
    anything new anyway. The listing is only looked at while waiting once all that
    was frozen has exited, so that what it started meanwhile (a shell's trap) still
    gets the rest of `timeout` before SIGKILL.

    `seize`, if given, is the listing used to freeze: the same processes, each stopped
    as soon as it is found (`stop_on_sight`). `reap` is called while waiting, by a
    caller that is the parent of some of them (the hub), so that they do not linger as
    zombies. Where it waits, it yields the delay.
    """
    freezing = seize if seize is not None else listing
    start = time.monotonic()
    deadline = start + timeout + grace
    signalled: set[Identity] = set()

    def send(procs: Iterable[Proc], *signums: int) -> None:
        for proc in procs:
            if proc.send(*signums):
                signalled.add(proc.identity)

    seized = seize is not None
    frozen = yield from _freeze(freezing, deadline, reap, seized=seized, ended=signalled)
    if not frozen and not signalled and (yield from _stays_empty(listing, reap)):
        # Nothing to kill (the usual case after a turn's in-band cancel: the CLI ended
        # its tools itself): the end the kill rounds below would reach, without the
        # waits for SIGTERM and the round of freeze before it.
        return 0
    send(
        (proc for proc in frozen if proc.identity not in signalled), signal.SIGTERM, signal.SIGCONT
    )
    term_end = min(start + timeout, deadline)
    yield from _wait_exited(frozen, term_end, reap)
    if time.monotonic() < term_end and (yield from _wait_gone(listing, term_end, reap)):
        return len(signalled)  # all gone, and the listing stayed empty: where the
        # kill rounds below would end at once
    while True:
        killed: set[Identity] = set()
        frozen = yield from _freeze(
            freezing, deadline, reap, seized=seized, ended=killed, kill=True
        )
        signalled |= killed
        frozen = [proc for proc in frozen if not proc.exited]
        if not frozen and (yield from _stays_empty(listing, reap)):
            break
        # Even at the deadline: never leave them stopped.
        send((proc for proc in frozen if proc.identity not in killed), signal.SIGKILL)
        if time.monotonic() >= deadline:
            break
        yield from _wait_exited(frozen, min(time.monotonic() + 0.5, deadline), reap)
    return len(signalled)


def _freeze(
    listing: Callable[[], Iterable[Proc]],
    deadline: float,
    reap: Callable[[], None] | None,
    *,
    seized: bool,
    ended: set[Identity] | None = None,
    kill: bool = False,
) -> Generator[float, None, list[Proc]]:
    """SIGSTOPs what `listing()` gives until it gives nothing new and all of it stopped.

    Returns the last listing. Bounded by `deadline` (a process in uninterruptible sleep
    does not stop until it leaves it); zombies count as stopped. Two listings in a row
    must bring nothing new: one can miss a link of a chain that exits while it is walked
    (its child is re-parented to a thread of the subreaper that was already read).
    With `seized`, the listing stopped what it found itself (`stop_on_sight`).

    With `ended`, a process seen stopped that SIGTERM would kill outright (`term_kills`)
    is sent SIGTERM and SIGCONT there and then, or with `kill` any process seen stopped
    SIGKILL, and its identity added to `ended`: it dies running none of its code (the
    kernel acts on the pending SIGTERM before it returns to it), so it cannot fork, and
    the freeze is as good as if it stayed stopped. But most of a tree is gone by the
    time it is frozen: a thousand processes exiting, the kill's slowest part, runs
    alongside the listings instead of after them. What would act on SIGTERM is left
    stopped, for the caller.
    """
    stopped: set[Identity] = set()
    quiet = 0

    def check(proc: Proc) -> Proc | None:
        """`proc` read again (and ended, with `ended`, if it can be); None if gone."""
        if ended is None or proc.identity in ended:
            return proc.again()
        now = proc.end_if_stopped(kill=kill)
        if now is not None and now.endable(kill=kill):
            ended.add(proc.identity)
        return now

    while True:
        if reap is not None:
            reap()
        procs = list(listing())
        new = [proc for proc in procs if proc.identity not in stopped]
        for proc in new:
            stopped.add(proc.identity)
            if not seized and not proc.stopped:
                proc.send(signal.SIGSTOP)
        quiet = 0 if new else quiet + 1
        if quiet >= 2 or time.monotonic() >= deadline:
            return procs
        if not new:
            yield 0.001
            continue
        # SIGSTOP is delivered asynchronously: until a process has stopped it may still
        # fork, and its child is in the next listing only if we list after that. (Once
        # seen stopped, it is not read again; a look that finds some stopped is followed
        # by another at once, the first signalled first.)
        moving = [proc for proc in procs if not proc.stopped]
        wait_until = min(time.monotonic() + 0.2, deadline)
        delay = 0.0005
        while moving and time.monotonic() < wait_until:
            still = []
            for proc in moving:
                now = check(proc)
                if now is not None and not now.stopped:
                    still.append(proc)
            if len(still) < len(moving):
                moving = still
                yield 0.0
            elif moving:
                yield delay
                delay = min(delay * 2, 0.01)


def running(proc: Proc) -> bool:
    """Whether `proc` is still the process it was and has not exited (zombies have)."""
    now = proc.again()
    return now is not None and not now.exited


def _stays_empty(
    listing: Callable[[], Iterable[Proc]], reap: Callable[[], None] | None
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
    listing: Callable[[], Iterable[Proc]],
    deadline: float,
    reap: Callable[[], None] | None,
) -> Generator[float, None, bool]:
    """Waits until nothing `listing()` gives runs (zombies count as gone), or `deadline`;
    whether the listing was seen to stay empty (`_stays_empty`)."""
    delay = 0.002
    while True:
        if reap is not None:
            reap()
        if not any(running(p) for p in listing()) and (yield from _stays_empty(listing, reap)):
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        yield min(delay, deadline - now)
        delay = min(delay * 2, 0.05)


def _wait_exited(
    procs: Iterable[Proc], deadline: float, reap: Callable[[], None] | None
) -> Generator[float, None, None]:
    """Waits until none of `procs` runs (zombies count as gone), or `deadline`.

    One read per process that has exited, and one per look for the first that has
    not: a thousand processes are not all read again every few milliseconds.
    """
    left = list(procs)
    delay = 0.001
    while True:
        if reap is not None:
            reap()
        while left and not running(left[-1]):
            left.pop()
        now = time.monotonic()
        if not left or now >= deadline:
            return
        yield min(delay, deadline - now)
        delay = min(delay * 2, 0.05)


def turn_processes(
    pid: int,
    before: Collection[Identity],
    exclude: Collection[int],
    *,
    tag: str | None = None,
    others: Collection[int] = (),
    tags: Tags | None = None,
    seen_one: Callable[[Proc], None] | None = None,
) -> list[Proc]:
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

    def prune(proc: Proc, parent: int) -> bool:
        if mine is not None and mine.prune(proc, parent):
            return True
        if proc.pid in exclude:
            return False  # walk into the CLI, but never return it (below)
        return parent in sessions and proc.session == sessions[parent]

    def counts(proc: Proc) -> bool:
        if proc.pid in exclude or (mine is not None and mine.unsure(proc.pid)):
            return False
        return proc.identity not in before

    def seen(proc: Proc) -> None:
        if seen_one is not None and counts(proc):
            seen_one(proc)

    if mine is not None:
        walk = mine.walk(prune, seen_one, wanted=counts)
    else:
        walk = descendants(pid, prune=prune, seen_one=None if seen_one is None else seen)
    return [proc for proc in walk if counts(proc)]


# ------------------------------------------------------------- a helper that died


def tagged(tag: str, since: float) -> list[Proc]:
    """Live processes created at or after `since` whose environment carries `tag`.

    What a process was started with (/proc/PID/environ), so a program that changes its
    own variables still carries it; one started with a cleared environment does not.
    """
    found = (_tagged(pid, tag, since) for pid in psutil.pids())
    return [proc for proc in found if proc is not None]


def _tagged(pid: int, tag: str, since: float) -> Proc | None:
    """The process on `pid` if it is one of `tagged(tag, since)`."""
    if pid == os.getpid():
        return None
    proc = Proc.read(pid)
    if proc is None or proc.create_time() < since or proc.tag() != tag:
        return None
    return proc


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
    killed: set[Identity] = set()
    deadline = time.monotonic() + timeout + grace

    def kill_if_tagged(pid: int) -> bool:
        proc = _tagged(pid, tag, since)
        if proc is None or not proc.send(signal.SIGKILL):
            return False
        killed.add(proc.identity)
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
