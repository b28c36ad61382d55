"""The library: `open_session()`, `Session` and `Turn`.

A `Session` is a handle on one supervised CLI; a `Turn` is one user message and the
frames the CLI answered it with, ending with its `result` (the CLI's own, or one the
supervisor wrote when the CLI's was lost). Each `send()` gets exactly one result.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import _machine as m
from . import _protocol as protocol
from ._driver import Driver
from ._errors import CliNotFoundError, SessionClosedError, SessionFailedError
from ._framing import DEFAULT_MAX_LINE_BYTES, Frame
from ._policy import EscalationPolicy
from ._report import CancelReport

log = logging.getLogger("supervisor")

Content = str | list[dict[str, Any]]


#: How far the iteration of a turn may fall behind (bytes of frames given to it and not
#: yet taken) before the session stops reading the CLI, whose pipe then fills and holds
#: it back, as it would without us: a slow consumer costs bounded memory, and loses
#: nothing.
TURN_BUFFER_BYTES = 1024 * 1024


class Turn:
    """One user turn. Iterate it for its frames (dicts, as the CLI wrote them), ending
    with the `result`; or just `await turn.result()`.

    While you iterate a turn, the session reads the CLI only as fast as you take its
    frames (`TURN_BUFFER_BYTES` ahead). Awaiting `result()` (or a cancel, or closing the
    session) lets go: the frames are then buffered, however many.
    """

    def __init__(self, turn_id: int, taken: Callable[[], None] = lambda: None) -> None:
        self.id = turn_id
        self._send, self._receive = trio.open_memory_channel[tuple[dict[str, Any], int]](math.inf)
        self._result: dict[str, Any] | None = None
        self._done = trio.Event()
        self._backlog = 0  # bytes given, not yet taken
        self._iterated = False
        self._let_go = False
        self._taken = taken  # tells the session there may be room
        self._relayed_to: Turn | None = None  # see `_relay_to`

    def __repr__(self) -> str:
        return f"<Turn {self.id} {'done' if self._done.is_set() else 'running'}>"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        self._iterated = True
        return self._frames()

    async def _frames(self) -> AsyncIterator[dict[str, Any]]:
        async for frame, size in self._receive:
            self._backlog -= size
            self._taken()
            yield frame

    @property
    def behind(self) -> int:
        """Bytes its iteration has yet to take, while the session waits for it; for a
        relayed turn, those the turn it is relayed to has yet to take as well."""
        if not self._iterated or self._let_go or self._done.is_set():
            return 0
        if self._relayed_to is None:
            return self._backlog
        return self._backlog + self._relayed_to.behind

    def _relay_to(self, target: Turn) -> AsyncIterator[tuple[dict[str, Any], int]]:
        """Iterate this turn to copy its frames, with their sizes, into `target` (a
        `SessionPool` hands its callers such turns). The copy is made at once, so the
        backlog that matters is the target's: it counts as this turn's (`behind`), and
        taking from the target wakes this turn's session. A caller who iterates the
        target slowly thus holds this session's CLI back by the same `TURN_BUFFER_BYTES`,
        and its `result()` lets go, as if it iterated this turn."""
        self._iterated = True
        self._relayed_to = target
        target._taken = self._taken
        return self._sized()

    async def _sized(self) -> AsyncIterator[tuple[dict[str, Any], int]]:
        async for frame, size in self._receive:
            self._backlog -= size
            self._taken()
            yield frame, size

    def let_go(self) -> None:
        """Stop holding the CLI back for this turn's iteration."""
        self._let_go = True
        self._taken()

    async def result(self) -> dict[str, Any]:
        """The turn's `result` frame, once it has come."""
        self.let_go()
        await self._done.wait()
        assert self._result is not None
        return self._result

    def _deliver(self, frame: Frame) -> None:
        self._put(frame.data, len(frame.raw) + 1)

    def _put(self, data: dict[str, Any], size: int) -> None:
        """A frame for the turn, counted as the `size` bytes of its line."""
        if self._done.is_set():
            return
        self._backlog += size
        self._send.send_nowait((data, size))
        if data.get("type") == "result":
            self._result = data
            self._done.set()
            self._send.close()


class Session:
    """A supervised Claude Code session. Get one from `open_session()`."""

    def __init__(
        self,
        claude_args: Sequence[str],
        *,
        claude: str,
        policy: EscalationPolicy,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        max_line_bytes: int,
    ) -> None:
        self._machine = m.SessionMachine(claude_args, policy)
        self._turns: dict[int, Turn] = {}
        self._cancel_waiters: list[tuple[trio.Event, list[CancelReport | None]]] = []
        #: The report of the latest cancel (supersede's included), None before any.
        self.last_report: CancelReport | None = None
        self._closed = False
        self._queued: Turn | None = None  # the turn the machine queued last
        self._room = trio.Event()  # set when a turn's iteration may have caught up
        self._driver = Driver(
            self._machine,
            claude,
            cwd=cwd,
            env=env,
            max_line_bytes=max_line_bytes,
            deliver=self._deliver,
            cancel_done=self._cancel_done,
            turn_queued=self._turn_queued,
            read_done=self._after_read,
            performed=self._check_escalation,
        )

    @property
    def sessions_lost(self) -> int:
        """How many times the CLI could not resume the session and went on as a new one
        (`session_lost`): the CLI forgot every turn before. See docs/library.md."""
        return self._machine.sessions_lost

    @property
    def session_id(self) -> str | None:
        """The CLI's session id, once it has said it (after the first turn starts)."""
        return self._machine.session_id

    @property
    def cli_pid(self) -> int | None:
        """The pid of the CLI process now running (it changes on every respawn)."""
        process = self._driver.process
        return process.cli_pid if process is not None else None

    @property
    def policy(self) -> EscalationPolicy:
        return self._machine.policy

    @property
    def busy(self) -> bool:
        """Whether a turn is running or waiting to run."""
        return self._machine.running_turn is not None or bool(self._machine.queued_turns)

    async def send(self, content: Content) -> Turn:
        """Queue a user turn; it starts when the turns before it have their results.

        Raises ValueError, and sends nothing, for content the CLI cannot read (neither a
        string nor a list of content blocks; see docs/protocol.md).
        """
        # A checkpoint, as trio asks of every async function, and first: cancelled here,
        # nothing was sent; once sent, the turn is returned without another await.
        await trio.lowlevel.checkpoint()
        return self._submit(m.FromUser(self._message(content)))

    async def supersede(self, content: Content) -> Turn:
        """Cancel the running turn and start this one next, before any queued turn.

        Raises ValueError for content the CLI cannot read; the running turn goes on.
        """
        await trio.lowlevel.checkpoint()  # see send()
        return self._submit(m.Supersede(self._message(content)))

    async def cancel(self, *, cancel_queued: bool = False) -> CancelReport | None:
        """Cancel the running turn through the ladder; None when no turn was running.

        Returns once the session is ready for the next turn. `cancel_queued=True` also
        drops the turns still waiting (each gets a cancelled result).
        """
        self._check_usable()
        done = trio.Event()
        slot: list[CancelReport | None] = []
        self._cancel_waiters.append((done, slot))
        self._driver.dispatch(m.Cancel(cancel_queued=cancel_queued))
        await done.wait()
        return slot[0]

    async def aclose(self) -> None:
        """Stop the CLI gracefully (stdin EOF, wait, then the ladder); nothing is left."""
        if not self._closed:
            self._closed = True
            self._room.set()
            self._driver.dispatch(m.EndOfInput(drain=False))
        await self._driver.finished.wait()

    # ---------------------------------------------------------------- internals

    def _submit(self, event: m.FromUser | m.Supersede) -> Turn:
        self._check_usable()
        self._queued = None
        self._driver.dispatch(event)
        turn = self._queued
        assert turn is not None, "the machine queues every user turn it is given"
        return turn

    def _turn_queued(self, turn_id: int) -> None:
        # Before any frame for the turn: the machine says the id first.
        self._queued = self._turns[turn_id] = Turn(turn_id, self._wake_reader)

    async def _after_read(self) -> None:
        """Backpressure: after each read of the CLI's output, wait while an iterated turn
        is more than `TURN_BUFFER_BYTES` behind. Never while a cancel, a close or a
        recovery is under way: the CLI must be heard for it to end."""
        while (
            not self._closed
            and not self._machine.escalating
            and sum(turn.behind for turn in self._turns.values()) > TURN_BUFFER_BYTES
        ):
            self._room = trio.Event()
            await self._room.wait()

    def _wake_reader(self) -> None:
        self._room.set()

    def _check_escalation(self) -> None:
        if self._machine.escalating:
            self._room.set()

    def _message(self, content: Content) -> Frame:
        """A programming error is the caller's to see at once, not a turn to wait for."""
        self._check_usable()
        problem = protocol.content_problem(content)
        if problem is not None:
            raise ValueError(f"{problem}; nothing was sent")
        return protocol.user_message(content)

    def _check_usable(self) -> None:
        failure = self._machine.failure
        if self._machine.finished and failure is not None:
            raise SessionFailedError(failure.message)
        if self._closed or self._machine.finished:
            raise SessionClosedError("the session is closed; open a new one")

    def _deliver(self, frame: Frame, turn_id: int | None) -> None:
        if frame.type == "system" and frame.subtype == "supervisor_error":
            log.warning("supervisor: %s", frame.data.get("error"))
        turn = self._turns.get(turn_id) if turn_id is not None else None
        if turn is None:
            return
        turn._deliver(frame)
        if turn.done:
            del self._turns[turn.id]

    def _cancel_done(self, report: CancelReport | None) -> None:
        if report is not None:
            self.last_report = report
        waiters, self._cancel_waiters = self._cancel_waiters, []
        for done, slot in waiters:
            slot.append(report)
            done.set()


def find_claude(claude: str | os.PathLike[str] | None = None) -> str:
    """The CLI to run: `claude` if given, else the first `claude` on PATH."""
    if claude is not None:
        return os.fspath(claude)
    found = shutil.which("claude")
    if found is None:
        raise CliNotFoundError(
            "no `claude` executable on PATH: install Claude Code "
            "(npm install -g @anthropic-ai/claude-code) or pass claude=<path>"
        )
    return found


@asynccontextmanager
async def open_session(
    claude_args: Sequence[str],
    *,
    claude: str | os.PathLike[str] | None = None,
    policy: EscalationPolicy | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[Session]:
    """Run one supervised CLI session for the duration of the `async with` block.

    `claude_args` are the CLI's own arguments (for example `["-p", "--input-format",
    "stream-json", "--output-format", "stream-json", "--verbose"]`); they are passed
    unchanged, except that a respawn resumes the session. Raises `SessionFailedError`
    if the CLI cannot be started.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be a positive number of bytes, not {max_line_bytes}")
    session = Session(
        claude_args,
        claude=find_claude(claude),
        policy=policy or EscalationPolicy(),
        cwd=cwd,
        env=env,
        max_line_bytes=max_line_bytes,
    )
    # Exceptions must leave this function as they are, not wrapped in the nursery's
    # ExceptionGroup: ours (the CLI did not start) and the caller's own.
    escaping: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(session._driver.run)
        await session._driver.first_spawn.wait()
        failure = session._machine.failure
        if failure is not None:
            await session._driver.finished.wait()
            escaping = SessionFailedError(failure.message)
        else:
            try:
                yield session
            except trio.Cancelled:
                raise
            except BaseException as exc:
                escaping = exc
            finally:
                with trio.CancelScope(shield=True):
                    await session.aclose()
    if escaping is not None:
        raise escaping
