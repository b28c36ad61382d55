"""The supervisor's side of the hub: start it, run CLIs through it, read their reports.

The one owner of how a CLI run is started under the hub (see `_hub`) and how its
reports are read, shared by the library's `CliProcess` (`_process`) and the
executable's passthrough mode (`_passthrough`).

`Hub` is a host's hub process as the host sees it: started by the first run that needs
it, shared by every session that holds a `Lease` on it, and ended (its control socket
closed) when the last lease is released. The library's sessions share one
(`shared_hub()`); the passthrough mode, one session in a process of its own, starts its
own with the process group its terminal needs. A `HubRun` is one CLI run: its pipes,
its session socket, its reports, and the CLI as a `psutil.Process`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import psutil
import trio

from . import _launch as hub_process
from . import _tree as tree
from ._framing import LineSplitter
from ._grace import REAP_GRACE, TREE_GRACE
from ._launch import Prestarted

if TYPE_CHECKING:
    from ._launch import HubProcess

#: A report of the hub about one run, one JSON object (see `_hub`).
Report = dict[str, object]

#: The reports that end a run: nothing comes after them.
FINAL_EVENTS = ("exited", "spawn_failed")


class Hub:
    """A hub process as its host sees it (see the module docstring)."""

    def __init__(self, *, new_session: bool = True, process_group: int | None = None) -> None:
        self._new_session = new_session
        self._process_group = process_group
        self._lock = threading.Lock()  # trio runs in several threads may share it
        self._process: HubProcess | None = None
        self._control: socket.socket | None = None
        self._users = 0
        #: The pids of the CLIs of this hub's live runs: a session's listing skips
        #: them without reading their environment (see `_tree.SessionFilter`).
        self.clis: set[int] = set()
        #: The tags of the hub's processes, as read so far (see `_tree.SessionFilter`).
        self.tags: tree.Tags = {}

    @property
    def pid(self) -> int | None:
        """The hub's pid while it runs (started by the first run)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def lease(self) -> Lease:
        """Keeps the hub for a session; it ends when the last lease is released."""
        with self._lock:
            self._users += 1
        return Lease(self)

    def _release(self) -> HubProcess | None:
        """One lease fewer; the last one lets go of the hub, returned to be waited for."""
        with self._lock:
            self._users -= 1
            return self._stop() if self._users == 0 else None

    def _release_in_background(self) -> None:
        """`_release`, when a lease is garbage-collected: nobody waits for the hub."""
        _reap_in_background(self._release())

    def open_session(self) -> tuple[socket.socket, int]:
        """A new session's socket to the hub, and the hub's pid (started if need be)."""
        with self._lock:
            for attempt in range(2):
                if self._process is None or self._process.poll() is not None:
                    self._stop()  # a hub that died (reaped by poll): a new one
                    self._process, self._control = hub_process.start(
                        new_session=self._new_session, process_group=self._process_group
                    )
                assert self._control is not None
                try:
                    return hub_process.open_session(self._control), self._process.pid
                except OSError:
                    # Its end of the control socket is gone: it is dying.
                    _reap_in_background(self._stop())
                    if attempt:
                        raise
            raise AssertionError("unreachable")

    def adopt(self, process: HubProcess, control: socket.socket) -> bool:
        """Makes a hub started early (`_launch.prestart`) this one, if it has none yet."""
        with self._lock:
            if self._process is not None:
                return False
            self._process, self._control = process, control
            return True

    def _stop(self) -> HubProcess | None:
        """Lets go of the hub: it sees end-of-file, kills what is left, and exits.

        Returns the hub if it still runs, for the caller to wait for.
        """
        if self._control is not None:
            self._control.close()
            self._control = None
        process, self._process = self._process, None
        return process if process is not None and process.poll() is None else None

    def _forget_after_fork(self) -> None:
        """In a child forked from the host: none of this is the child's."""
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        self._lock = threading.Lock()
        self._control = self._process = None
        self._users = 0
        self.clis = set()
        self.tags = {}


def _reap_in_background(process: HubProcess | None) -> None:
    """Reaps `process` from a thread of its own (at interpreter exit no thread can
    start: the hub, if it still runs then, is left to init)."""
    if process is not None:
        with contextlib.suppress(RuntimeError):
            threading.Thread(target=_wait_for, args=(process,), daemon=True).start()


def _wait_for(process: HubProcess, timeout: float | None = None) -> None:
    with contextlib.suppress(Exception):
        process.wait(timeout)


class Lease:
    """A session's hold on a hub; released by `aclose`, or when garbage-collected."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._finalizer = weakref.finalize(self, hub._release_in_background)

    async def aclose(self) -> None:
        """Lets go of the hub; the last lease waits (shielded, bounded) for its exit,
        so that when the last session has closed, none of its processes is left."""
        if self._finalizer.detach() is None:
            return  # released already
        process = self.hub._release()
        if process is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_wait_for, process, HUB_EXIT_TIMEOUT)


#: How long the last session waits for the hub to exit: it has nothing left to kill by
#: then (every run's tree is gone before its run ends), so it exits at once.
HUB_EXIT_TIMEOUT = 10.0


_shared: Hub | None = None
_shared_lock = threading.Lock()


def shared_hub() -> Hub:
    """The hub shared by every library session of this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Hub(new_session=True)
        return _shared


def _after_fork_in_child() -> None:
    if _shared is not None:
        _shared._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class HubRun:
    """One run of the CLI through the hub, seen from the supervisor.

    `stdin`, `stdout` and `stderr` are the CLI's pipes (None when it was given ours).
    `pid` is the hub's. `cli` is the CLI as the `psutil.Process` made when the hub
    reported it spawned (checked against the creation time it reported), dropped at its
    exit: once the hub has reaped the CLI its pid may be reused, and a process made from
    the bare pid then would be the newcomer.
    """

    def __init__(
        self,
        hub: Hub,
        sock: socket.socket,
        hub_pid: int,
        *,
        tag: str,
        started: float,
        kill_timeout: float,
        stdio: tuple[trio.lowlevel.FdStream, trio.lowlevel.FdStream, trio.lowlevel.FdStream] | None,
    ) -> None:
        self.pid = hub_pid
        self.stdin: trio.lowlevel.FdStream | None = None
        self.stdout: trio.lowlevel.FdStream | None = None
        self.stderr: trio.lowlevel.FdStream | None = None
        if stdio is not None:
            self.stdin, self.stdout, self.stderr = stdio
        self.tag = tag
        self.started = started
        self.cli: psutil.Process | None = None
        #: The report that ended the run (`exited` or `spawn_failed`), once it came.
        self.final: Report | None = None
        #: Set when the hub died before the run's last report: how many processes it
        #: left that were killed by their tag instead.
        self.orphans_killed: int | None = None
        self._hub = hub
        self._sock = sock
        self._splitter = LineSplitter()
        self._done = trio.Event()
        #: Set once the CLI's pid is known, or known never to be (a final report first).
        self.settled = trio.Event()
        self._kill_timeout = kill_timeout
        self._before_turn: frozenset[tree.Identity] = frozenset()

    def kill_tree(self) -> None:
        """Asks the hub to kill the run's whole tree; it then reports the exit."""
        if self.final is None and self._sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                self._sock.send(hub_process.KILL_REQUEST)  # a few bytes: never blocks

    def send_to_cli(self, signum: int) -> None:
        """`signum` to the CLI itself while it is ours (never to a reused pid)."""
        if self.cli is not None:
            with contextlib.suppress(psutil.Error):
                self.cli.send_signal(signum)  # checks the creation time first

    def cli_stopped(self) -> bool:
        """Whether the CLI is stopped (SIGSTOP, job control, a debugger)."""
        cli = self.cli
        if cli is None:
            return False
        try:
            # is_running() compares the create time: never report on a reused pid.
            return cli.is_running() and cli.status() in (
                psutil.STATUS_STOPPED,
                psutil.STATUS_TRACING_STOP,
            )
        except tree.GONE:
            return False

    def mark_turn_start(self) -> None:
        """Notes what the run's tree holds before a turn: `kill_turn_processes` spares it.

        A walk of this session's own processes only (its CLI's descendants and the hub's
        orphans carrying its tag), never of every process on the machine.
        """
        cli = self.cli.pid if self.cli is not None else None
        self._before_turn = tree.snapshot(self.pid, cli=cli, tag=self.tag, others=self._hub.clis)

    async def kill_turn_processes(self) -> int:
        """Kills what the running turn started, leaving the CLI (and what predates it)."""
        hub_pid, tag, before = self.pid, self.tag, self._before_turn
        keep = {self.cli.pid} if self.cli is not None else set()
        others = frozenset(self._hub.clis)

        listing = functools.partial(
            tree.turn_processes, hub_pid, before, keep, tag=tag, others=others, tags=self._hub.tags
        )
        seize = functools.partial(listing, seen_one=tree.stop_on_sight)

        # The common case is a turn that left nothing: two empty listings in a row (the
        # freeze rule's "nothing new twice"; each stops what it finds at once, so a fork
        # chain's link seen by either is held) settle it here, a bounded walk of our own
        # tree with no thread and no sleep, so that hundreds of sessions cancelled at
        # once do not queue on threads.
        if not seize() and not seize():
            return 0
        kill = functools.partial(
            tree.terminate, listing, self._kill_timeout, grace=TREE_GRACE, seize=seize
        )
        return await trio.to_thread.run_sync(kill)

    async def read_status(self, on_report: Callable[[Report], None] = lambda r: None) -> None:
        """Reads the hub's reports about this run until its last one.

        If the session socket ends first, the hub died (SIGKILL) before it could kill
        the tree, which lives on, re-parented to init: its work is done here, the tree
        found by its tag (`_tree.kill_tagged`), and `orphans_killed` set.
        """
        sock = self._sock
        while self.final is None:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            for line in self._splitter.feed(data):
                if isinstance(line, bytes):
                    report = json.loads(line)
                    self._on_report(report)
                    on_report(report)
        if self.final is None:
            self._forget_cli()
            self.orphans_killed = await self._kill_tagged()
        self.settled.set()
        self._done.set()

    def _on_report(self, report: Report) -> None:
        if report.get("event") == "spawned":
            self.cli = tree.process_of(report)
            if self.cli is not None:
                self._hub.clis.add(self.cli.pid)
            self.settled.set()
        elif report.get("event") in FINAL_EVENTS:
            self._forget_cli()  # gone: never signal that pid again
            self.final = report
            self.settled.set()

    def _forget_cli(self) -> None:
        if self.cli is not None:
            self._hub.clis.discard(self.cli.pid)
        self.cli = None

    async def wait(self) -> None:
        """Until the run's last report (or the clean-up after a hub that died)."""
        await self._done.wait()

    async def close(self) -> None:
        """Never leaves the run's tree behind; then closes the session socket and pipes.

        Call it shielded, once nothing else reads the run: it must run to the end even
        when the caller is cancelled.
        """
        try:
            if not self._done.is_set():
                self.kill_tree()
                with trio.move_on_after(self._kill_timeout + REAP_GRACE):
                    await self.read_status()
                if not self._done.is_set():
                    # The hub is wedged: closing the socket tells it to kill the tree;
                    # do it here as well.
                    self._close_socket()
                    self._forget_cli()
                    await self._kill_tagged()
        finally:
            self._close_socket()
            self._forget_cli()
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    await stream.aclose()

    def _close_socket(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def _kill_tagged(self) -> int:
        return await trio.to_thread.run_sync(
            tree.kill_tagged, self.tag, self.started, self._kill_timeout, TREE_GRACE
        )


async def start_run(
    cli: Sequence[str],
    *,
    hub: Hub,
    kill_timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    pipes: bool = True,
    early: Prestarted | None = None,
) -> HubRun:
    """Starts `cli` through `hub` (started if need be); raises OSError if it cannot.

    With `pipes`, the CLI gets three new pipes (`HubRun.stdin`...), else ours. The
    CLI's outcome (`spawned`, or `spawn_failed`) comes through `HubRun.read_status`.
    `early` is this very run, asked of `hub` before trio ran (`_launch.prestart`): it
    is taken over as it is.
    """
    if early is not None:
        early.sock.setblocking(False)
        stdin, stdout, stderr = (trio.lowlevel.FdStream(fd) for fd in early.fds)
        return HubRun(
            hub,
            early.sock,
            early.process.pid,
            tag=early.tag,
            started=early.started,
            kill_timeout=kill_timeout,
            stdio=(stdin, stdout, stderr),
        )
    tag = hub_process.new_tag()  # marks every process of this run's tree
    started = time.time() - 1.0  # creation times are rounded: a margin
    request = hub_process.spawn_request(
        cli,
        env=dict(os.environ if env is None else env),
        cwd=os.fspath(cwd) if cwd is not None else os.getcwd(),
        tag=tag,
        kill_timeout=kill_timeout,
        grace=TREE_GRACE,
    )
    ours: list[int] = []
    theirs: list[int] = [0, 1, 2]
    if pipes:
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        ours = [stdin_write, stdout_read, stderr_read]
        theirs = [stdin_read, stdout_write, stderr_write]
    try:
        sock, hub_pid = hub.open_session()
        try:
            sock.setblocking(False)
            await _send(sock, request, theirs)
        except BaseException:
            sock.close()
            raise
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        if pipes:
            for fd in theirs:
                os.close(fd)  # the hub has its own copies now (or never will)
    stdio = None
    if pipes:
        stdio = (
            trio.lowlevel.FdStream(ours[0]),
            trio.lowlevel.FdStream(ours[1]),
            trio.lowlevel.FdStream(ours[2]),
        )
    return HubRun(
        hub, sock, hub_pid, tag=tag, started=started, kill_timeout=kill_timeout, stdio=stdio
    )


async def _send(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    """All of `data` on the non-blocking `sock`, `fds` attached to its first byte."""
    sent = 0
    while sent < len(data):
        try:
            if fds:
                sent += socket.send_fds(sock, [data[sent:]], list(fds))
                fds = ()
            else:
                sent += sock.send(data[sent:])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
    await trio.lowlevel.checkpoint()
