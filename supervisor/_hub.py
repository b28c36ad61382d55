"""The hub: one helper process per host process, parent and subreaper of every CLI.

Why a helper process at all. The CLI's Bash tool runs its shells in their own session,
and a tool may `setsid` a grandchild that is then re-parented away: neither is reached
by signalling the CLI's process group, and once a parent dies its orphans no longer show
up as anyone's descendants. A *child subreaper* keeps them: orphans in its subtree are
re-parented to it, so "everything a CLI ever started" stays "a descendant of the
subreaper". Being a subreaper is process-wide, though, and a library must not make its
host program adopt unrelated orphans; so a helper process is the subreaper instead.

Why one per host process. A helper is a Python interpreter with psutil loaded (about
7 MB of memory of its own); one per session made 200 sessions cost 1.4 GB. So the first
session of a host process starts the hub, every later one uses it, and the hub ends when
the last one has closed (the next session starts a new one):

    host ── hub (subreaper) ─┬─ claude (session A) ── tool shells ...
                             ├─ claude (session B) ── ...
                             └─ orphans re-parented to the hub (a tool's `setsid` child)

Which processes are a session's. Each session's CLI gets `TAG_VARIABLE` = a token of
its own in its environment, which every process it starts inherits; the hub's children
are the sessions' CLIs (known: the hub spawned them and has not reaped them, so their
pids cannot have been reused) and adopted orphans, which belong to the session whose tag
they carry. A session's tree is its CLI and its tagged orphans, each with everything
below it (`_tree.SessionFilter`). A process that escaped *and* cleared its environment
belongs to no session: it is killed when the hub ends.

Talking to the hub. The host holds one end of a *control* socket (a Unix socketpair);
each session makes a socketpair of its own and sends one end to the hub over the control
socket (SCM_RIGHTS). On its session socket the host sends a spawn request (one JSON
line: args, env, cwd, tag, kill timeout, grace) with the CLI's stdin, stdout and stderr
attached (the host made the pipes; the hub hands them to the CLI and closes its copies),
and later, maybe, `{"op": "kill"}`. The hub answers on the same socket, one JSON object
a line: `{"event": "spawned", "pid": N, "create_time": T}`, then `{"event": "exited",
"returncode": R, "killed": K, "survivors": S}` once the CLI has exited *and* the rest of
the session's tree has been killed (S counts processes that outlived every SIGKILL
round, stuck in the kernel), or `{"event": "spawn_failed", "error": "..."}`.

Lifelines. End-of-file on a session socket means the session is gone (closed, or the
host died): the hub kills that session's tree. End-of-file on the control socket means
the host has no session left, or is dead, even by SIGKILL (the kernel closes its
sockets): the hub kills every tree and exits. SIGTERM or SIGHUP to the hub does the same,
reporting each session's exit. Linux's parent-death signal would be simpler but follows
the parent *thread*, and trio starts processes from worker threads that exit when idle.

One thread. The hub is a single-threaded selector loop: the sockets, a self-pipe that
signals wake (SIGCHLD to reap; SIGTERM and SIGHUP to stop), and timers. Each session's
tree kill (`_tree.terminate_steps`) is a generator that says how long to wait before its
next step, so many sessions are killed side by side and a slow kill holds up no other
session's spawn. The CLI is forked from that one thread, which makes the CLI's
parent-death signal (SIGKILL when the hub dies) sound. Signals the CLI inherits keep
their default disposition: the hub catches SIGINT and SIGQUIT with handlers that do
nothing (a handler, unlike SIG_IGN, is reset by exec).

Run as `_launch.command()` gives: `python -I -c ...`, importing only the standard
library, psutil and `_tree` (not the package's trio side), so that it starts fast. The
host's side of the wire (starting a hub, sessions, spawn requests) is in `_launch`; so
is the executable's faster start, a hub forked with its first CLI already running
(`_launch.prestart`, then `run_prestarted` here).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from . import _tree as tree
from ._launch import (
    HUB_PID_VARIABLE,
    KILL_REQUEST,
    STDIO,
    become_subreaper,
    creation_time,
    fork_exec,
    new_tag,
    open_session,
    spawn_request,
)
from ._launch import start as start

__all__ = ["KILL_REQUEST", "BlockingSession", "main", "start"]

_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class BlockingSession:
    """One session of a hub, driven synchronously (tests and benchmarks)."""

    def __init__(
        self,
        control: socket.socket,
        args: Sequence[str],
        *,
        kill_timeout: float,
        grace: float,
        tag: str = "",
        env: Mapping[str, str] | None = None,
        stdio: Sequence[int] = (0, 1, 2),
    ) -> None:
        self.tag = tag or new_tag()
        self.sock = open_session(control)
        request = spawn_request(
            args,
            env=dict(os.environ if env is None else env),
            cwd=os.getcwd(),
            tag=self.tag,
            kill_timeout=kill_timeout,
            grace=grace,
        )
        sent = socket.send_fds(self.sock, [request], list(stdio))
        self.sock.sendall(request[sent:])
        self._reports = self.sock.makefile("rb")

    def report(self) -> dict[str, Any]:
        """The next report ({} at the end of the socket)."""
        line = self._reports.readline()
        return dict(json.loads(line)) if line else {}

    def kill(self) -> None:
        self.sock.sendall(KILL_REQUEST)

    def close(self) -> None:
        self._reports.close()
        self.sock.close()


# ------------------------------------------------------------------------- the hub


class _Session:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.fds: list[int] = []  # received, not yet used by a spawn request
        self.tag = ""
        self.kill_timeout = 5.0
        self.grace = 4.0
        self.cli: int | None = None  # the CLI's pid, until it is reaped
        self.returncode: int | None = None
        self.connected = True  # the host's end is open
        self.started = False  # a spawn was tried: there is an end to report
        self.ending = False  # its tree kill (and report) is under way
        self.ended = False


class _Hub:
    def __init__(self, control: socket.socket) -> None:
        self.me = os.getpid()
        self.control: socket.socket | None = control
        self.selector = selectors.DefaultSelector()
        self.sessions: dict[socket.socket, _Session] = {}
        self.clis: dict[int, _Session] = {}  # live (unreaped) CLIs
        self.tags: tree.Tags = {}  # see `_tree.SessionFilter`
        self.timers: list[tuple[float, int, Generator[float, None, None], _Session | None]] = []
        self.order = itertools.count()
        self.stopping = False
        self.grace = 4.0
        control.setblocking(False)
        self.selector.register(control, selectors.EVENT_READ, self._on_control)
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(wake_write, False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, self._on_wake)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, _nothing)  # not SIG_IGN: the CLI would inherit that
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_stop_signal)
        become_subreaper()

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        while not (self.stopping and all(s.ended for s in self.sessions.values())):
            if self.stopping:
                for session in list(self.sessions.values()):
                    if not session.started:
                        session.ended = True  # nothing to kill; closing tells the host
                    elif not session.ending and not session.ended:
                        self._end(session)
            timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else None
            for key, _events in self.selector.select(timeout):
                key.data(key.fileobj)
            self._reap()
            self._run_timers()
        # What no session claimed (an orphan that cleared its environment), or outlived
        # its session's kill: it goes with the hub.
        me = self.me
        if tree.descendants(me):
            tree.terminate(lambda: tree.descendants(me), 1.0, grace=self.grace, reap=self._reap)
        self._reap()
        return 0

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_wake(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, steps, session = heapq.heappop(self.timers)
            self._advance(steps, session)

    def _schedule(
        self, delay: float, steps: Generator[float, None, None], session: _Session | None
    ) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.order), steps, session))

    def _advance(self, steps: Generator[float, None, None], session: _Session | None) -> None:
        try:
            delay = next(steps)
        except StopIteration:
            if session is not None:
                self._ended(session)
            return
        except Exception as exc:  # a bug must not take every other session's tree with it
            print(f"claude-supervisor hub: {exc!r}", file=sys.stderr)
            if session is not None:
                self._ended(session)
            return
        self._schedule(delay, steps, session)

    def _reap(self) -> None:
        """Reaps every exited child (orphans included); a CLI's exit ends its session."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            session = self.clis.pop(pid, None)
            if session is not None:
                session.cli = None
                session.returncode = os.waitstatus_to_exitcode(status)
                if not session.ending:
                    self._end(session)

    # ---------------------------------------------------------------- sockets

    def _on_control(self, sock: socket.socket) -> None:
        received = _receive(sock, 4096, 64)
        if received is None:
            return
        data, fds = received
        for fd in fds:
            session_sock = socket.socket(fileno=fd)
            if self.stopping:
                session_sock.close()
                continue
            self._add_session(session_sock)
        if not data and not fds:
            # The host has no session left, or is dead: end every tree, then exit.
            self.selector.unregister(sock)
            sock.close()
            self.control = None
            self.stopping = True

    def _add_session(self, sock: socket.socket) -> _Session:
        sock.setblocking(False)
        session = self.sessions[sock] = _Session(sock)
        self.selector.register(sock, selectors.EVENT_READ, self._on_session)
        return session

    def _on_session(self, sock: socket.socket) -> None:
        session = self.sessions[sock]
        received = _receive(sock, 65536, 16)
        if received is None:
            return
        data, fds = received
        session.fds.extend(fds)
        if not data:
            session.connected = False
            self.selector.unregister(sock)
            if session.ended or not session.started:
                self._forget(session)
            elif not session.ending:
                self._end(session)
            return
        session.buffer += data
        while b"\n" in session.buffer:
            line, _, rest = bytes(session.buffer).partition(b"\n")
            session.buffer[:] = rest
            try:
                request = json.loads(line)
            except ValueError:
                continue
            if request.get("op") == "spawn" and not session.started and not self.stopping:
                self._spawn(session, request)
            elif request.get("op") == "kill" and session.started and not session.ending:
                self._end(session)

    def _send(self, session: _Session, **fields: object) -> None:
        if session.connected:
            with contextlib.suppress(OSError):
                session.sock.sendall(json.dumps(fields).encode() + b"\n")

    def _forget(self, session: _Session) -> None:
        self.sessions.pop(session.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(session.sock)
        session.sock.close()
        for fd in session.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        session.fds.clear()

    # ---------------------------------------------------------------- a session

    def _spawn(self, session: _Session, request: dict[str, Any]) -> None:
        session.started = True
        stdio, session.fds = session.fds[:STDIO], session.fds[STDIO:]
        args = [str(arg) for arg in request.get("args", [])]
        session.tag = str(request.get("tag", ""))
        session.kill_timeout = float(request.get("kill_timeout", session.kill_timeout))
        session.grace = self.grace = float(request.get("grace", session.grace))
        env = {str(k): str(v) for k, v in dict(request.get("env", {})).items()}
        env[HUB_PID_VARIABLE] = str(self.me)
        if session.tag:
            env[tree.TAG_VARIABLE] = session.tag
        try:
            if len(stdio) != STDIO or not args:
                raise OSError(0, "the spawn request came without its pipes or arguments")
            pid = fork_exec(args, env, str(request.get("cwd") or "/"), stdio)
        except OSError as exc:
            self._spawn_failed(session, args, exc)
            return
        finally:
            for fd in stdio:
                os.close(fd)
        self._spawned(session, pid)

    def _spawn_failed(self, session: _Session, args: Sequence[str], exc: OSError) -> None:
        error = f"cannot run {args[0] if args else ''!r}: {exc.strerror or exc}"
        self._send(session, event="spawn_failed", error=error)
        session.ended = True

    def _spawned(self, session: _Session, pid: int, *, reported: bool = False) -> None:
        session.cli = pid
        self.clis[pid] = session
        if reported:  # by `_launch.prestart`'s hub, before this loop was imported
            return
        # Not reaped yet (only this thread reaps), so the pid is still the CLI's.
        self._send(session, event="spawned", pid=pid, create_time=creation_time(pid))

    def _end(self, session: _Session) -> None:
        """Kills the session's tree (its CLI first, if alive), then reports its exit."""
        session.ending = True
        self._schedule(0.0, self._end_steps(session), session)

    def _end_steps(self, session: _Session) -> Generator[float, None, None]:
        def listing() -> list[tree.Proc]:
            return self._tree_of(session)

        def seize() -> list[tree.Proc]:
            return self._tree_of(session, tree.stop_on_sight)

        killed = yield from tree.terminate_steps(
            listing, session.kill_timeout, grace=session.grace, reap=self._reap, seize=seize
        )
        # What is still the session's (a zombie): reap it, but never wait without a
        # deadline on a process that may not die (stuck in the kernel).
        deadline = time.monotonic() + 1.0
        while (session.cli is not None or listing()) and time.monotonic() < deadline:
            self._reap()
            yield 0.01
        self._reap()
        survivors = sum(1 for proc in listing() if tree.running(proc))
        self._send(
            session,
            event="exited",
            returncode=session.returncode,
            killed=killed,
            survivors=survivors,
        )

    def _ended(self, session: _Session) -> None:
        session.ended = True
        if not session.connected:
            self._forget(session)

    def _tree_of(
        self, session: _Session, seen_one: Callable[[tree.Proc], None] | None = None
    ) -> list[tree.Proc]:
        """The session's processes: its CLI and its tagged orphans, with their trees."""
        mine = tree.SessionFilter(
            self.me, cli=session.cli, tag=session.tag, others=self.clis, tags=self.tags
        )
        return mine.listing(seen_one)


def _nothing(signum: int, frame: object) -> None:
    pass


def main(argv: Sequence[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    return _Hub(control).run()


def run_prestarted(
    control: socket.socket,
    sock: socket.socket,
    *,
    args: Sequence[str],
    cli: int | OSError,
    tag: str,
    kill_timeout: float,
    grace: float,
) -> int:
    """The hub's loop, with a first session whose CLI was forked before it began (the
    CLI's pid, or why it could not start), as if asked on `sock` (`_launch.prestart`,
    which has sent the `spawned` report already)."""
    hub = _Hub(control)
    session = hub._add_session(sock)
    session.started = True
    session.tag, session.kill_timeout, session.grace = tag, kill_timeout, grace
    hub.grace = grace
    if isinstance(cli, OSError):
        hub._spawn_failed(session, args, cli)
    else:
        hub._spawned(session, cli, reported=True)
        # What exited before the loop's SIGCHLD handler was there (the CLI may have, in
        # `BOOT_IDLE`) would wait for another child's signal: reaped now.
        hub._reap()
    return hub.run()


def _receive(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]] | None:
    """What a ready socket holds (bytes and passed fds); `(b"", [])` at its end or on an
    error (the peer is gone either way); None when nothing was there after all."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, size, max_fds, _RECV_FLAGS)
    except BlockingIOError:
        return None
    except OSError:
        return b"", []
    return data, fds
