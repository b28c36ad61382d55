"""The executable in stream-json mode: the parent's frames in, the CLI's frames out.

It is the library's driver with stdin and stdout as the user: each line from the parent
becomes a `FromUser` event, each `Deliver` action a line to the parent. What it adds to
the library is the process's own edges: signals (SIGINT cancels the running turn,
SIGTERM/SIGHUP stop the session), the exit code, and the optional report file.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from . import _machine as m
from . import _protocol as protocol
from ._config import WrapperConfig
from ._driver import Driver
from ._framing import (
    Frame,
    FramingError,
    LineSplitter,
    LongLineEnd,
    LongLinePart,
    LongLineStart,
    decode_line,
)
from ._inbound import user_event
from ._launch import Prestarted
from ._process import ReadDone, widen_pipe
from ._report import CancelReport

#: Once stopping, how long the frames for stdout may wait for a reader, beyond the kill
#: of the CLI's tree (`kill_timeout`), before they are dropped.
STOP_WRITE_GRACE = 1.0

#: How far the writer to stdout may fall behind before the reading of the CLI's output
#: waits for it (checked after each read, see `_process.ReadDone`): a parent that stops
#: reading makes the CLI block on its own pipe, as it would without us, while our memory
#: stays bounded.
RELAY_BUFFER_BYTES = 1024 * 1024

#: A frame's line shorter than this is copied to end it with its newline (one piece for
#: the write); a longer one is written as is, the newline after it.
_COPY_BYTES = 16 * 1024

#: The most pieces one write takes (the kernel's IOV_MAX).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class Relay:
    def __init__(
        self,
        config: WrapperConfig,
        claude: str,
        claude_args: Sequence[str],
        parent: int,
        early: Prestarted | None = None,
    ) -> None:
        self._config = config
        self._parent = parent
        self.machine = m.SessionMachine(claude_args, config.policy)
        self.driver = Driver(
            self.machine,
            claude,
            cwd=None,
            env=None,
            max_line_bytes=config.max_line_bytes,
            deliver=self._deliver,
            cancel_done=self._record_report,
            deliver_part=self._deliver_part,
            deliver_lines=self._deliver_lines,
            early=early,
        )
        # What is to be written to stdout, in pieces, oldest first: written by one task,
        # `_write_stdout`, as many pieces at once as are ready (one system call).
        self._out: collections.deque[bytes | memoryview] = collections.deque()
        self._out_ready = trio.Event()  # pieces were added
        self._out_closed = trio.Event()  # no more will be
        self._dropped = 0  # frames given after the writer was gone
        self._stopped_by: int | None = None
        #: Once stopping, writes to stdout must end by this time (see `_stop`).
        self._write_deadline = math.inf
        self._write_scope = trio.CancelScope()  # the write under way
        # An over-long CLI line is relayed in pieces (see `_deliver_part`): meanwhile
        # other frames wait, so that none is written into the middle of it.
        self._streaming = False
        self._held: list[bytes] = []
        self._queued_bytes = 0  # given to the writer, not yet written
        self._room = trio.Event()  # the writer came under RELAY_BUFFER_BYTES
        self._idle_writer_fd: int | None = None  # stdout, while the writer waits for work
        self._writer_gone = False

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                writer_done = trio.Event()
                nursery.start_soon(self._write_stdout, writer_done)
                nursery.start_soon(self._watch_signals, signals)
                nursery.start_soon(watch_parent, self._parent, lambda: self._stop(signal.SIGTERM))
                await nursery.start(self.driver.run)
                nursery.start_soon(self._read_stdin)
                await self.driver.finished.wait()
                if self._streaming:  # the CLI's output ended inside the line: end it
                    self._end_stream()
                if self._stopped_by is not None:
                    # The last frames (the stopped turn's result) get their own grace.
                    grace = trio.current_time() + STOP_WRITE_GRACE
                    self._bound_writes(max(self._write_deadline, grace))
                self._out_closed.set()
                self._out_ready.set()
                await writer_done.wait()
                nursery.cancel_scope.cancel()
        if self._stopped_by is not None:
            return 128 + self._stopped_by
        return self.driver.exit_code if self.driver.exit_code is not None else 1

    def _deliver(self, frame: Frame, turn: int | None) -> None:
        if frame.partial and not frame.raw:
            return  # an over-long line already written as it came (see `_deliver_part`)
        if self._streaming:
            self._held.append(frame.raw + b"\n")
        elif frame.partial:  # the head of an over-long line: the rest follows in pieces
            self._streaming = True
            self._send(frame.raw)
        elif len(frame.raw) < _COPY_BYTES:
            self._send(frame.raw + b"\n")
        else:
            self._send(frame.raw, b"\n")

    def _deliver_lines(self, lines: Sequence[bytes], turn: int | None) -> None:
        """A run of the CLI's frames, as it wrote them: one piece (one copy) for the
        whole run, each line ended by its newline. A single long line is not copied."""
        if len(lines) == 1 and len(lines[0]) >= _COPY_BYTES and not self._streaming:
            self._send(lines[0], b"\n")
            return
        data = b"\n".join([*lines, b""])
        if self._streaming:
            self._held.append(data)
        else:
            self._send(data)

    async def _deliver_part(
        self, item: LongLineStart | LongLinePart | LongLineEnd | ReadDone
    ) -> None:
        """An over-long line, in pieces (see `RelayPart`); or the end of a read.

        The start of a line comes here only when the machine could not be told what the
        line is before its end: it is written at once. Pieces of a line the machine did
        not relay (one of our own answers, say) are dropped. After each read, waits while
        the writer is behind, so that the CLI (whose pipe then fills) and not our memory
        absorbs a slow reader.
        """
        if isinstance(item, ReadDone):
            while self._queued_bytes > RELAY_BUFFER_BYTES and not self._writer_gone:
                self._room = trio.Event()
                await self._room.wait()
        elif isinstance(item, LongLineStart):
            self._streaming = True
            self._send(item.head)
        elif not self._streaming:
            return
        elif isinstance(item, LongLineEnd):
            self._end_stream()
        else:
            self._send(item.data)

    def _end_stream(self) -> None:
        """The over-long line is complete: end it, then write what waited behind it."""
        self._streaming = False
        self._send(b"\n")
        held, self._held = self._held, []
        for line in held:
            self._send(line)

    def _send(self, *pieces: bytes) -> None:
        """Queues `pieces` for stdout; when nothing is queued and the writer is idle,
        writes them at once, from the caller's task (the reader's, mostly): a frame then
        costs no wake-up of the writer and no extra pass of the scheduler. What the pipe
        does not take is left to the writer, which waits for room."""
        if self._writer_gone:  # counted, in case the writer was cut short (see there)
            if not self._out_closed.is_set():
                # a piece may hold a run of frames
                self._dropped += sum(piece.count(b"\n") for piece in pieces)
            return
        out = self._out
        idle = not out
        out.extend(pieces)
        self._queued_bytes += sum(len(piece) for piece in pieces)
        fd = self._idle_writer_fd
        if idle and fd is not None:
            try:
                while out:
                    self._write_some(fd)
            except OSError:  # full (the writer waits for room) or broken (it will say so)
                pass
            if not out:
                return
        self._out_ready.set()

    def _record_report(self, report: CancelReport | None) -> None:
        path = self._config.report_file
        if report is None or path is None:
            return
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            **report.to_dict(),
        }
        try:
            with path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
        except OSError as exc:
            message = (
                f"cannot append to the report file {path}: {exc}; "
                "check --report-file / CLAUDE_SUPERVISOR_REPORT_FILE"
            )
            self._deliver(protocol.supervisor_error("report_file_failed", message), None)

    async def _read_stdin(self) -> None:
        splitter = LineSplitter(self._config.max_line_bytes)
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            async for chunk in stdin:
                for line in splitter.feed(chunk):
                    self._on_line(line)
        for line in splitter.close():
            self._on_line(line)
        self.driver.dispatch(m.EndOfInput(drain=True))

    def _on_line(self, line: bytes | FramingError) -> None:
        item = decode_line(line) if isinstance(line, bytes) else line
        if isinstance(item, Frame):
            self.driver.dispatch(user_event(item))
        else:
            self.driver.dispatch(m.BadLine("user", item))

    async def _write_stdout(self, done: trio.Event) -> None:
        try:
            async with trio.lowlevel.FdStream(os.dup(sys.stdout.fileno())) as stdout:
                widen_pipe(stdout.fileno())  # see there
                while self._out or not self._out_closed.is_set():
                    if not self._out:
                        self._out_ready = trio.Event()
                        self._idle_writer_fd = stdout.fileno()
                        try:
                            await self._out_ready.wait()
                        finally:
                            self._idle_writer_fd = None
                        continue
                    # Each write is bounded once stopping; waiting for a frame is not.
                    self._write_scope = trio.CancelScope(deadline=self._write_deadline)
                    with self._write_scope:
                        await self._write_out(stdout.fileno())
                    if self._write_scope.cancelled_caught:
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Nobody reads our output any more: the parent is gone. Stop the session.
            self.driver.dispatch(m.EndOfInput(drain=False))
        finally:
            self._writer_gone = True
            self._room.set()
            self._dropped += sum(bytes(piece).count(b"\n") for piece in self._out)
            self._out.clear()
            if self._write_scope.cancelled_caught:
                with trio.CancelScope(shield=True):
                    await self._out_closed.wait()  # count what still comes
                    await _tell_stderr(
                        f"claude-supervisor: stopping; {max(self._dropped, 1)} frame(s) for "
                        "stdout were dropped because nobody read them in time (the reader "
                        "stopped reading); the last line written may be incomplete\n"
                    )
            done.set()

    async def _write_out(self, fd: int) -> None:
        """Writes the pieces queued, as many in each system call as it takes."""
        while self._out:
            try:
                self._write_some(fd)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError(f"cannot write to stdout: {exc}") from exc

    def _write_some(self, fd: int) -> None:
        """One system call: as many of the queued pieces as it takes (BlockingIOError
        when the pipe is full)."""
        out = self._out
        pieces = [out[0]] if len(out) == 1 else list(itertools.islice(out, _IOV_MAX))
        written = os.writev(fd, pieces)
        self._queued_bytes -= written
        while written:
            size = len(out[0])
            if size <= written:
                out.popleft()
                written -= size
            else:
                out[0] = memoryview(out[0])[written:]
                written = 0
        if self._queued_bytes <= RELAY_BUFFER_BYTES:
            self._room.set()

    def _bound_writes(self, deadline: float) -> None:
        self._write_deadline = deadline
        self._write_scope.deadline = deadline

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGINT:
                self.driver.dispatch(m.InterruptSignal())
            else:
                self._stop(signum)

    def _stop(self, signum: int) -> None:
        """SIGTERM, SIGHUP, or the parent's death: stop now, and exit within a deadline.

        The parent means "stop now" (an SDK sends SIGTERM after its own graceful wait), so
        the CLI's tree is killed at once (`Terminate`). And whatever the reader does, the
        exit must come: a reader that stopped reading would hold the writes to stdout, and
        so the wrapper, forever. The writer gets until the tree is surely dead
        (`kill_timeout`) plus a grace, then drops what is left.
        """
        if self._stopped_by is None:
            self._stopped_by = signum
            deadline = trio.current_time() + self._config.policy.kill_timeout + STOP_WRITE_GRACE
            self._bound_writes(deadline)
            self.driver.dispatch(m.Terminate())


async def _tell_stderr(message: str) -> None:
    """A note on stderr, bounded in time: a parent may not read our stderr either."""

    def write() -> None:
        with contextlib.suppress(OSError):
            data = message.encode()
            while data:
                data = data[os.write(2, data) :]

    with trio.move_on_after(STOP_WRITE_GRACE):
        await trio.to_thread.run_sync(write, abandon_on_cancel=True)


async def watch_parent(parent: int, on_gone: Callable[[], None], interval: float = 0.5) -> None:
    """Calls `on_gone` once `parent`, the process that started us, has died.

    The parent's death shows as a new parent pid (we are re-parented). Linux's
    parent-death signal cannot be used: it follows the thread that started us, and a
    parent may well start us from a short-lived thread. `parent` is read as the
    executable starts, so a parent that dies while we import is noticed too.
    """
    while os.getppid() == parent:
        await trio.sleep(interval)
    on_gone()
