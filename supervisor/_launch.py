"""The host's side of the hub's wire: start a hub, open a session, ask for a CLI.

Standard library only (no psutil, no trio, no attrs), for one reason: the executable
calls `prestart` before it imports anything heavy, so that the CLI boots while the
wrapper imports trio. The CLI takes a quarter of a second to answer its first request;
trio and the relay take about as long to import. Done one after the other, they add up;
done side by side, the wrapper's start-up costs little more than its interpreter's.

What the hub is, and its wire (a control socket, one session socket per run, a spawn
request with the CLI's three pipes attached), is in `_hub`.
"""

from __future__ import annotations

import os
import select
import sys
import time

# What only some callers need (`start`, a spawn request, prctl in the hub, a timeout)
# is imported where it is used: `prestart` runs before the CLI starts, and every
# millisecond spent importing here is one the CLI starts later. Even `typing` (3 ms),
# `collections` (2 ms, with `contextlib`) or `enum` (4 ms, with `signal`, which only
# wraps `_signal`): type checkers know these names without them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import socket
    import subprocess
    from collections.abc import Mapping, Sequence
    from typing import Protocol

    class HubProcess(Protocol):
        """What a host needs of its hub process: a `subprocess.Popen`, or a `Forked`."""

        @property
        def pid(self) -> int: ...

        def poll(self) -> int | None: ...

        def wait(self, timeout: float | None = None) -> int: ...

else:
    import _signal as signal


#: Set in each CLI's environment to the hub's pid (the executable's recursion guard).
HUB_PID_VARIABLE = "CLAUDE_SUPERVISOR_HELPER_PID"

#: Set, in the CLI's environment, to a token unique to one run: every process of the
#: run's tree inherits it, so that the hub can tell the sessions' orphans apart and the
#: tree can still be found if the hub is SIGKILLed (see `_tree`).
TAG_VARIABLE = "CLAUDE_SUPERVISOR_TREE"

#: The request that kills a session's tree (its CLI first with SIGTERM, see `_tree`).
KILL_REQUEST = b'{"op": "kill"}\n'

#: The descriptors a spawn request carries: the CLI's stdin, stdout and stderr.
STDIO = 3

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from supervisor._hub import main; "
    "sys.exit(main(sys.argv[2:]))"
)


def command(control_fd: int) -> list[str]:
    """The command line of a hub that talks over the socket `control_fd`."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # -I: no user site, no PYTHON* variables, no script directory on sys.path.
    return [sys.executable, "-I", "-c", _BOOT, package_parent, str(control_fd)]


def start(
    *, new_session: bool = True, process_group: int | None = None
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Starts a hub; returns it and the host's end of its control socket.

    With `new_session` the hub (and so every CLI) runs in a session of its own, so a
    terminal's Ctrl-C reaches none; else in `process_group` (see `subprocess.Popen`).
    """
    import socket
    import subprocess

    control, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            command(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
            start_new_session=new_session,
            process_group=None if new_session else process_group,
        )
    except BaseException:
        control.close()
        raise
    finally:
        theirs.close()
    return process, control


class Forked:
    """A hub forked from its host without exec (`fork`), seen as a `HubProcess`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0  # reaped by someone else: gone all the same
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        if self.poll() is None:
            try:
                ready = os.pidfd_open(self.pid)
            except OSError:
                ready = None  # already reaped (poll saw it), or no pidfd: poll below
            if ready is not None:
                try:
                    if not select.select([ready], [], [], timeout)[0]:
                        raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
                finally:
                    os.close(ready)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
        return code


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 4096


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    """Calls prctl(2) on Linux; False elsewhere or on failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

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


def fork_exec(args: list[str], env: dict[str, str], cwd: str, stdio: Sequence[int]) -> int:
    """Forks and execs the CLI with `stdio` as its 0, 1, 2; raises OSError if it cannot.

    Between fork and exec: default handling of the signals the hub catches or Python
    ignores, a parent-death signal of SIGKILL (sound: the hub forks from its only
    thread), and no other descriptor.
    """
    hub = os.getpid()
    error_read, error_write = os.pipe()  # close-on-exec: end-of-file means exec worked
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 127
        try:
            signal.set_wakeup_fd(-1)
            for signum in _RESET_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != hub:
                code = 1
                raise OSError(0, "the hub died")
            os.chdir(cwd)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.closerange(STDIO, error_write)
            os.closerange(error_write + 1, _max_fd())
            os.execvpe(args[0], args, env)
        except OSError as exc:
            import contextlib

            with contextlib.suppress(OSError):
                os.write(error_write, f"{exc.errno or 0}:{exc.strerror or exc}".encode())
        finally:
            os._exit(code)
    os.close(error_write)
    try:
        chunks = []
        while chunk := os.read(error_read, 4096):
            chunks.append(chunk)
    finally:
        os.close(error_read)
    if chunks:
        number, _, message = b"".join(chunks).decode(errors="replace").partition(":")
        import contextlib

        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise OSError(int(number or 0), message)
    return pid


_RESET_SIGNALS = [
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGPIPE,
    *([signal.SIGXFSZ] if hasattr(signal, "SIGXFSZ") else []),
]


def open_session(control: socket.socket) -> socket.socket:
    """A new session's socket; its other end goes to the hub over `control`."""
    import socket

    mine, theirs = socket.socketpair()
    try:
        socket.send_fds(control, [b"s"], [theirs.fileno()])
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return mine


def new_tag() -> str:
    """A token unique to one run (see `TAG_VARIABLE`)."""
    return os.urandom(16).hex()


def spawn_request(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    tag: str,
    kill_timeout: float,
    grace: float,
) -> bytes:
    """What asks the hub to run `args`; send it with the CLI's stdin, stdout, stderr."""
    import json

    request = {
        "op": "spawn",
        "args": list(args),
        "env": dict(env),
        "cwd": cwd,
        "tag": tag,
        "kill_timeout": kill_timeout,
        "grace": grace,
    }
    return json.dumps(request).encode() + b"\n"


class Prestarted:
    """A hub started, and a CLI asked of it, before the host's event loop existed.

    `process` and `control` are the hub (for `_helper.Hub.adopt`); `sock` is the run's
    session socket and `fds` the host's ends of the CLI's stdin, stdout and stderr, for
    `_helper.start_run` to take over, or for `discard` if the run is not wanted. The two
    sockets are held as descriptors until asked for (`socket` is imported then, after
    the CLI started). A plain class: `dataclasses` costs the early start milliseconds.
    """

    def __init__(
        self,
        args: tuple[str, ...],
        kill_timeout: float,
        grace: float,
        process: HubProcess,
        control_fd: int,
        sock_fd: int,
        tag: str,
        started: float,
        fds: tuple[int, int, int],
    ) -> None:
        self.args, self.kill_timeout, self.grace = args, kill_timeout, grace
        self.process = process
        self.tag, self.started, self.fds = tag, started, fds
        self._ends: dict[str, int | socket.socket] = {"control": control_fd, "sock": sock_fd}
        #: Set once a relay has taken the run over: from then on it is the relay's.
        self.taken = False
        self._discarded = False

    def _end(self, name: str) -> socket.socket:
        end = self._ends[name]
        if isinstance(end, int):
            import socket

            if end < 0:
                raise ValueError(f"the early run's {name} socket was let go")
            end = self._ends[name] = socket.socket(fileno=end)
        return end

    @property
    def control(self) -> socket.socket:
        """The host's end of the hub's control socket."""
        return self._end("control")

    @property
    def sock(self) -> socket.socket:
        """The host's end of the run's session socket."""
        return self._end("sock")

    def _close(self, name: str) -> None:
        end = self._ends[name]
        if not isinstance(end, int):
            end.close()
        elif end >= 0:
            os.close(end)
            self._ends[name] = -1

    def discard(self) -> None:
        """Lets go of the run: the hub sees its session end and kills the CLI. Once:
        closing the descriptors again could close others that took their numbers."""
        if self._discarded:
            return
        self._discarded = True
        self._close("sock")
        for fd in self.fds:
            os.close(fd)

    def abandon(self) -> None:
        """Lets go of the run and of its hub, and waits (at most the kill's own bound,
        `kill_timeout` + `grace`) until the hub has killed the CLI and exited: an
        executable that ends here leaves nothing."""
        if self._discarded:
            return
        self.discard()
        self._close("control")
        import contextlib
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(self.kill_timeout + self.grace)


def prestart(args: Sequence[str], *, kill_timeout: float, grace: float) -> Prestarted | None:
    """Starts a hub that runs `args` at once, with new pipes; None if it cannot (the
    ordinary start, later, then says why).

    The hub is a fork of this process, without exec, and it forks the CLI before it
    imports anything or enters its loop (`_hub.run_prestarted`): the CLI starts a few
    milliseconds after the call, where `start` and a spawn request cost tens (a new
    interpreter, psutil). Only for a process with one thread and nothing to tear down
    (the executable, before trio): the hub runs on a copy of it and leaves by `os._exit`.
    """
    tag = new_tag()
    started = time.time() - 1.0  # creation times are rounded: a margin
    pipes = [os.pipe() for _ in range(STDIO)]
    ours = (pipes[0][1], pipes[1][0], pipes[2][0])
    theirs = (pipes[0][0], pipes[1][1], pipes[2][1])
    control, hub_control = _socket_pair()
    sock, hub_sock = _socket_pair()
    try:
        pid = os.fork()
    except OSError:
        for fd in (*ours, *theirs, control, hub_control, sock, hub_sock):
            os.close(fd)
        return None
    if pid == 0:  # pragma: no cover (the hub)
        code = 1
        try:
            for fd in (*ours, control, sock):
                os.close(fd)
            code = _prestarted_hub(args, theirs, hub_control, hub_sock, tag, kill_timeout, grace)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in (*theirs, hub_control, hub_sock):
        os.close(fd)
    return Prestarted(
        tuple(args), kill_timeout, grace, Forked(pid), control, sock, tag, started, ours
    )


def _socket_pair() -> tuple[int, int]:
    """A connected pair of Unix stream sockets, as descriptors (close-on-exec).

    Made with `_socket`, the module `socket` is built on: importing `socket` itself (its
    enums, `selectors`) takes 4 ms, which `prestart` would spend before the CLI starts.
    The socket objects are made from the descriptors later (`Prestarted.control`).
    """
    import _socket

    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    return a.detach(), b.detach()


def _prestarted_hub(
    args: Sequence[str],
    stdio: Sequence[int],
    control_fd: int,
    sock_fd: int,
    tag: str,
    kill_timeout: float,
    grace: float,
) -> int:  # pragma: no cover (runs in the hub)
    """The hub of `prestart`: the CLI first, then the usual loop with it as a session."""
    os.setsid()  # as `start` does: a terminal's Ctrl-C reaches neither hub nor CLI
    become_subreaper()
    env = {**os.environ, HUB_PID_VARIABLE: str(os.getpid()), TAG_VARIABLE: tag}
    cli: int | OSError
    try:
        cli = fork_exec(list(args), env, os.getcwd(), stdio)
    except OSError as exc:
        cli = exc
    for fd in stdio:
        os.close(fd)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    low, high = sorted((control_fd, sock_fd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, _max_fd())
    if isinstance(cli, int):
        _report_spawned(sock_fd, cli)
        _idle_while_booting(cli, (control_fd, sock_fd))
    import gc
    import socket

    from . import _hub

    # The executable holds the collector off while it imports (`_cli.main`); the hub,
    # a copy of it, has imported what its loop needs, which runs for as long as the
    # session: with the collector, and without what it will never free to scan.
    gc.freeze()
    gc.enable()
    control, sock = socket.socket(fileno=control_fd), socket.socket(fileno=sock_fd)

    return _hub.run_prestarted(
        control, sock, args=args, cli=cli, tag=tag, kill_timeout=kill_timeout, grace=grace
    )


#: How long a prestarted hub waits for its CLI to boot before it imports its loop.
#: The loop's imports (psutil, json, selectors: 20-30 ms of CPU) would otherwise run
#: while the CLI boots, on a core it would use; the hub is idle until asked anyway.
BOOT_IDLE = 0.5


def _idle_while_booting(cli: int, sockets: Sequence[int]) -> None:  # pragma: no cover
    """Waits `BOOT_IDLE`, or less if the hub is needed sooner: a request or the end of
    its host (either socket readable), or the CLI's exit (its pidfd readable). A tree
    that forks meanwhile is safe: the hub is its subreaper already, and its orphans
    wait as zombies until the loop reaps them."""
    try:
        exited = os.pidfd_open(cli)
    except OSError:  # no pidfd (Linux < 5.3): the loop's SIGCHLD is the only way to know
        exited = -1
    try:
        select.select([*sockets, *([exited] if exited >= 0 else [])], [], [], BOOT_IDLE)
    finally:
        if exited >= 0:
            os.close(exited)


def _report_spawned(sock_fd: int, cli: int) -> None:  # pragma: no cover (in the hub)
    """Sends the `spawned` report of `_hub` at once, without json or psutil (see
    `BOOT_IDLE`): the host learns the CLI's pid as soon as it exists."""
    created = creation_time(cli)
    stamp = "null" if created is None else repr(created)  # as json.dumps writes them
    report = f'{{"event": "spawned", "pid": {cli}, "create_time": {stamp}}}\n'
    import contextlib

    with contextlib.suppress(OSError):  # the host is gone: the loop, next, sees it
        os.write(sock_fd, report.encode())


def creation_time(pid: int) -> float | None:
    """psutil's `Process.create_time` of `pid`, read without psutil (see `BOOT_IDLE`);
    None when it cannot be read (and the host then checks nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rpartition(b")")[2].split()[19])
        return started_at(ticks)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_boot: list[float] = []  # the boot time, once read


def started_at(ticks: int) -> float:
    """When a process that started `ticks` clock ticks after boot started, in seconds
    since the epoch: the start field of `/proc/PID/stat` plus the boot time, as psutil
    computes it (`_tree.process_of` compares the two)."""
    if not _boot:
        with open("/proc/stat", "rb") as f:
            _boot.append(next(float(line.split()[1]) for line in f if line.startswith(b"btime")))
    return _boot[0] + ticks / os.sysconf("SC_CLK_TCK")
