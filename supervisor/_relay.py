"""The executable in stream-json mode: the parent's frames in, the CLI's frames out.

It is the library's driver with stdin and stdout as the user: each line from the parent
becomes a `FromUser` event, each `Deliver` action a line to the parent. What it adds to
the library is the process's own edges: signals (SIGINT cancels the running turn,
SIGTERM/SIGHUP stop the session), the exit code, and the optional report file.
"""

from __future__ import annotations

import contextlib
import datetime
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
from ._framing import Frame, FramingError, LineSplitter, decode_line
from ._report import CancelReport


class Relay:
    def __init__(
        self, config: WrapperConfig, claude: str, claude_args: Sequence[str], parent: int
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
        )
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](math.inf)
        self._stopped_by: int | None = None

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
                self._out_send.close()
                await writer_done.wait()
                nursery.cancel_scope.cancel()
        if self._stopped_by is not None:
            return 128 + self._stopped_by
        return self.driver.exit_code if self.driver.exit_code is not None else 1

    def _deliver(self, frame: Frame, turn: int | None) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self._out_send.send_nowait(frame.raw + b"\n")

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
            self.driver.dispatch(m.FromUser(item))
        else:
            self.driver.dispatch(m.BadLine("user", item))

    async def _write_stdout(self, done: trio.Event) -> None:
        try:
            async with trio.lowlevel.FdStream(os.dup(sys.stdout.fileno())) as stdout:
                async for data in self._out_receive:
                    await stdout.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Nobody reads our output any more: the parent is gone. Stop the session.
            self.driver.dispatch(m.EndOfInput(drain=False))
            async for _ in self._out_receive:
                pass
        finally:
            done.set()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGINT:
                # The SIGINT contract: cancel the running turn; while idle, nothing.
                if self.machine.running_turn is not None:
                    self.driver.dispatch(m.Cancel(trigger="sigint"))
            else:
                self._stop(signum)

    def _stop(self, signum: int) -> None:
        """SIGTERM, SIGHUP, or the parent's death: stop the CLI gracefully, then exit."""
        if self._stopped_by is None:
            self._stopped_by = signum
            self.driver.dispatch(m.EndOfInput(drain=False))


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
