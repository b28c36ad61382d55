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
from ._args import resume_args
from ._framing import Frame, FramingError
from ._policy import EscalationPolicy
from ._report import CancelPath, CancelReport, Step

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
        return self._escalation.deadline if self._escalation else None

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
            case Cancel(request_id, cancel_queued):
                self._on_cancel(request_id, cancel_queued, now, out)
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
            message = (
                f"cannot restart the Claude Code CLI to resume session {self.session_id}: "
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
            content = frame.data.get("content")
            if not isinstance(content, str | list):
                self._error(
                    out,
                    "invalid_supersede_turn",
                    'supersede_turn needs "content": a string or a list of content blocks',
                )
                return
            self._on_supersede(protocol.user_message(content), now, out)
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

    def _enqueue(self, frame: Frame, out: list[Action], *, front: bool) -> None:
        turn = _Turn(self.next_turn_id, frame)
        self.next_turn_id += 1
        if self._failed is not None:
            out.append(Deliver(self._result("supervisor_failed", self._failed), turn.id))
        elif self._closing is not None:
            closing = "the session is closing: no new turn can start"
            out.append(Deliver(self._result("cancelled", closing), turn.id))
        elif front:
            self._queue.appendleft(turn)
        else:
            self._queue.append(turn)

    # ---------------------------------------------------------------- cancels

    def _on_cancel(
        self, request_id: Any, cancel_queued: bool, now: float, out: list[Action]
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
                        None, self.session_id, [] if request_id is None else [request_id]
                    ),
                    None,
                )
            )
            return
        self._begin_cancel(now, out)
        if request_id is not None and self._escalation is not None:
            self._escalation.request_ids.append(request_id)

    def _on_supersede(self, frame: Frame, now: float, out: list[Action]) -> None:
        self._enqueue(frame, out, front=True)
        if self._running is not None and self._escalation is None:
            self._begin_cancel(now, out)

    def _begin_cancel(self, now: float, out: list[Action], interrupt: Frame | None = None) -> None:
        """First rung: the in-band interrupt (sent once the CLI can act on it)."""
        esc = _Escalation(
            purpose=Purpose.CANCEL,
            started=now,
            rung=Rung.INTERRUPT,
            deadline=now + self.policy.interrupt_timeout,
        )
        self._escalation = esc
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

    def _on_deadline(self, now: float, out: list[Action]) -> None:
        esc = self._escalation
        if esc is None or esc.deadline is None or now < esc.deadline:
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
        )
        out.append(CancelDone(report))
        out.append(
            Deliver(protocol.supervisor_cancel(report, self.session_id, esc.request_ids), None)
        )

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
        if kind == "result" and turn is None:
            # Not relayed as a result: a parent counts one result per turn. (The real CLI
            # writes one when a --resume fails, before it exits.)
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
            self._finish(_exit_code(event.returncode), out)
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
        if purpose is Purpose.CANCEL:
            reason, message = "cancelled", "the turn was cancelled"
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

    def _fail_to_start(self, event: CliExited, now: float, out: list[Action]) -> None:
        if self._respawning:
            code, what = "resume_failed", "the resumed CLI"
            advice = "check that the session's transcript still exists, or start a new session"
        else:
            code, what = "cli_not_started", "the Claude Code CLI"
            advice = "check the CLI's path and arguments"
        message = (
            f"{what} exited ({_describe_exit(event.returncode)}) before it answered"
            f"{_stderr_hint(event.stderr_tail)}; {advice}"
        )
        self._fail(code, message, now, out)

    # -------------------------------------------------------------- spawning

    def _spawn(self, args: Sequence[str], now: float, *, respawn: bool) -> list[Action]:
        """Start a CLI; a respawned one must answer a control request before it is ready."""
        out: list[Action] = [Spawn(tuple(args))]
        self._alive, self._proven, self._initialized = True, False, False
        self._respawning = respawn
        if respawn:
            esc = self._escalation
            assert esc is not None
            esc.deadline = now + self.policy.ready_timeout
            self._step("respawned", now)
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
        if self._running is None and self._queue:
            turn = self._queue.popleft()
            assert isinstance(turn, _Turn)
            turn.started = now
            self._running = turn
            self._initialized = False  # the CLI prints init at the start of every turn
            out.append(MarkTurnStart())
            out.append(WriteToCli(turn.frame))
        closing = self._closing
        if closing and not self._queue and (self._running is None or not closing.drain):
            self._escalation = _Escalation(
                purpose=Purpose.CLOSE,
                started=now,
                rung=Rung.EOF,
                deadline=now + self.policy.exit_timeout,
            )
            out.append(CloseCliInput())

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
            notice = protocol.supervisor_cancel(None, self.session_id, esc.request_ids)
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


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _exit_code(returncode: int | None) -> int:
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
