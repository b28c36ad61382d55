"""One run of the CLI under its helper, seen from trio: pipes in, events out.

`CliProcess.run()` turns everything the process does into state-machine events, in an
order the machine can rely on: every frame the CLI wrote comes before its `CliExited`.
Writes go through a queue served by their own task, because a wedged CLI stops reading
and a write into its full pipe must not stall the supervisor.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import cast

import attrs
import trio

from ._framing import (
    Frame,
    FramingError,
    LineStreamer,
    LongLineEnd,
    LongLinePart,
    LongLineStart,
    MemberScanner,
    StreamItem,
    cheap_types,
    decode_line,
    line_too_long,
    read_head,
    starts_an_object,
)
from ._helper import HubRun, Report, shared_hub, start_run
from ._launch import Prestarted
from ._machine import (
    BadLine,
    CliExited,
    CliSpawned,
    Event,
    FromCli,
    FromCliLines,
    SpawnFailed,
)

#: How much of the CLI's stderr is kept to explain a failure.
STDERR_TAIL_BYTES = 4096

#: The most read from the CLI's output at once.
READ_BYTES = 1024 * 1024

#: The size asked for the pipe of the CLI's output when it is relayed (the executable):
#: a 1 MB frame then takes one read and one wake-up instead of sixteen (the default
#: pipe holds 64 KiB). Only there: a library with hundreds of sessions would spend the
#: user's pipe quota (fs.pipe-user-pages-soft), past which new pipes get one page.
RELAY_PIPE_BYTES = 1024 * 1024


def widen_pipe(fd: int) -> None:
    """Asks for `RELAY_PIPE_BYTES` of pipe (the executable's, both ways of the relay): a
    1 MB frame is then one read or one write, where a default pipe (64 KiB) takes
    sixteen, each a wait for the other side. Left as it is when `fd` is not a pipe, or
    when the system's limit (fs.pipe-max-size) or the user's quota says no."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, RELAY_PIPE_BYTES)


@attrs.frozen
class ReadDone:
    """Every frame of one read of the CLI's output has been handed on.

    Awaiting it is where the relay makes the reading wait while its writer is behind: a
    reader that stops reading stops us reading the CLI, whose pipe then fills (as it
    would without us) instead of our memory.
    """


#: Takes an over-long line in pieces: its start (only when its head did not say what it
#: is: otherwise the head comes as a partial frame, through the machine), the rest as
#: it comes, then its end; and `ReadDone` after each read. Awaiting it is the
#: backpressure that keeps memory bounded.
RelayPart = Callable[[LongLineStart | LongLinePart | LongLineEnd | ReadDone], Awaitable[None]]

#: After each read (see `ReadDone`).
_READ_DONE = ReadDone()

#: Once the CLI's tree is gone, how long the end of its stderr is waited for.
STDERR_DRAIN_TIMEOUT = 2.0


class CliProcess:
    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        kill_timeout: float,
        max_line_bytes: int,
        emit: Callable[[Event], None],
        relay_part: RelayPart | None = None,
        read_done: Callable[[], Awaitable[None]] | None = None,
        early: Prestarted | None = None,
    ) -> None:
        self._args = list(args)
        self._early = early  # this run, started before trio ran (`_launch.prestart`)
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._kill_timeout = kill_timeout
        self._max_line_bytes = max_line_bytes
        self._emit = emit
        self._relay_part = relay_part
        self._read_done = read_done
        #: The start of an over-long line being read that is not a frame (dropped).
        self._unreadable: bytes | None = None
        #: Reads an over-long line whose head did not say what it is, as it passes.
        self._scanner: MemberScanner | None = None
        self._stderr_fd = _stderr_fd()
        self._helper: HubRun | None = None
        # Taken now, not when the run starts: a respawn's new run holds the hub before
        # the old run lets go of it, so the hub is not ended and restarted in between.
        self._lease = shared_hub().lease()
        self._stderr_tail = bytearray()
        self._stderr_done = trio.Event()  # the CLI's stderr ended, all of it passed on
        self._to_cli_send, self._to_cli_receive = trio.open_memory_channel[bytes | None](math.inf)
        self._idle_stdin_fd: int | None = None  # the CLI's stdin, while the writer waits

    @property
    def cli_pid(self) -> int | None:
        cli = self._helper.cli if self._helper is not None else None
        return cli.pid if cli is not None else None

    # ------------------------------------------------------------ commands

    def write(self, data: bytes) -> None:
        """Queues `data` for the CLI; written at once if the pipe takes it and nothing
        is queued before it (a user frame then costs no trip through the writer task)."""
        fd = self._idle_stdin_fd
        if fd is not None:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                pass  # full: the writer waits for room
            except OSError:
                return  # the CLI is gone; the machine knows what was not answered
            if not data:
                return
        self._queue_for_cli(data)

    def close_input(self) -> None:
        self._queue_for_cli(None)

    def _queue_for_cli(self, data: bytes | None) -> None:
        self._idle_stdin_fd = None  # from now on, until the writer has caught up
        self._to_cli_send.send_nowait(data)

    def send_signal(self, signum: int) -> None:
        """A signal to the CLI itself (not its group)."""
        if self._helper is not None:
            self._helper.send_to_cli(signum)

    def is_stopped(self) -> bool:
        """Whether the CLI is stopped (SIGSTOP, job control, a debugger): it acts on nothing."""
        return self._helper is not None and self._helper.cli_stopped()

    def kill_tree(self) -> None:
        """Asks the helper to kill the whole tree; it then reports the exit."""
        if self._helper is not None:
            self._helper.kill_tree()

    def mark_turn_start(self) -> None:
        if self._helper is not None:
            self._helper.mark_turn_start()

    async def kill_turn_processes(self) -> int:
        """Kills what the running turn started, leaving the CLI (and what predates it)."""
        if self._helper is None:
            return 0
        return await self._helper.kill_turn_processes()

    # ---------------------------------------------------------------- life

    async def run(self) -> None:
        """Runs the CLI through the hub, relays until its tree is gone, then emits CliExited."""
        try:
            await self._run()
        finally:
            await self._lease.aclose()

    async def _run(self) -> None:
        try:
            self._helper = await start_run(
                self._args,
                hub=self._lease.hub,
                kill_timeout=self._kill_timeout,
                cwd=self._cwd,
                env=self._env,
                early=self._early,
            )
        except OSError as exc:
            self._emit(SpawnFailed(f"cannot start the supervisor's helper: {exc}"))
            return
        helper = self._helper
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_stderr)
                async with trio.open_nursery() as readers:
                    readers.start_soon(self._read_status)
                    readers.start_soon(self._read_stdout)
                await helper.wait()
                # What the CLI said on stderr before it exited (why it failed, often)
                # is passed on: its tree is dead, so the end of the pipe comes at once,
                # unless a process nobody could kill holds it open.
                with trio.move_on_after(STDERR_DRAIN_TIMEOUT):
                    await self._stderr_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await helper.close()
        report = helper.final or {}
        if report.get("event") == "spawn_failed":
            self._emit(SpawnFailed(str(report.get("error"))))
            return
        returncode = report.get("returncode")
        killed = report.get("killed", helper.orphans_killed or 0)
        self._emit(
            CliExited(
                returncode=returncode if isinstance(returncode, int) else None,
                processes_killed=killed if isinstance(killed, int) else 0,
                stderr_tail=self._stderr_tail.decode("utf-8", errors="replace"),
            )
        )

    async def _read_status(self) -> None:
        assert self._helper is not None
        # Before the stdout reader can end, as a tool may hold the CLI's stdout open: a
        # helper that died leaves the tree to be killed here (`HelperRun.read_status`).
        await self._helper.read_status(self._on_status)
        if self._helper.orphans_killed is not None:
            self._stderr_tail += (
                f"\nclaude-supervisor: the supervisor's helper process died before the CLI "
                f"({self._helper.orphans_killed} processes of the CLI's tree killed)\n"
            ).encode()

    def _on_status(self, status: Report) -> None:
        if status.get("event") == "spawned":
            self._emit(CliSpawned())

    async def _read_stdout(self) -> None:
        assert self._helper is not None and self._helper.stdout is not None
        lines = LineStreamer(self._max_line_bytes)
        relay_part = self._relay_part
        async with self._helper.stdout as stdout:
            fd = stdout.fileno()
            if relay_part is not None:
                widen_pipe(fd)
            while chunk := await _read(fd):
                run: list[bytes] = []  # the whole lines of the read, as they come
                for item in lines.feed(chunk):
                    if type(item) is bytes:
                        run.append(item)  # the common case, without a coroutine
                    else:
                        if run:
                            self._on_lines(run)
                            run = []
                        await self._on_item(item)
                if run:
                    self._on_lines(run)
                if relay_part is not None:
                    await relay_part(_READ_DONE)
                elif self._read_done is not None:
                    await self._read_done()
        for item in lines.close():
            await self._on_item(item)

    async def _on_item(self, item: StreamItem) -> None:
        """A line, or a piece of one over the cap: that one is relayed as it comes.

        When its head says what it is (`read_head`; the CLI writes most frames' `type`
        first), the machine routes it at once like any frame and the rest goes to
        `relay_part`. When it does not (the real CLI writes a `result`'s `type` after
        the answer), the line is relayed as it comes and read as it passes
        (`MemberScanner`); at its end the machine gets what it was, so a long `result`
        still ends its turn. A line that does not even start a JSON object is dropped.
        """
        if isinstance(item, bytes):
            self._on_line(item)
        elif isinstance(item, LongLineStart):
            data = read_head(item.head)
            if data is not None:
                data["supervisor"] = {"truncated": True}
                self._emit(FromCli(Frame(raw=item.head, data=data, partial=True)))
            elif starts_an_object(item.head):
                self._scanner = MemberScanner()
                self._scanner.feed(item.head)
                if self._relay_part is not None:
                    await self._relay_part(item)
            else:
                self._unreadable = item.head[:200]
        elif isinstance(item, LongLinePart):
            if self._scanner is not None:
                self._scanner.feed(item.data)
            if self._relay_part is not None:
                await self._relay_part(item)
        elif isinstance(item, LongLineEnd):
            if self._relay_part is not None:
                await self._relay_part(item)
            if self._scanner is not None:
                data = {**self._scanner.members, "supervisor": {"truncated": True}}
                self._scanner = None
                self._emit(FromCli(Frame(raw=b"", data=data, partial=True)))
            elif self._unreadable is not None:
                why = "it does not start a JSON object, so it was dropped"
                error = line_too_long(item.size, self._max_line_bytes, why)
                preview = self._unreadable.decode("utf-8", errors="replace")
                self._unreadable = None
                self._emit(BadLine("cli", FramingError(error.code, error.message, preview)))

    def _on_lines(self, lines: list[bytes]) -> None:
        """Whole lines, in order: those whose head says their type go to the machine
        together, unparsed (`FromCliLines`); any other is parsed on its own (`_on_line`)."""
        kinds = cheap_types(lines)
        if None not in kinds:
            self._emit(FromCliLines(lines, cast(list[str], kinds)))
            return
        start = 0
        for index, kind in enumerate(kinds):
            if kind is None:
                if start < index:
                    typed = cast(list[str], kinds[start:index])
                    self._emit(FromCliLines(lines[start:index], typed))
                self._on_line(lines[index])
                start = index + 1
        if start < len(lines):
            self._emit(FromCliLines(lines[start:], cast(list[str], kinds[start:])))

    def _on_line(self, line: bytes | FramingError) -> None:
        # Lazy: a frame that is only relayed is never parsed (see `decode_line`).
        frame = decode_line(line, lazy=True) if isinstance(line, bytes) else line
        if isinstance(frame, FramingError):
            self._emit(BadLine("cli", frame))
        else:
            self._emit(FromCli(frame))

    async def _read_stderr(self) -> None:
        assert self._helper is not None and self._helper.stderr is not None
        async with self._helper.stderr as stderr:
            async for chunk in stderr:
                self._stderr_tail += chunk
                del self._stderr_tail[:-STDERR_TAIL_BYTES]
                if self._stderr_fd >= 0:
                    # In a thread: a parent that never reads our stderr must stall only
                    # this copy (and then the CLI, as it would without us), not the loop.
                    await trio.to_thread.run_sync(
                        _write_all, self._stderr_fd, bytes(chunk), abandon_on_cancel=True
                    )
        self._stderr_done.set()

    async def _write_loop(self) -> None:
        assert self._helper is not None and self._helper.stdin is not None
        stdin = self._helper.stdin
        async with self._to_cli_receive:
            while True:
                # Idle (nothing queued, no write under way): `write` may write itself.
                if not self._to_cli_receive.statistics().current_buffer_used:
                    self._idle_stdin_fd = stdin.fileno()
                try:
                    data = await self._to_cli_receive.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self._idle_stdin_fd = None
                try:
                    if data is None:
                        await stdin.aclose()
                        return
                    await stdin.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the CLI is gone; the machine knows what was not answered


async def _read(fd: int) -> bytes:
    """The next read of a pipe (b"" at its end).

    What is there is read at once: a frame that arrived while the reader was busy costs
    no trip through the scheduler (trio's `receive_some` yields before every read).
    Then it yields, so that a flood never starves the other tasks (the parent's input,
    signals, the writer).
    """
    try:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            while True:
                await trio.lowlevel.wait_readable(fd)  # yields
                with contextlib.suppress(BlockingIOError):
                    return os.read(fd, READ_BYTES)
    except OSError as exc:
        raise trio.BrokenResourceError(f"cannot read the CLI's output: {exc}") from exc
    await trio.lowlevel.checkpoint()
    return data


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]


def _stderr_fd() -> int:
    """Our stderr's descriptor, or -1 when the host has none (an IDE, a notebook)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return -1
