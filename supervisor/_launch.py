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

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def open_session(control: socket.socket) -> socket.socket:
    """A new session's socket; its other end goes to the hub over `control`."""
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


@dataclass(frozen=True)
class Prestarted:
    """A hub started, and a CLI asked of it, before the host's event loop existed.

    `process` and `control` are the hub (for `_helper.Hub.adopt`); `sock` is the run's
    session socket and `fds` the host's ends of the CLI's stdin, stdout and stderr, for
    `_helper.start_run` to take over, or for `discard` if the run is not wanted.
    """

    args: tuple[str, ...]
    process: subprocess.Popen[bytes]
    control: socket.socket
    sock: socket.socket
    tag: str
    started: float
    fds: tuple[int, int, int]

    def discard(self) -> None:
        """Lets go of the run: the hub sees its session end and kills the CLI."""
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


def prestart(
    args: Sequence[str], *, kill_timeout: float, grace: float, new_session: bool = True
) -> Prestarted | None:
    """Starts a hub and has it run `args` at once, with new pipes; None if it cannot
    (the ordinary start, later, then says why)."""
    tag = new_tag()
    started = time.time() - 1.0  # creation times are rounded: a margin
    pipes = [os.pipe() for _ in range(STDIO)]
    ours = (pipes[0][1], pipes[1][0], pipes[2][0])
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
    try:
        process, control = start(new_session=new_session)
        try:
            sock = open_session(control)
            request = spawn_request(
                args, env=os.environ, cwd=os.getcwd(), tag=tag,
                kill_timeout=kill_timeout, grace=grace,
            )  # fmt: skip
            sent = socket.send_fds(sock, [request], theirs)
            sock.sendall(request[sent:])
        except BaseException:
            control.close()  # the hub sees it and exits
            raise
    except OSError:
        for fd in ours:
            os.close(fd)
        return None
    finally:
        for fd in theirs:
            os.close(fd)  # the hub has its own copies now (or never will)
    return Prestarted(tuple(args), process, control, sock, tag, started, ours)
