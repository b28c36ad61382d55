"""The thin trio layer that carries out the state machine's actions.

Dispatch is synchronous: whoever has an event (a pipe reader, a library call, a signal
handler) calls `dispatch()`, which feeds the machine and performs the actions at once.
No action blocks: writes are queued to the CLI's writer task, kills run in their own
tasks and come back as events. So the machine sees events in the order they happened,
and a library call such as `send()` knows its turn's id when it returns.

The CLI's frames come a read at a time (`FromCliLines`), and the frames the machine
only relays come back as runs (`DeliverLines`): a flood of small frames costs a
machine call per read, not per frame. A runner that writes bytes (the executable)
takes the runs whole (`deliver_lines`); the library gets each frame on its own, as a
lazy `Frame`.

A CLI line longer than `max_line_bytes` reaches `deliver` as a partial frame (what
could be read of it); its bytes go to `deliver_part`, piece by piece, without the
machine (see `_process.RelayPart`). Without `deliver_part` (the library), they are
dropped.

The only timer is one task whose cancel scope's deadline is never later than the
machine's `deadline`. It is moved only when the machine's deadline comes sooner; a
deadline that moved later (the stall watchdog's, with every frame the CLI writes) just
wakes the timer early once, which then waits for the new one. So the path of each read
costs a comparison, not a timer reset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from . import _machine as m
from ._framing import Frame
from ._helper import shared_hub
from ._launch import Prestarted
from ._process import CliProcess, RelayPart
from ._report import CancelReport

#: The events that settle whether the first CLI started.
_SPAWN_OUTCOMES = (m.CliSpawned, m.SpawnFailed)

#: The events that come most often: told apart from those at once.
_FROM_CLI = (m.FromCliLines, m.FromCli)


class Driver:
    """Runs one session: the machine, its CLI processes and its timer."""

    def __init__(
        self,
        machine: m.SessionMachine,
        claude: str,
        *,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        max_line_bytes: int,
        deliver: Callable[[Frame, int | None], None],
        cancel_done: Callable[[CancelReport | None], None] = lambda report: None,
        deliver_part: RelayPart | None = None,
        deliver_lines: Callable[[Sequence[bytes], int | None], None] | None = None,
        read_done: Callable[[], Awaitable[None]] | None = None,
        performed: Callable[[], None] = lambda: None,
        turn_queued: Callable[[int], None] = lambda turn: None,
        early: Prestarted | None = None,
    ) -> None:
        self.machine = machine
        self._claude = claude
        self._cwd = cwd
        self._env = env
        self._max_line_bytes = max_line_bytes
        self._deliver = deliver
        self._cancel_done = cancel_done
        self._deliver_part = deliver_part
        self._deliver_lines = deliver_lines
        self._read_done = read_done
        self._performed = performed
        self._turn_queued = turn_queued
        self._process: CliProcess | None = None
        # The first CLI, started before trio was imported (`_launch.prestart`): used if
        # the machine's first spawn asks for exactly it. Its hub is the shared one.
        self._early = early
        if early is not None and not shared_hub().adopt(early.process, early.control):
            early.control.close()
            early.discard()
            self._early = None
        self._nursery: trio.Nursery | None = None
        self._timer = trio.CancelScope()
        self.first_spawn = trio.Event()  # set once the first CLI started, or failed to
        self.finished = trio.Event()
        self.exit_code: int | None = None

    @property
    def process(self) -> CliProcess | None:
        """The CLI process running now (or last), if any."""
        return self._process

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until the machine says the session is finished (and its CLI is gone)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._perform(self.machine.start(trio.current_time()))
            task_status.started()
            await self._run_timer()
            nursery.cancel_scope.cancel()

    def dispatch(self, event: m.Event) -> None:
        if type(event) not in _FROM_CLI and isinstance(event, _SPAWN_OUTCOMES):
            self.first_spawn.set()
        self._perform(self.machine.handle(event, trio.current_time()))

    async def _run_timer(self) -> None:
        while not self.machine.finished:
            self._timer = trio.CancelScope(deadline=self._deadline())
            with self._timer:
                await self.finished.wait()
            if self.machine.finished:
                return
            if trio.current_time() >= self._deadline():
                self.dispatch(m.DeadlinePassed())

    def _deadline(self) -> float:
        deadline = self.machine.deadline
        return math.inf if deadline is None else deadline

    def _perform(self, actions: Sequence[m.Action]) -> None:
        for action in actions:
            if type(action) is m.DeliverLines:  # most actions: the frames of each read
                if self._deliver_lines is not None:
                    self._deliver_lines(action.lines, action.turn)
                else:
                    self._deliver_each(action)
            elif type(action) is m.Deliver:
                self._deliver(action.frame, action.turn)
            else:
                self._perform_one(action)
        deadline = self._deadline()
        if deadline < self._timer.deadline:
            self._timer.deadline = deadline
        self._performed()

    def _deliver_each(self, run: m.DeliverLines) -> None:
        """A run of the CLI's frames, one `deliver` each (the library's way)."""
        for line, kind in zip(run.lines, run.kinds, strict=True):
            self._deliver(Frame(raw=line, head_type=kind), run.turn)

    def _perform_one(self, action: m.Action) -> None:
        process = self._process
        match action:
            case m.TurnQueued(turn):
                self._turn_queued(turn)
            case m.Deliver(frame, turn):
                self._deliver(frame, turn)
            case m.WriteToCli(frame):
                if process is not None:
                    process.write(frame.raw + b"\n")
            case m.Spawn(args):
                self._spawn(args)
            case m.CloseCliInput():
                if process is not None:
                    process.close_input()
            case m.SignalCli(signum):
                if process is not None:
                    process.send_signal(signum)
            case m.KillTree():
                if process is not None:
                    process.kill_tree()
            case m.MarkTurnStart():
                if process is not None:
                    process.mark_turn_start()
            case m.KillTurnProcesses():
                if process is not None:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._kill_turn_processes, process)
            case m.CancelDone(report):
                self._cancel_done(report)
            case m.CheckCliStopped():
                if process is not None:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._check_stopped, process)
            case m.Finished(exit_code):
                self.exit_code = exit_code
                self.first_spawn.set()
                self.finished.set()

    def _spawn(self, args: Sequence[str]) -> None:
        assert self._nursery is not None
        early, self._early = self._early, None
        if early is not None and early.args != (self._claude, *args):
            early.discard()
            early = None
        self._process = CliProcess(
            [self._claude, *args],
            cwd=self._cwd,
            env=self._env,
            kill_timeout=self.machine.policy.kill_timeout,
            max_line_bytes=self._max_line_bytes,
            emit=self.dispatch,
            relay_part=self._deliver_part,
            read_done=self._read_done,
            early=early,
        )
        self._nursery.start_soon(self._process.run)

    async def _kill_turn_processes(self, process: CliProcess) -> None:
        count = await process.kill_turn_processes()
        self.dispatch(m.TurnProcessesKilled(count))

    async def _check_stopped(self, process: CliProcess) -> None:
        # A task of its own, so the event comes after the actions of the cancel that
        # asked; only about the CLI that was asked about.
        if process is self._process and process.is_stopped():
            self.dispatch(m.CliStopped())
