"""One run of the CLI under its helper, seen from trio: pipes in, events out.

`CliProcess.run()` turns everything the process does into state-machine events, in an
order the machine can rely on: every frame the CLI wrote comes before its `CliExited`.
Writes go through a queue served by their own task, because a wedged CLI stops reading
and a write into its full pipe must not stall the supervisor.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

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
    decode_line,
    line_too_long,
    read_head,
    starts_an_object,
)
from ._helper import HubRun, Report, shared_hub, start_run
from ._machine import BadLine, CliExited, CliSpawned, Event, FromCli, SpawnFailed

#: How much of the CLI's stderr is kept to explain a failure.
STDERR_TAIL_BYTES = 4096

#: Takes an over-long line in pieces: its start (only when its head did not say what it
#: is: otherwise the head comes as a partial frame, through the machine), the rest as
#: it comes, then its end. Awaiting it is the backpressure that keeps memory bounded.
RelayPart = Callable[[LongLineStart | LongLinePart | LongLineEnd], Awaitable[None]]


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
    ) -> None:
        self._args = list(args)
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._kill_timeout = kill_timeout
        self._max_line_bytes = max_line_bytes
        self._emit = emit
        self._relay_part = relay_part
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
        self._to_cli_send, self._to_cli_receive = trio.open_memory_channel[bytes | None](math.inf)

    @property
    def cli_pid(self) -> int | None:
        cli = self._helper.cli if self._helper is not None else None
        return cli.pid if cli is not None else None

    # ------------------------------------------------------------ commands

    def write(self, data: bytes) -> None:
        self._to_cli_send.send_nowait(data)

    def close_input(self) -> None:
        self._to_cli_send.send_nowait(None)

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
        async with self._helper.stdout as stdout:
            async for chunk in stdout:
                for item in lines.feed(chunk):
                    await self._on_item(item)
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

    def _on_line(self, line: bytes | FramingError) -> None:
        frame = decode_line(line) if isinstance(line, bytes) else line
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

    async def _write_loop(self) -> None:
        assert self._helper is not None and self._helper.stdin is not None
        stdin = self._helper.stdin
        async with self._to_cli_receive:
            async for data in self._to_cli_receive:
                try:
                    if data is None:
                        await stdin.aclose()
                        return
                    await stdin.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the CLI is gone; the machine knows what was not answered


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
