"""The session state machine: everything that decides what happens, and no I/O.

Rules of this file (after h11's `_state.py`):

* Everything that affects what the supervisor does lives here: the queue of user turns,
  which rung of the cancel ladder is running and when its deadline passes, what a
  respawned CLI must be told again, when a result must be synthesized.
* Nothing here reads a clock, a pipe or a process. The driver feeds `handle(event, now)`
  with what happened and carries out the returned actions; `deadline` says when to call
  back with `DeadlinePassed` if nothing else happens first. Time is whatever `now` says,
  so tests run the ladder on a fake clock and hypothesis can try any interleaving.

The life of a session, in short: the CLI is spawned; user turns are queued and forwarded
one at a time (so each gets exactly one `result`); a cancel climbs interrupt → SIGINT →
tree kill, each rung with its own deadline from the `EscalationPolicy`; if the CLI is
gone afterwards it is respawned with `--resume`, told the session-level control
requests again, and the session is ready once it has answered one of them.
"""

from __future__ import annotations

import enum
import itertools
import signal
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from . import _protocol as protocol
from ._args import resume_args, without_session_flags
from ._framing import Frame, FramingError
from ._policy import EscalationPolicy
from ._report import CancelPath, CancelReport, CancelTrigger, Step

# ----------------------------------------------------------------------------- events


@attrs.frozen
class FromUser:
    """A frame from the supervisor's user: a turn, a control frame, or a supervisor frame."""

    frame: Frame


@attrs.frozen
class Cancel:
    """Cancel the running turn (the library's `cancel()`, the executable's SIGINT)."""

    request_id: Any = None
    cancel_queued: bool = False
    trigger: CancelTrigger = "request"


@attrs.frozen
class Supersede:
    """Cancel the running turn and run `frame` (a user turn) next, before anything queued."""

    frame: Frame


@attrs.frozen
class EndOfInput:
    """The user has nothing more to send.

    `drain=True` (the executable's stdin EOF): queued turns still run, as with the CLI.
    `drain=False` (the library's close): queued turns are dropped with a result each.
    """

    drain: bool


@attrs.frozen
class Terminate:
    """Stop now: the executable's SIGTERM or SIGHUP, or the death of its parent.

    Unlike `EndOfInput`, no graceful wait: the parent wants the session gone (an SDK's
    close sends SIGTERM only after its own wait for the exit). The CLI's whole tree gets
    SIGTERM at once, the CLI included, as the bare CLI gets it from the SDK (so it can
    still save its transcript), and SIGKILL after `kill_timeout`. Queued turns are
    dropped with a result each; a cancel under way ends without a report.
    """


@attrs.frozen
class FromCli:
    frame: Frame


@attrs.frozen
class CliSpawned:
    """The CLI process exists (its pid is known to the driver)."""


@attrs.frozen
class SpawnFailed:
    message: str


@attrs.frozen
class CliExited:
    """The CLI exited and its helper cleaned up what was left of its tree."""

    returncode: int | None
    processes_killed: int = 0
    stderr_tail: str = ""


@attrs.frozen
class TurnProcessesKilled:
    count: int


@attrs.frozen
class DeadlinePassed:
    pass


@attrs.frozen
class CliStopped:
    """The answer to `CheckCliStopped` when the CLI is stopped (SIGSTOP, a debugger).

    A stopped CLI acts on nothing: not the interrupt, not SIGINT, so the ladder skips to
    the kill rung. Only the driver can look at the process, hence an event.
    """


@attrs.frozen
class BadLine:
    """A line that was not a frame, from the CLI (`"cli"`) or from the user (`"user"`)."""

    source: Literal["cli", "user"]
    error: FramingError


Event = (
    FromUser
    | Cancel
    | Supersede
    | EndOfInput
    | Terminate
    | FromCli
    | CliSpawned
    | SpawnFailed
    | CliExited
    | TurnProcessesKilled
    | DeadlinePassed
    | BadLine
    | CliStopped
)

# ---------------------------------------------------------------------------- actions


@attrs.frozen
class Spawn:
    """Start the CLI with these arguments; answer with CliSpawned or SpawnFailed."""

    args: tuple[str, ...]


@attrs.frozen
class WriteToCli:
    frame: Frame


@attrs.frozen
class CloseCliInput:
    pass


@attrs.frozen
class SignalCli:
    signum: int


@attrs.frozen
class KillTree:
    """SIGTERM every process of the CLI's tree, SIGKILL after kill_timeout.

    The CLI's exit (`CliExited`) follows once the whole tree is gone, with the count.
    """


@attrs.frozen
class MarkTurnStart:
    """Remember which processes exist now: the ones that appear later belong to the turn."""


@attrs.frozen
class KillTurnProcesses:
    """Kill the processes the running turn started; answer TurnProcessesKilled."""


@attrs.frozen
class Deliver:
    """A frame for the user, belonging to `turn` (None: to no turn in particular)."""

    frame: Frame
    turn: int | None


@attrs.frozen
class CancelDone:
    """A cancel is over; `report` is None when there was nothing to cancel."""

    report: CancelReport | None


@attrs.frozen
class Finished:
    """The session is over: the CLI has exited and will not be respawned."""

    exit_code: int


@attrs.frozen
class CheckCliStopped:
    """Look whether the CLI process is stopped; answer `CliStopped` if it is, else nothing."""


Action = (
    Spawn
    | WriteToCli
    | CloseCliInput
    | SignalCli
    | KillTree
    | MarkTurnStart
    | KillTurnProcesses
    | Deliver
    | CancelDone
    | Finished
    | CheckCliStopped
)

# ---------------------------------------------------------------------------- state

#: What a respawned CLI is asked when the user sent no session-level control request to
#: replay: its answer proves it reads its input. An interrupt while no turn runs is
#: answered and does nothing, on every CLI version tried; 2.0.x ignores unknown
#: subtypes without a word, so a made-up "ping" would never be answered there.
PROBE_SUBTYPE = "interrupt"


class Rung(enum.Enum):
    """Where a cancel (or a close) is on the ladder."""

    INTERRUPT = "interrupt"  # in-band interrupt sent (or waiting for init to send it)
    EOF = "eof"  # closing: stdin closed, waiting for the CLI to exit
    SIGINT = "sigint"
    KILL = "kill"
    CLEANUP = "cleanup"  # the turn ended in-band; killing what its tools left
    RESPAWN = "respawn"  # the CLI is gone; waiting for the resumed one to answer


#: The rung after each one when its deadline passes.
NEXT_RUNG = {Rung.INTERRUPT: Rung.SIGINT, Rung.EOF: Rung.SIGINT, Rung.SIGINT: Rung.KILL}


@attrs.define
class _Turn:
    id: int
    frame: Frame
    started: float | None = None  # when it was forwarded to the CLI
    #: What is wrong with its content: such a turn is never forwarded; it gets its result
    #: when it reaches the head of the queue, so results keep the order of the frames.
    invalid: str | None = None
    heard: bool = False  # the CLI wrote a frame since the turn was forwarded
    not_started: bool = False  # cancelled because the CLI stayed silent (start_timeout)
    #: For the stall watchdog: when the CLI last wrote during this turn, and the tool
    #: calls (`tool_use` ids) it announced whose `tool_result` has not come yet.
    last_output: float | None = None
    tools: set[str] = attrs.Factory(set)


class Purpose(enum.Enum):
    """Why the ladder is being climbed."""

    CANCEL = "cancel"  # the user cancelled the running turn: ends with a CancelReport
    CLOSE = "close"  # the session is closing: ends when the CLI has exited
    RECOVER = "recover"  # the CLI died on its own: ends when the respawned CLI is ready


@attrs.define
class _Escalation:
    """A cancel, a close or a recovery in progress: the ladder's position and timeline."""

    purpose: Purpose
    started: float
    rung: Rung
    deadline: float | None
    steps: list[Step] = attrs.Factory(list)
    path: CancelPath = "interrupt"
    killed: int = 0
    interrupt_id: Any = None  # the id of the interrupt sent (ours or the user's)
    #: An interrupt held until the CLI's init: one sent before it is ignored by the CLI.
    pending_interrupt: Frame | None = None
    request_ids: list[Any] = attrs.Factory(list)
    trigger: CancelTrigger = "request"
    interrupt_sent_at: float | None = None
    acknowledged: bool = False  # the CLI answered the interrupt: it is alive


class SessionMachine:
    """The supervisor's decisions for one session. See the module docstring."""

    def __init__(
        self,
        args: Sequence[str],
        policy: EscalationPolicy | None = None,
    ) -> None:
        self.args = tuple(args)
        self.policy = policy or EscalationPolicy()
        self.session_id: str | None = None
        self.finished = False
        #: The id the next user turn gets (turns are numbered from 1 in arrival order).
        self.next_turn_id = 1

        self._ids = itertools.count(1)
        self._queue: deque[_Turn | Frame] = deque()  # user turns and held control frames
        self._running: _Turn | None = None
        self._escalation: _Escalation | None = None
        self._closing: EndOfInput | None = None
        self._failed: str | None = None

        # The CLI process.
        self._alive = False  # spawned and not yet exited
        self._proven = False  # it wrote a frame: it started properly
        self._initialized = False  # this turn's system/init came (interrupts work from then)
        self._respawning = False  # spawned to resume; not ready until it answers
        self._starting_fresh = False  # spawned without --resume after a resume failed
        self._resume_errors: list[str] = []  # what a failing resumed CLI said in a result
        self._awaiting: set[str] = set()  # our control requests it has not answered

        # What a respawned CLI must be told again, by subtype (the latest of each).
        self._session_requests: dict[str, Frame] = {}
        # The user's control requests the CLI has not answered yet, by request id.
        self._user_requests: dict[Any, Frame] = {}
        # The user's interrupts the supervisor answered itself: a late answer from the
        # CLI to one of them is dropped, so the user gets exactly one.
        self._answered: set[Any] = set()

    # ------------------------------------------------------------------ public

    @property
    def deadline(self) -> float | None:
        """When to feed `DeadlinePassed` if no other event comes first."""
        if self._escalation is not None:
            return self._escalation.deadline
        return _earliest(self._start_deadline(), self._watchdog_deadline())

    @property
    def running_turn(self) -> int | None:
        return self._running.id if self._running else None

    @property
    def queued_turns(self) -> list[int]:
        return [item.id for item in self._queue if isinstance(item, _Turn)]

    @property
    def ready(self) -> bool:
        return self._alive and not self._respawning and self._failed is None

    @property
    def cancelling(self) -> bool:
        return self._purpose is Purpose.CANCEL

    @property
    def escalating(self) -> bool:
        """A cancel, a close or a recovery is under way: the watchdogs wait for its end."""
        return self._escalation is not None

    @property
    def _purpose(self) -> Purpose | None:
        return self._escalation.purpose if self._escalation else None

    def start(self, now: float) -> list[Action]:
        """The first actions of a session: spawn the CLI with the user's arguments."""
        return self._spawn(self.args, now, respawn=False)

    def handle(self, event: Event, now: float) -> list[Action]:
        if self.finished:
            return []
        out: list[Action] = []
        match event:
            case FromUser(frame):
                self._on_user_frame(frame, now, out)
            case Cancel(request_id, cancel_queued, trigger):
                self._on_cancel(request_id, cancel_queued, now, out, trigger)
            case Supersede(frame):
                self._on_supersede(frame, now, out)
            case EndOfInput():
                if self._closing is None or not event.drain:  # "now" beats "drain"
                    self._closing = event
                if not event.drain:
                    self._drop_queued("the session was closed before this turn started", out)
            case Terminate():
                self._on_terminate(now, out)
            case FromCli(frame):
                self._on_cli_frame(frame, now, out)
            case CliSpawned():
                pass
            case SpawnFailed(message):
                self._on_spawn_failed(message, now, out)
            case CliExited():
                self._on_exit(event, now, out)
            case TurnProcessesKilled(count):
                self._on_turn_processes_killed(count, now, out)
            case DeadlinePassed():
                self._on_deadline(now, out)
            case BadLine(source, error):
                self._on_bad_line(source, error, out)
            case CliStopped():
                self._on_cli_stopped(now, out)
        self._pump(now, out)
        return out

    def _on_bad_line(self, source: str, error: FramingError, out: list[Action]) -> None:
        code = error.code if source == "user" else f"cli_{error.code}"
        who = "your input" if source == "user" else "the Claude Code CLI's output"
        details = {"preview": error.preview} if error.preview else {}
        message = f"a line of {who} was dropped: {error.message}"
        out.append(Deliver(protocol.supervisor_error(code, message, **details), self.running_turn))

    def _on_spawn_failed(self, message: str, now: float, out: list[Action]) -> None:
        self._alive = False
        where = "claude= in the library, --claude or CLAUDE_SUPERVISOR_CLAUDE in the executable"
        if self._respawning:
            code = "respawn_failed"
            what = (
                "as a new session after the resume failed"
                if self._starting_fresh
                else f"to resume session {self.session_id}"
            )
            message = (
                f"cannot restart the Claude Code CLI {what}: "
                f"{message}; reinstall it or point the supervisor at it ({where})"
            )
        else:
            code, message = "cli_not_started", f"{message}; check the CLI's path ({where})"
        self._fail(code, message, now, out)

    # ------------------------------------------------------------- user input

    def _on_user_frame(self, frame: Frame, now: float, out: list[Action]) -> None:
        kind = frame.type
        if kind == "user":
            self._enqueue(frame, out, front=False)
        elif kind == "cancel_turn":
            self._on_cancel_turn_frame(frame, now, out)
        elif kind == "supersede_turn":
            # Checked like a user frame's content: a bad one gets its error and its result.
            self._on_supersede(protocol.user_message(frame.data.get("content")), now, out)
        elif kind is not None and kind.startswith("supervisor_"):
            self._error(
                out,
                "unknown_supervisor_frame",
                f"unknown supervisor frame type {kind!r}; "
                "the supervisor accepts cancel_turn and supersede_turn",
            )
        elif kind == "control_request":
            if _request_id(frame.data) is None:
                self._error(
                    out,
                    "invalid_control_request",
                    'a control_request needs a "request_id" (a string or an integer) '
                    "to be answered; it was not sent to the CLI",
                )
                return
            self._on_user_control_request(frame, now, out)
        elif kind == "control_response":
            # The user's answer to one of the CLI's requests: only that CLI can use it.
            if self._alive and not self._respawning:
                out.append(WriteToCli(frame))
        else:
            self._forward_or_hold(frame, out)

    def _on_cancel_turn_frame(self, frame: Frame, now: float, out: list[Action]) -> None:
        request_id = frame.data.get("request_id")
        cancel_queued = frame.data.get("cancel_queued", False)
        if not isinstance(request_id, str | int | None) or isinstance(request_id, bool):
            self._error(
                out,
                "invalid_cancel_turn",
                'cancel_turn "request_id" must be a string or an integer',
            )
            return
        if not isinstance(cancel_queued, bool):
            self._error(out, "invalid_cancel_turn", 'cancel_turn "cancel_queued" must be a boolean')
            return
        self._on_cancel(request_id, cancel_queued, now, out)

    def _on_user_control_request(self, frame: Frame, now: float, out: list[Action]) -> None:
        request = frame.data.get("request")
        subtype = request.get("subtype") if isinstance(request, dict) else None
        request_id = frame.data.get("request_id")
        if subtype == "interrupt" and self._running is not None:
            self._user_requests[request_id] = frame
            if self._escalation is None:
                self._begin_cancel(now, out, interrupt=frame)
            elif (
                self._escalation.rung is Rung.INTERRUPT
                and self._escalation.pending_interrupt is None
            ):
                self._forward_control(frame, out)
            # Otherwise it is answered when the cancel under way ends.
            return
        if isinstance(subtype, str) and subtype in protocol.SESSION_LEVEL_SUBTYPES:
            self._session_requests[subtype] = frame
        self._forward_or_hold(frame, out)

    def _forward_or_hold(self, frame: Frame, out: list[Action]) -> None:
        """Control frames go straight to a healthy CLI; during a cancel they wait their turn."""
        if self._can_forward_control():
            self._forward_control(frame, out)
        else:
            self._queue.append(frame)

    def _can_forward_control(self) -> bool:
        if not self.ready:
            return False
        return self._escalation is None or self._escalation.rung in (Rung.INTERRUPT, Rung.EOF)

    def _forward_control(self, frame: Frame, out: list[Action]) -> None:
        if frame.type == "control_request":
            request_id = frame.data.get("request_id")
            self._user_requests[request_id] = frame
        out.append(WriteToCli(frame))

    def _enqueue(self, frame: Frame, out: list[Action], *, front: bool) -> _Turn:
        turn = _Turn(self.next_turn_id, frame)
        self.next_turn_id += 1
        if self._failed is not None:
            out.append(Deliver(self._result("supervisor_failed", self._failed), turn.id))
            return turn
        if self._closing is not None:
            closing = "the session is closing: no new turn can start"
            out.append(Deliver(self._result("cancelled", closing), turn.id))
            return turn
        problem = protocol.user_frame_problem(frame)
        if problem is not None:
            # The real CLI neither answers nor fails on such content: forwarded, it would
            # hold every turn behind it. Said at once; its result comes in its place.
            turn.invalid = (
                f"turn {turn.id} was not sent to the Claude Code CLI: {problem}; "
                "fix the content and send the turn again"
            )
            out.append(Deliver(protocol.supervisor_error("invalid_content", turn.invalid), turn.id))
        if front:
            self._queue.appendleft(turn)
        else:
            self._queue.append(turn)
        return turn

    # ---------------------------------------------------------------- cancels

    def _on_cancel(
        self,
        request_id: Any,
        cancel_queued: bool,
        now: float,
        out: list[Action],
        trigger: CancelTrigger = "request",
    ) -> None:
        if cancel_queued:
            self._drop_queued("cancelled before it started", out)
        if self._escalation is not None and self._purpose is Purpose.CANCEL:
            if request_id is not None:
                self._escalation.request_ids.append(request_id)
            return  # joins the cancel under way
        if self._running is None or self._escalation is not None:
            out.append(CancelDone(None))
            out.append(
                Deliver(
                    protocol.supervisor_cancel(
                        None,
                        self.session_id,
                        [] if request_id is None else [request_id],
                        trigger=trigger,
                    ),
                    None,
                )
            )
            return
        self._begin_cancel(now, out, trigger=trigger)
        if request_id is not None and self._escalation is not None:
            self._escalation.request_ids.append(request_id)

    def _on_supersede(self, frame: Frame, now: float, out: list[Action]) -> None:
        turn = self._enqueue(frame, out, front=True)
        # A supersede that cannot run must not cancel the turn it was meant to replace.
        if turn.invalid is None and self._running is not None and self._escalation is None:
            self._begin_cancel(now, out, trigger="supersede")

    def _begin_cancel(
        self,
        now: float,
        out: list[Action],
        interrupt: Frame | None = None,
        trigger: CancelTrigger = "request",
    ) -> None:
        """First rung: the in-band interrupt (sent once the CLI can act on it).

        The driver is asked at once whether the CLI is stopped: if it is, the interrupt
        and SIGINT cannot work and the ladder goes straight to the kill (`CliStopped`).
        """
        esc = _Escalation(
            purpose=Purpose.CANCEL,
            started=now,
            rung=Rung.INTERRUPT,
            deadline=now + self.policy.interrupt_timeout,
            trigger=trigger,
        )
        self._escalation = esc
        out.append(CheckCliStopped())
        if interrupt is None:
            interrupt = protocol.control_request(self._own_id("interrupt"), "interrupt")
        esc.interrupt_id = interrupt.data.get("request_id")
        if self._initialized:
            self._send_interrupt(interrupt, now, out)
        else:
            # An interrupt sent before the CLI's init is acknowledged and ignored:
            # hold it until init arrives (the deadline runs from now regardless).
            esc.pending_interrupt = interrupt

    def _send_interrupt(self, interrupt: Frame, now: float, out: list[Action]) -> None:
        out.append(WriteToCli(interrupt))
        self._step("interrupt_sent", now)
        esc = self._escalation
        if esc is not None and esc.rung is Rung.INTERRUPT:
            esc.interrupt_sent_at = now
            esc.deadline = self._interrupt_deadline(esc)

    def _interrupt_deadline(self, esc: _Escalation) -> float:
        """The interrupt rung's deadline: its result's, or sooner its acknowledgement's.

        A live CLI acknowledges the interrupt within milliseconds; one that does not has
        an event loop that cannot run, and SIGINT is handled on that same loop.
        """
        deadline = esc.started + self.policy.interrupt_timeout
        if esc.interrupt_sent_at is not None and not esc.acknowledged:
            deadline = min(deadline, esc.interrupt_sent_at + self.policy.interrupt_ack_timeout)
        return deadline

    def _on_cli_stopped(self, now: float, out: list[Action]) -> None:
        esc = self._escalation
        if esc is None or esc.purpose is not Purpose.CANCEL:
            return
        if esc.rung is Rung.INTERRUPT or esc.rung is Rung.SIGINT:
            self._step("cli_stopped", now)
            esc.pending_interrupt = None  # never sent: it must not reach the next CLI
            self._kill(now, out)

    def _on_deadline(self, now: float, out: list[Action]) -> None:
        esc = self._escalation
        if esc is None:
            self._on_start_timeout(now, out)
            if self._escalation is None:
                self._check_watchdog(now, out)
            return
        if esc.deadline is None or now < esc.deadline:
            return
        if esc.rung is Rung.RESPAWN:
            self._fail(
                "resume_failed",
                f"the resumed CLI did not answer within {self.policy.ready_timeout:g} s "
                f"(session {self.session_id}); raise ready_timeout for very large sessions, "
                "or start a new session",
                now,
                out,
            )
            return
        if esc.rung is Rung.KILL or esc.rung is Rung.CLEANUP:
            self._fail(
                "tree_not_killed",
                "the CLI's processes did not exit after SIGKILL (stuck in the kernel?); "
                "the session cannot continue",
                now,
                out,
            )
            return
        if (
            esc.rung is Rung.INTERRUPT
            and esc.purpose is Purpose.CANCEL
            and esc.interrupt_sent_at is not None
            and not esc.acknowledged
            and now < esc.started + self.policy.interrupt_timeout
        ):
            # Only the acknowledgement's deadline passed: the CLI's event loop is not
            # running, and SIGINT is handled there too. Skip it.
            self._kill(now, out)
            return
        self._climb(NEXT_RUNG[esc.rung], now, out)

    def _climb(self, rung: Rung, now: float, out: list[Action]) -> None:
        esc = self._escalation
        assert esc is not None
        esc.rung = rung
        esc.pending_interrupt = None  # never sent: it must not reach the next CLI
        if rung is Rung.SIGINT:
            esc.path = "sigint"
            esc.deadline = now + self.policy.sigint_timeout
            out.append(SignalCli(signal.SIGINT))
            self._step("sigint_sent", now)
        else:
            self._kill(now, out)

    def _kill(self, now: float, out: list[Action]) -> None:
        esc = self._escalation
        assert esc is not None
        esc.rung = Rung.KILL
        esc.path = "kill"
        esc.deadline = now + self.policy.reap_timeout
        out.append(KillTree())
        self._step("kill_sent", now)

    def _on_terminate(self, now: float, out: list[Action]) -> None:
        self._closing = EndOfInput(drain=False)
        self._drop_queued("the session was stopped before this turn started", out)
        esc = self._escalation
        if not self._alive or self._failed is not None:
            return  # already finished, or already killing the tree
        if esc is not None and esc.purpose is Purpose.CLOSE and esc.rung is Rung.KILL:
            return
        if esc is not None and esc.purpose is Purpose.CANCEL:
            out.append(CancelDone(None))
            notice = protocol.supervisor_cancel(None, self.session_id, esc.request_ids)
            out.append(Deliver(notice, None))
        self._escalation = _Escalation(
            purpose=Purpose.CLOSE, started=now, rung=Rung.KILL, deadline=None
        )
        self._kill(now, out)

    def _on_turn_processes_killed(self, count: int, now: float, out: list[Action]) -> None:
        esc = self._escalation
        if esc is None or esc.rung is not Rung.CLEANUP:
            return
        esc.killed += count
        self._step("turn_processes_killed", now)
        self._finish_cancel(now, out, respawned=False)

    def _finish_cancel(self, now: float, out: list[Action], *, respawned: bool) -> None:
        esc = self._escalation
        assert esc is not None
        self._escalation = None
        if esc.purpose is not Purpose.CANCEL:
            return
        self._step_on(esc, "ready", now)
        self._answer_pending(out)
        report = CancelReport(
            path=esc.path,
            total_ms=_ms(now - esc.started),
            steps=tuple(esc.steps),
            respawned=respawned,
            session_id=self.session_id,
            processes_killed=esc.killed,
            trigger=esc.trigger,
        )
        out.append(CancelDone(report))
        notice = protocol.supervisor_cancel(
            report, self.session_id, esc.request_ids, trigger=esc.trigger
        )
        out.append(Deliver(notice, None))

    def _answer_pending(self, out: list[Action], failure: str | None = None) -> None:
        """The user's control requests still open get their answer from the supervisor.

        With no `failure`, only interrupts: their turn has ended (by escalation, or by
        finishing), so they succeeded, and an SDK waits for the answer (the official one
        for 60 s). With a `failure` (the CLI died, the session failed), every request:
        interrupts succeed, the others get an error saying what to do. Should the CLI
        answer one of them later, that answer is dropped: one answer per request.
        """
        for request_id, frame in list(self._user_requests.items()):
            if _is_interrupt(frame):
                answer = protocol.control_success(request_id)
            elif failure is not None:
                answer = protocol.control_error(request_id, failure)
            else:
                continue
            del self._user_requests[request_id]
            self._answered.add(request_id)
            out.append(Deliver(answer, self.running_turn))

    # --------------------------------------------------------------- from CLI

    def _on_cli_frame(self, frame: Frame, now: float, out: list[Action]) -> None:
        self._proven = True
        if self._running is not None:
            self._note_output(self._running, frame, now)
        data = frame.data
        session_id = data.get("session_id")
        if isinstance(session_id, str) and session_id:
            self.session_id = session_id
        kind = frame.type
        if kind == "control_response":
            if self._on_control_response(frame, now, out):
                return
        elif kind == "system" and frame.subtype == "init":
            self._initialized = True
            esc = self._escalation
            if esc is not None and esc.pending_interrupt is not None:
                self._send_interrupt(esc.pending_interrupt, now, out)
                esc.pending_interrupt = None
        turn = self._running
        if turn is not None and kind != "control_response":
            turn.heard = True  # the CLI took the turn up: the start timeout is over
        if kind == "result" and turn is None and self._respawning:
            # The real CLI writes one when a --resume fails, before it exits: its errors
            # explain the failure (see _on_exit), and it belongs to no turn.
            errors = data.get("errors")
            if isinstance(errors, list):
                self._resume_errors += [str(e) for e in errors]
            return
        if kind == "result" and turn is None:
            # Not relayed as a result: a parent counts one result per turn.
            self._error(
                out,
                "cli_unexpected_result",
                "the Claude Code CLI wrote a result while no turn was running",
                frame=frame.data,
            )
            return
        out.append(Deliver(frame, turn.id if turn else None))
        if kind == "result" and turn is not None:
            self._running = None
            esc = self._escalation
            if esc is not None and esc.purpose is Purpose.CANCEL:
                self._step("result", now)
                if esc.rung is Rung.INTERRUPT:
                    esc.rung = Rung.CLEANUP
                    esc.deadline = now + self.policy.reap_timeout
                    out.append(KillTurnProcesses())

    def _on_control_response(self, frame: Frame, now: float, out: list[Action]) -> bool:
        """Handles an answer; True when it was ours and must not reach the user."""
        response = frame.data.get("response")
        request_id = _request_id(response) if isinstance(response, dict) else None
        if request_id is None:
            return False  # nothing of ours can be answered without an id: relay it
        esc = self._escalation
        if esc is not None and request_id == esc.interrupt_id and request_id is not None:
            self._step("interrupt_answered", now)
            esc.acknowledged = True
            if esc.rung is Rung.INTERRUPT:
                esc.deadline = self._interrupt_deadline(esc)
        if isinstance(request_id, str) and request_id in self._awaiting:
            self._awaiting.discard(request_id)
            if not self._awaiting:
                self._respawning = False  # ready: _pump ends the respawn
            return True
        if isinstance(request_id, str) and request_id.startswith(protocol.OWN_ID_PREFIX):
            return True
        if request_id in self._answered:
            self._answered.discard(request_id)
            return True  # already answered by the supervisor
        self._user_requests.pop(request_id, None)
        return False

    def _on_exit(self, event: CliExited, now: float, out: list[Action]) -> None:
        self._alive = False
        self._initialized = False
        self._awaiting.clear()
        self._answered.clear()  # that CLI will answer nothing more
        esc, purpose = self._escalation, self._purpose
        if esc is not None:
            esc.killed += event.processes_killed
            self._step("tree_killed" if esc.rung is Rung.KILL else "exited", now)
        never_started = self._respawning or (not self._proven and purpose is None)
        if self._failed is None and purpose is not Purpose.CLOSE and never_started:
            if self._respawning and not self._starting_fresh:
                self._start_fresh(event, now, out)
            else:
                self._fail_to_start(event, now, out)
            return
        if self._running is not None:
            self._end_running_turn(event, purpose, now, out)
        self._answer_pending(out, self._why_unanswered(purpose))
        if self._failed is not None:
            self._finish(1, out)
            return
        if purpose is Purpose.CLOSE:
            self._answer_held(self._why_unanswered(purpose), out)
            self._finish(exit_code(event.returncode), out)
            return
        if esc is None:
            self._error(
                out,
                "cli_exited",
                f"the Claude Code CLI exited unexpectedly ({_describe_exit(event.returncode)})"
                f"{_stderr_hint(event.stderr_tail)}; restarting it with --resume",
            )
            esc = self._escalation = _Escalation(
                purpose=Purpose.RECOVER, started=now, rung=Rung.RESPAWN, deadline=None
            )
        esc.rung = Rung.RESPAWN
        out.extend(self._spawn(resume_args(self.args, self.session_id), now, respawn=True))

    def _answer_held(self, why: str, out: list[Action]) -> None:
        """Control requests held for a CLI that will not come back get their answer."""
        for held in [item for item in self._queue if isinstance(item, Frame)]:
            self._queue.remove(held)
            if held.type == "control_request":
                request_id = held.data.get("request_id")
                answer = (
                    protocol.control_success(request_id)
                    if _is_interrupt(held)
                    else protocol.control_error(request_id, why)
                )
                out.append(Deliver(answer, None))

    def _why_unanswered(self, purpose: Purpose | None) -> str:
        if self._failed is not None:
            return self._failed
        if purpose is Purpose.CLOSE:
            return "the Claude Code CLI exited before answering: the session was closed"
        return (
            "the Claude Code CLI exited before answering; the supervisor restarts it "
            "(a session-level request is sent to it again; send any other request again)"
        )

    def _end_running_turn(
        self, event: CliExited, purpose: Purpose | None, now: float, out: list[Action]
    ) -> None:
        """The CLI exited before the turn's result: the turn gets one anyway."""
        turn = self._running
        assert turn is not None
        self._running = None
        if purpose is Purpose.CANCEL and turn.not_started:
            reason = "turn_not_started"
            message = (
                f"the Claude Code CLI wrote nothing for {self.policy.start_timeout:g} s after "
                "this turn was sent to it, so the supervisor cancelled it (the turns behind "
                "it run next): send it again"
            )
        elif purpose is Purpose.CANCEL:
            reason, message = "cancelled", self._cancelled_message()
        elif purpose is Purpose.CLOSE:
            reason, message = "cancelled", "the session was closed during this turn"
        else:
            reason = "cli_exited"
            message = (
                f"the Claude Code CLI exited ({_describe_exit(event.returncode)}) during "
                "this turn; the supervisor restarts it with --resume: send the turn again"
                + _stderr_hint(event.stderr_tail)
            )
        duration = _ms(now - (turn.started or now))
        out.append(Deliver(self._result(reason, message, duration), turn.id))

    def _start_fresh(self, event: CliExited, now: float, out: list[Action]) -> None:
        """The resumed CLI failed: go on as a new CLI session, and say the history is lost.

        A session the CLI cannot resume (`--no-session-persistence` keeps no transcript;
        the transcript may have been deleted) would otherwise die at the first cancel that
        has to restart the CLI. A new session keeps the user's next turns working; the
        user is told what was lost so they can send the context again.
        """
        why = "; ".join(self._resume_errors) or event.stderr_tail.strip()[-500:]
        self._resume_errors = []
        lost = self.session_id
        which = f"session {lost}" if lost else "the session"
        message = (
            f"the Claude Code CLI could not resume {which} "
            f"({_describe_exit(event.returncode)}{'; it said: ' + why if why else ''}), so "
            "the supervisor started it again as a new session: the conversation's history "
            "is lost (the CLI no longer knows the earlier turns); send again whatever "
            "context the next turns need"
        )
        if "--no-session-persistence" in self.args:
            message += (
                ". The session was started with --no-session-persistence, which keeps no "
                "transcript to resume: drop that flag to keep the history across a cancel "
                "that restarts the CLI"
            )
        self._error(out, "session_lost", message, session_id=lost)
        self.session_id = None  # the new CLI says its own with its first turn
        out.extend(self._spawn(without_session_flags(self.args), now, respawn=True, fresh=True))

    def _fail_to_start(self, event: CliExited, now: float, out: list[Action]) -> None:
        said = event.stderr_tail.strip() or "; ".join(self._resume_errors)
        self._resume_errors = []
        if self._starting_fresh:
            code = "resume_failed"
            what = "the Claude Code CLI, started as a new session after the resume failed,"
            advice = "check the CLI's arguments and its installation, then start a new session"
        elif self._respawning:
            code, what = "resume_failed", "the resumed CLI"
            advice = "check that the session's transcript still exists, or start a new session"
        else:
            code, what = "cli_not_started", "the Claude Code CLI"
            advice = "check the CLI's path and arguments"
        message = (
            f"{what} exited ({_describe_exit(event.returncode)}) before it answered"
            f"{_stderr_hint(said)}; {advice}"
        )
        self._fail(code, message, now, out)

    # -------------------------------------------------------------- the watchdog

    def _note_output(self, turn: _Turn, frame: Frame, now: float) -> None:
        """The stall clock restarts with every frame; a tool call pauses it until its result.

        This runs for every frame of a turn, so it only records: the deadline is
        computed when asked for, and the tool bookkeeping runs only when the stall
        watchdog is on (and then only for `assistant` and `user` frames).
        """
        turn.last_output = now
        if self.policy.stall_timeout is None:
            return
        kind = frame.type
        if kind == "assistant":
            turn.tools.update(_block_ids(frame, "tool_use", "id"))
        elif kind == "user" and turn.tools:
            turn.tools.difference_update(_block_ids(frame, "tool_result", "tool_use_id"))

    def _watchdog_deadline(self) -> float | None:
        """When the running turn is cancelled by the watchdog, if nothing happens first."""
        turn = self._running
        if turn is None or turn.started is None:
            return None
        policy = self.policy
        deadline: float | None = None
        if policy.turn_timeout is not None:
            deadline = turn.started + policy.turn_timeout
        if policy.stall_timeout is not None and not turn.tools:
            since = turn.last_output if turn.last_output is not None else turn.started
            stall = since + policy.stall_timeout
            deadline = stall if deadline is None else min(deadline, stall)
        return deadline

    def _check_watchdog(self, now: float, out: list[Action]) -> None:
        deadline = self._watchdog_deadline()
        turn = self._running
        if deadline is None or now < deadline or turn is None or turn.started is None:
            return
        timeout = self.policy.turn_timeout
        trigger: CancelTrigger = (
            "turn_timeout" if timeout is not None and now >= turn.started + timeout else "stall"
        )
        self._begin_cancel(now, out, trigger=trigger)

    def _cancelled_message(self) -> str:
        """What a cancelled turn's synthesized result says: which limit ended it, if any."""
        esc = self._escalation
        trigger = esc.trigger if esc is not None else "request"
        if trigger == "stall":
            return (
                f"the turn was cancelled: the Claude Code CLI wrote nothing for "
                f"{self.policy.stall_timeout:g} s while no tool was running "
                "(stall_timeout, --stall-timeout)"
            )
        if trigger == "turn_timeout":
            return (
                f"the turn was cancelled: it ran longer than its limit of "
                f"{self.policy.turn_timeout:g} s (turn_timeout, --turn-timeout)"
            )
        return "the turn was cancelled"

    # -------------------------------------------------------------- spawning

    def _spawn(
        self, args: Sequence[str], now: float, *, respawn: bool, fresh: bool = False
    ) -> list[Action]:
        """Start a CLI; a respawned one must answer a control request before it is ready.

        `fresh`: started without `--resume`, because resuming failed.
        """
        out: list[Action] = [Spawn(tuple(args))]
        self._alive, self._proven, self._initialized = True, False, False
        self._respawning = respawn
        self._starting_fresh = fresh
        self._resume_errors = []  # only what this CLI says counts
        if respawn:
            esc = self._escalation
            assert esc is not None
            esc.deadline = now + self.policy.ready_timeout
            self._step("started_fresh" if fresh else "respawned", now)
            requests = [
                protocol.with_request_id(frame, self._own_id("replay"))
                for frame in self._session_requests.values()
            ] or [protocol.control_request(self._own_id("probe"), PROBE_SUBTYPE)]
            for frame in requests:
                self._awaiting.add(frame.data["request_id"])
                out.append(WriteToCli(frame))
        return out

    # -------------------------------------------------------------- the queue

    def _pump(self, now: float, out: list[Action]) -> None:
        """Moves the session on once nothing blocks it: ends a finished respawn, forwards
        held control frames, starts the next turn, and starts closing when due."""
        esc = self._escalation
        if esc is not None and esc.rung is Rung.RESPAWN and self.ready:
            self._finish_cancel(now, out, respawned=True)
        if self._escalation is not None or not self.ready or self.finished:
            return
        # Held control frames first, in order: the CLI handles control requests at once
        # even while turns wait, so none of them must wait behind a queued turn.
        turns: deque[_Turn | Frame] = deque()
        for item in self._queue:
            if isinstance(item, Frame):
                self._forward_control(item, out)
            else:
                turns.append(item)
        self._queue = turns
        while self._running is None and self._queue:
            turn = self._queue.popleft()
            assert isinstance(turn, _Turn)
            if turn.invalid is not None:  # its error was said when it came
                out.append(Deliver(self._result("invalid_content", turn.invalid), turn.id))
                continue
            turn.started = now
            self._running = turn
            self._initialized = False  # the CLI prints init at the start of every turn
            out.append(MarkTurnStart())
            out.append(WriteToCli(turn.frame))
            break
        closing = self._closing
        if closing and not self._queue and (self._running is None or not closing.drain):
            self._escalation = _Escalation(
                purpose=Purpose.CLOSE,
                started=now,
                rung=Rung.EOF,
                deadline=now + self.policy.exit_timeout,
            )
            out.append(CloseCliInput())

    def _start_deadline(self) -> float | None:
        """When the running turn counts as never started, if the CLI stays silent."""
        turn = self._running
        if turn is None or turn.heard or turn.not_started or turn.started is None:
            return None
        return turn.started + self.policy.start_timeout

    def _on_start_timeout(self, now: float, out: list[Action]) -> None:
        """The CLI was sent a turn and wrote nothing since: a turn it will never start (the
        real CLI does that with content it cannot read) must not hold the queue forever."""
        deadline = self._start_deadline()
        turn = self._running
        if deadline is None or now < deadline or turn is None:
            return
        turn.not_started = True
        self._error(
            out,
            "turn_not_started",
            f"the Claude Code CLI wrote nothing for {self.policy.start_timeout:g} s after turn "
            f"{turn.id} was sent to it (it starts a turn with system/init within about a "
            "second); the supervisor cancels the turn so the turns behind it can run. Send it "
            "again; if the CLI is just slow to start turns (many MCP servers?), raise "
            "start_timeout (--start-timeout)",
        )
        self._begin_cancel(now, out, trigger="start_timeout")

    def _drop_queued(self, why: str, out: list[Action], reason: str = "cancelled") -> None:
        for item in [item for item in self._queue if isinstance(item, _Turn)]:
            self._queue.remove(item)
            out.append(Deliver(self._result(reason, why), item.id))

    # --------------------------------------------------------------- failure

    def _fail(self, code: str, message: str, now: float, out: list[Action]) -> None:
        """The session cannot go on: say why, and give every waiting turn its result."""
        if self._failed is not None:
            return
        self._failed = message
        self._error(out, code, message)
        if self._running is not None:
            out.append(Deliver(self._result("supervisor_failed", message), self._running.id))
            self._running = None
        self._drop_queued(message, out, "supervisor_failed")
        for held in self._queue:  # control frames held for the CLI: they get an answer too
            if isinstance(held, Frame) and held.type == "control_request":
                request_id = held.data.get("request_id")
                answer = (
                    protocol.control_success(request_id)
                    if _is_interrupt(held)
                    else protocol.control_error(request_id, message)
                )
                out.append(Deliver(answer, None))
        self._queue.clear()
        esc, self._escalation = self._escalation, None
        self._answer_pending(out, message)
        if esc is not None and esc.purpose is Purpose.CANCEL:
            out.append(CancelDone(None))
            notice = protocol.supervisor_cancel(
                None, self.session_id, esc.request_ids, trigger=esc.trigger
            )
            out.append(Deliver(notice, None))
        if self._alive:
            out.append(KillTree())
        else:
            self._finish(1, out)

    def _result(self, reason: str, message: str, duration_ms: float = 0) -> Frame:
        """A result written by the supervisor, for a turn whose own never came."""
        return protocol.synthesized_result(
            session_id=self.session_id,
            duration_ms=duration_ms,
            terminal_reason=reason,
            message=message,
        )

    def _finish(self, exit_code: int, out: list[Action]) -> None:
        if not self.finished:
            self.finished = True
            self._escalation = None
            out.append(Finished(exit_code))

    # ---------------------------------------------------------------- helpers

    def _error(self, out: list[Action], code: str, message: str, **details: Any) -> None:
        error = protocol.supervisor_error(code, message, **details)
        out.append(Deliver(error, self.running_turn))

    def _own_id(self, what: str) -> str:
        return f"{protocol.OWN_ID_PREFIX}{what}-{next(self._ids)}"

    def _step(self, name: str, now: float) -> None:
        if self._escalation is not None:
            self._step_on(self._escalation, name, now)

    def _step_on(self, esc: _Escalation, name: str, now: float) -> None:
        esc.steps.append(Step(name, _ms(now - esc.started)))


def _request_id(data: dict[str, Any]) -> str | int | None:
    """A usable request id (a string or an integer), or None."""
    value = data.get("request_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value


def _is_interrupt(frame: Frame) -> bool:
    request = frame.data.get("request")
    return isinstance(request, dict) and request.get("subtype") == "interrupt"


def _block_ids(frame: Frame, block_type: str, key: str) -> list[str]:
    """The ids of a message's content blocks of one type (tool calls, tool results)."""
    message = frame.data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [
        block[key]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == block_type
        and isinstance(block.get(key), str)
    ]


def _earliest(*deadlines: float | None) -> float | None:
    return min((d for d in deadlines if d is not None), default=None)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def exit_code(returncode: int | None) -> int:
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _stderr_hint(tail: str) -> str:
    tail = tail.strip()
    return f"; it said: {tail[-500:]}" if tail else ""
