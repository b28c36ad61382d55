"""The session state machine: everything that decides what happens, and no I/O.

It reads top to bottom as: the events that come in, the actions that go out, the ladder
(a table saying, for each phase of a cancel or a close, what entering it does, which
deadline runs, and where each trigger leads), and the class that applies them.

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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from . import _protocol as protocol
from ._args import resume_args, without_session_flags
from ._framing import Frame, FramingError
from ._policy import EscalationPolicy
from ._protocol import Problem, problem
from ._report import CancelPath, CancelReport, CancelTrigger, Step

# ----------------------------------------------------------------------------- events


@attrs.frozen
class FromUser:
    """A frame from the supervisor's user for the CLI: a user turn, or any other frame.

    Frames that ask the supervisor for something become their own events first
    (`_inbound.user_event`): `Cancel`, `Supersede`, `ControlRequest`, `Rejected`.
    """

    frame: Frame


@attrs.frozen
class ControlRequest:
    """A control request from the user, its id and subtype already read."""

    frame: Frame
    request_id: str | int
    subtype: str | None


@attrs.frozen
class Rejected:
    """A frame from the user that asks for something impossible: it is only answered."""

    problem: Problem


@attrs.frozen
class Cancel:
    """Cancel the running turn (the library's `cancel()`, the executable's SIGINT)."""

    request_id: Any = None
    cancel_queued: bool = False
    trigger: CancelTrigger = "request"


@attrs.frozen
class InterruptSignal:
    """The executable's SIGINT: cancel the running turn; while no turn runs, nothing."""


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
class FromCliLines:
    """Frames the CLI wrote, in order, as their lines (without newlines): what one read
    of its output brought, taken in one event.

    Each line's head said its type (`kinds`, from `cheap_type`); none is parsed here.
    Most frames of a flood decide nothing (they are only relayed to the user), so the
    machine looks only at those whose type it acts on (see `_LOOKED_AT`), each as if it
    came as `FromCli`, and hands each run of the others on whole (`DeliverLines`). The
    outcome is the same as feeding the frames one `FromCli` at a time, at `now`.
    """

    lines: Sequence[bytes]
    kinds: Sequence[str]


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
    | ControlRequest
    | Rejected
    | InterruptSignal
    | Cancel
    | Supersede
    | EndOfInput
    | Terminate
    | FromCli
    | FromCliLines
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
    """Send `signum` to the CLI process (not to its tools)."""

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
class TurnQueued:
    """A user turn was given its id (turns are numbered from 1 in arrival order).

    Comes before any action about that turn, so a caller can wait for it.
    """

    turn: int


@attrs.frozen
class Deliver:
    """A frame for the user, belonging to `turn` (None: to no turn in particular)."""

    frame: Frame
    turn: int | None


@attrs.frozen
class DeliverLines:
    """Frames for the user, belonging to `turn`, as the CLI wrote them: their lines
    (without newlines), and each one's type. Comes of `FromCliLines`: to be relayed
    byte for byte, in order, as if each were a `Deliver` of its own."""

    lines: Sequence[bytes]
    kinds: Sequence[str]
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
    TurnQueued
    | Spawn
    | WriteToCli
    | CloseCliInput
    | SignalCli
    | KillTree
    | MarkTurnStart
    | KillTurnProcesses
    | Deliver
    | DeliverLines
    | CancelDone
    | Finished
    | CheckCliStopped
)

# ----------------------------------------------------------------------------- the ladder

#: A phase of a cancel or a close: a key of the ladder (strings, so that a ladder can be
#: extended without touching this file).
Phase = str

INTERRUPT: Phase = "interrupt"  # the in-band interrupt is sent (or held until the CLI's init)
EOF = "eof"  # closing: stdin is closed, the CLI should exit on its own
SIGINT: Phase = "sigint"
KILL: Phase = "kill"  # the CLI's whole tree is being killed
CLEANUP: Phase = "cleanup"  # the turn ended in-band; what its tools left is being killed
RESPAWN: Phase = "respawn"  # the CLI is gone; the resumed one must answer to be ready
FRESH: Phase = "fresh"  # the resume failed; the CLI started as a new session must answer


class Trigger(enum.Enum):
    """What moves the ladder on."""

    RESULT = "result"  # the running turn's result came
    EXITED = "exited"  # the CLI exited (and its helper killed what was left of its tree)
    DEADLINE = "deadline"  # the phase's deadline passed
    UNANSWERED = "unanswered"  # the phase's `answer_timeout` passed: the CLI did not even
    #                            acknowledge the interrupt, so its event loop is not running
    STOPPED = "stopped"  # the CLI is stopped (SIGSTOP, a debugger): it acts on nothing
    TURN_KILLED = "turn_killed"  # what the turn's tools left is gone
    READY = "ready"  # a respawned CLI answered: it reads its input


class End(enum.Enum):
    """Where a ladder can end."""

    DONE = "done"  # the session goes on: a cancel is reported, a recovery is over
    CLI_GONE = "cli_gone"  # the CLI exited: a close is over; anything else respawns it
    TREE_NOT_KILLED = "tree_not_killed"  # the session fails: processes outlived SIGKILL
    RESUME_NOT_ANSWERED = "resume_not_answered"  # fails: the respawned CLI stays silent
    FRESH_START_FAILED = "fresh_start_failed"  # fails: not even a new session would start


class Entry(enum.Enum):
    """What entering a phase does, where it needs the machine's state (else an action)."""

    SEND_INTERRUPT = "send_interrupt"  # ours, or the user's own interrupt
    SPAWN_RESUMED = "spawn_resumed"  # the CLI again with --resume, told what it must know
    SPAWN_FRESH = "spawn_fresh"  # the CLI again as a new session, the user told why


@attrs.frozen
class Go:
    """Where a trigger leads: a phase, an end, or nowhere (None), recording `step`."""

    to: Phase | End | None
    step: str | None = None


@attrs.frozen
class Rung:
    """One row of the ladder."""

    #: What entering the phase does: an action the driver carries out, or an `Entry`.
    enter: Entry | Action
    #: The `EscalationPolicy` field bounding the phase (from its entry); then `DEADLINE`.
    timeout: str
    #: Where each trigger leads; a trigger not listed changes nothing.
    on: Mapping[Trigger, Go]
    #: The step the report records on entry.
    step: str | None = None
    #: The cancel report's `path` from this phase on (None: unchanged).
    path: CancelPath | None = None
    #: The `EscalationPolicy` field bounding the wait for the interrupt's acknowledgement
    #: (from when it is sent); then `UNANSWERED`.
    answer_timeout: str | None = None
    #: Whether the CLI still takes control frames: if not, they wait for the ladder's end.
    takes_control: bool = False


#: The cancel ladder and the close, as data. A cancel enters at `INTERRUPT`, a graceful
#: close at `EOF`, a stop (`Terminate`) at `KILL`, a crash's recovery at `RESPAWN`. Steps
#: recorded on entry: interrupt_sent (when the interrupt is really written), sigint_sent,
#: kill_sent, respawned, started_fresh; `ready` when a cancel ends (`End.DONE`).
LADDER: Mapping[Phase, Rung] = {
    INTERRUPT: Rung(
        enter=Entry.SEND_INTERRUPT,
        timeout="interrupt_timeout",
        answer_timeout="interrupt_ack_timeout",
        path="interrupt",
        takes_control=True,
        on={
            Trigger.RESULT: Go(CLEANUP, "result"),
            Trigger.DEADLINE: Go(SIGINT),
            Trigger.UNANSWERED: Go(KILL),  # SIGINT is handled on the same stuck loop
            Trigger.STOPPED: Go(KILL, "cli_stopped"),
            Trigger.EXITED: Go(End.CLI_GONE, "exited"),
        },
    ),
    EOF: Rung(
        enter=CloseCliInput(),
        timeout="exit_timeout",
        takes_control=True,
        on={
            Trigger.RESULT: Go(None, "result"),
            Trigger.DEADLINE: Go(SIGINT),
            Trigger.EXITED: Go(End.CLI_GONE, "exited"),
        },
    ),
    SIGINT: Rung(
        enter=SignalCli(signal.SIGINT),
        timeout="sigint_timeout",
        step="sigint_sent",
        path="sigint",
        on={
            Trigger.RESULT: Go(None, "result"),
            Trigger.DEADLINE: Go(KILL),
            Trigger.STOPPED: Go(KILL, "cli_stopped"),
            Trigger.EXITED: Go(End.CLI_GONE, "exited"),
        },
    ),
    KILL: Rung(
        enter=KillTree(),
        timeout="reap_timeout",
        step="kill_sent",
        path="kill",
        on={
            Trigger.RESULT: Go(None, "result"),
            Trigger.DEADLINE: Go(End.TREE_NOT_KILLED),
            Trigger.EXITED: Go(End.CLI_GONE, "tree_killed"),
        },
    ),
    CLEANUP: Rung(
        enter=KillTurnProcesses(),
        timeout="reap_timeout",
        on={
            Trigger.TURN_KILLED: Go(End.DONE, "turn_processes_killed"),
            Trigger.DEADLINE: Go(End.TREE_NOT_KILLED),
            Trigger.EXITED: Go(End.CLI_GONE, "exited"),
        },
    ),
    RESPAWN: Rung(
        enter=Entry.SPAWN_RESUMED,
        timeout="ready_timeout",
        step="respawned",
        on={
            Trigger.READY: Go(End.DONE),
            Trigger.DEADLINE: Go(End.RESUME_NOT_ANSWERED),
            Trigger.EXITED: Go(FRESH, "exited"),  # the transcript cannot be resumed
        },
    ),
    FRESH: Rung(
        enter=Entry.SPAWN_FRESH,
        timeout="ready_timeout",
        step="started_fresh",
        on={
            Trigger.READY: Go(End.DONE),
            Trigger.DEADLINE: Go(End.RESUME_NOT_ANSWERED),
            Trigger.EXITED: Go(End.FRESH_START_FAILED, "exited"),
        },
    ),
}

_SPAWNS = (Entry.SPAWN_RESUMED, Entry.SPAWN_FRESH)

# ----------------------------------------------------------------------------- state

#: What a respawned CLI is asked when the user sent no session-level control request to
#: replay: its answer proves it reads its input. An interrupt while no turn runs is
#: answered and does nothing, on every CLI version tried; 2.0.x ignores unknown
#: subtypes without a word, so a made-up "ping" would never be answered there.
PROBE_SUBTYPE = "interrupt"


class Purpose(enum.Enum):
    """Why the ladder is being climbed."""

    CANCEL = "cancel"  # the user cancelled the running turn: ends with a CancelReport
    CLOSE = "close"  # the session is closing: ends when the CLI has exited
    RECOVER = "recover"  # the CLI died on its own: ends when the respawned CLI is ready


@attrs.define
class _Turn:
    id: int
    frame: Frame
    started: float | None = None  # when it was forwarded to the CLI
    #: What is wrong with its content: such a turn is never forwarded; it gets its result
    #: when it reaches the head of the queue, so results keep the order of the frames.
    invalid: Problem | None = None
    heard: bool = False  # the CLI wrote a frame since the turn was forwarded
    not_started: bool = False  # cancelled because the CLI stayed silent (start_timeout)
    #: For the stall watchdog: when the CLI last wrote during this turn, and the tool
    #: calls (`tool_use` ids) it announced whose `tool_result` has not come yet.
    last_output: float | None = None
    tools: set[str] = attrs.Factory(set)

    def note_output(self, frame: Frame, now: float, *, tools: bool) -> None:
        """The stall clock restarts with every frame; a tool call pauses it until its result.

        This runs for every frame of a turn, so it only records: the deadline is
        computed when asked for, and the tool bookkeeping runs only when the stall
        watchdog is on (`tools`), and then only for `assistant` and `user` frames.
        """
        self.last_output = now
        if not tools:
            return
        kind = frame.type
        if kind == "assistant":
            self.tools.update(_block_ids(frame, "tool_use", "id"))
        elif kind == "user" and self.tools:
            self.tools.difference_update(_block_ids(frame, "tool_result", "tool_use_id"))

    def start_deadline(self, policy: EscalationPolicy) -> float | None:
        """When the turn counts as never started, if the CLI stays silent."""
        if self.heard or self.not_started or self.started is None:
            return None
        return self.started + policy.start_timeout

    def watchdog_deadline(self, policy: EscalationPolicy) -> float | None:
        """When the turn is cancelled by the watchdog, if nothing happens first."""
        if self.started is None:
            return None
        deadline: float | None = None
        if policy.turn_timeout is not None:
            deadline = self.started + policy.turn_timeout
        if policy.stall_timeout is not None and not self.tools:
            since = self.last_output if self.last_output is not None else self.started
            deadline = _earliest(deadline, since + policy.stall_timeout)
        return deadline

    def watchdog_trigger(self, policy: EscalationPolicy, now: float) -> CancelTrigger | None:
        """What cancels the turn at `now`, if its watchdog deadline passed: the turn
        timeout wins when both did."""
        deadline = self.watchdog_deadline(policy)
        if deadline is None or now < deadline or self.started is None:
            return None
        timeout = policy.turn_timeout
        return "turn_timeout" if timeout is not None and now >= self.started + timeout else "stall"


@attrs.define
class _Cli:
    """One CLI process, from its spawn to its exit: what is known only about it."""

    proven: bool = False  # it wrote a frame: it started properly
    initialized: bool = False  # this turn's system/init came (interrupts work from then)
    awaiting: set[str] = attrs.Factory(set)  # our requests it must answer to be ready
    #: The user's interrupts the supervisor answered itself: this CLI's late answer to
    #: one of them is dropped, so the user gets exactly one.
    answered: set[Any] = attrs.Factory(set)
    resume_errors: list[str] = attrs.Factory(list)  # what a failing resume said


@attrs.define
class _Escalation:
    """A cancel, a close or a recovery in progress: where it is, and its timeline."""

    purpose: Purpose
    started: float
    trigger: CancelTrigger = "request"
    phase: Phase = INTERRUPT
    entered: float = 0.0  # when `phase` was entered: its deadline runs from then
    steps: list[Step] = attrs.Factory(list)
    path: CancelPath = "interrupt"
    killed: int = 0
    request_ids: list[Any] = attrs.Factory(list)
    #: The user's own interrupt, sent in place of ours; then the id of the one sent.
    user_interrupt: Frame | None = None
    interrupt_id: Any = None
    #: An interrupt held until the CLI's init: one sent before it is ignored by the CLI.
    pending_interrupt: Frame | None = None
    interrupt_sent_at: float | None = None
    acknowledged: bool = False  # the CLI answered the interrupt: its loop runs
    #: The CLI's last exit, and what it said in a result first (a failing --resume
    #: writes one): for the next phase to explain.
    exit: CliExited | None = None
    said: list[str] = attrs.Factory(list)


class SessionMachine:
    """The supervisor's decisions for one session. See the module docstring."""

    def __init__(
        self,
        args: Sequence[str],
        policy: EscalationPolicy | None = None,
        *,
        ladder: Mapping[Phase, Rung] = LADDER,
    ) -> None:
        self.args = tuple(args)
        self.policy = policy or EscalationPolicy()
        self.ladder = ladder
        self.session_id: str | None = None
        #: Why the session cannot go on, once it cannot.
        self.failure: Problem | None = None
        self.finished = False
        #: How many times the CLI could not resume and went on as a new session.
        self.sessions_lost = 0

        self._turn_ids = itertools.count(1)
        self._own_ids = itertools.count(1)
        self._queue: deque[_Turn | Frame] = deque()  # user turns and held control frames
        self._running: _Turn | None = None
        self._cli: _Cli | None = None  # the CLI process, from spawn to exit
        self._escalation: _Escalation | None = None
        self._closing: EndOfInput | None = None
        # What a respawned CLI must be told again, by subtype (the latest of each).
        self._session_requests: dict[str, Frame] = {}
        # The user's control requests the CLI has not answered yet, by request id.
        self._user_requests: dict[Any, Frame] = {}

    # ------------------------------------------------------------------ public

    @property
    def deadline(self) -> float | None:
        """When to feed `DeadlinePassed` if no other event comes first."""
        esc = self._escalation
        if esc is not None:
            return self._phase_deadline(esc)[0]
        turn = self._running
        if turn is None:
            return None
        return _earliest(turn.start_deadline(self.policy), turn.watchdog_deadline(self.policy))

    @property
    def running_turn(self) -> int | None:
        return self._running.id if self._running else None

    @property
    def queued_turns(self) -> list[int]:
        return [item.id for item in self._queue if isinstance(item, _Turn)]

    @property
    def ready(self) -> bool:
        return self._cli is not None and not self._respawning and self.failure is None

    @property
    def cancelling(self) -> bool:
        return self._escalation is not None and self._escalation.purpose is Purpose.CANCEL

    @property
    def escalating(self) -> bool:
        """A cancel, a close or a recovery is under way: the watchdogs wait for its end."""
        return self._escalation is not None

    @property
    def _respawning(self) -> bool:
        esc = self._escalation
        return esc is not None and self.ladder[esc.phase].enter in _SPAWNS

    def start(self, now: float) -> list[Action]:
        """The first actions of a session: spawn the CLI with the user's arguments."""
        return self._spawn(self.args, now, replay=False)

    def handle(self, event: Event, now: float) -> list[Action]:
        if self.finished:
            return []
        out: list[Action] = []
        match event:
            case FromUser(frame):
                self._on_user_frame(frame, out)
            case ControlRequest():
                self._on_user_control_request(event, now, out)
            case Rejected(why):
                self._error(out, why)
            case InterruptSignal():
                if self._running is not None:  # the SIGINT contract: idle, it does nothing
                    self._on_cancel(None, False, now, out, "sigint")
            case Cancel(request_id, cancel_queued, trigger):
                self._on_cancel(request_id, cancel_queued, now, out, trigger)
            case Supersede(frame):
                self._on_supersede(frame, now, out)
            case EndOfInput():
                if self._closing is None or not event.drain:  # "now" beats "drain"
                    self._closing = event
                if not event.drain:
                    self._drop_queued(problem("cancelled", "closed_before_start"), out)
            case Terminate():
                self._on_terminate(now, out)
            case FromCliLines(lines, kinds):
                self._on_cli_lines(lines, kinds, now, out)
            case FromCli(frame):
                self._on_cli_frame(frame, now, out)
            case CliSpawned():
                pass
            case SpawnFailed(message):
                self._on_spawn_failed(message, now, out)
            case CliExited():
                self._on_exit(event, now, out)
            case TurnProcessesKilled(count):
                if self._escalation is not None and Trigger.TURN_KILLED in self._rung.on:
                    self._escalation.killed += count
                    self._fire(Trigger.TURN_KILLED, now, out)
            case DeadlinePassed():
                self._on_deadline(now, out)
            case BadLine(source, error):
                self._on_bad_line(source, error, out)
            case CliStopped():
                self._fire(Trigger.STOPPED, now, out)
        self._pump(now, out)
        return out

    # ------------------------------------------------------------ the ladder

    @property
    def _rung(self) -> Rung:
        assert self._escalation is not None
        return self.ladder[self._escalation.phase]

    def _phase_deadline(self, esc: _Escalation) -> tuple[float, Trigger]:
        """When the phase ends by itself, and as what.

        The interrupt's phase has two: its result's, and sooner its acknowledgement's. A
        live CLI acknowledges an interrupt within milliseconds; one that does not has an
        event loop that cannot run, and SIGINT is handled on that same loop.
        """
        rung = self.ladder[esc.phase]
        deadline = esc.entered + getattr(self.policy, rung.timeout)
        if rung.answer_timeout is not None and esc.interrupt_sent_at is not None:
            unanswered = esc.interrupt_sent_at + getattr(self.policy, rung.answer_timeout)
            if not esc.acknowledged and unanswered < deadline:
                return unanswered, Trigger.UNANSWERED
        return deadline, Trigger.DEADLINE

    def _on_deadline(self, now: float, out: list[Action]) -> None:
        esc = self._escalation
        if esc is None:
            self._on_turn_deadline(now, out)
            return
        deadline, trigger = self._phase_deadline(esc)
        if now >= deadline:
            self._fire(trigger, now, out)

    def _fire(self, trigger: Trigger, now: float, out: list[Action]) -> None:
        """Moves the ladder as its table says for `trigger` in the current phase."""
        esc = self._escalation
        if esc is None:
            return
        go = self.ladder[esc.phase].on.get(trigger)
        if go is None:
            return
        if go.step is not None:
            self._step(go.step, now)
        if isinstance(go.to, End):
            self._end(go.to, now, out)
        elif go.to is not None:
            self._enter(go.to, now, out)

    def _enter(self, phase: Phase, now: float, out: list[Action]) -> None:
        esc = self._escalation
        assert esc is not None
        rung = self.ladder[phase]
        esc.phase, esc.entered = phase, now
        esc.pending_interrupt = None  # never sent: it must not reach the next CLI
        if rung.path is not None:
            esc.path = rung.path
        match rung.enter:
            case Entry.SEND_INTERRUPT:
                self._send_interrupt(esc, now, out)
            case Entry.SPAWN_RESUMED:
                out.extend(self._spawn(resume_args(self.args, self.session_id), now, replay=True))
            case Entry.SPAWN_FRESH:
                self._start_fresh(esc, out)
                out.extend(self._spawn(without_session_flags(self.args), now, replay=True))
            case action:
                out.append(action)
        if rung.step is not None:
            self._step(rung.step, now)

    def _end(self, end: End, now: float, out: list[Action]) -> None:
        esc = self._escalation
        assert esc is not None
        if end is End.DONE:
            self._done(esc, now, out)
        elif end is End.CLI_GONE:
            self._after_exit(esc, now, out)
        elif end is End.TREE_NOT_KILLED:
            self._fail(problem("tree_not_killed"), now, out)
        elif end is End.RESUME_NOT_ANSWERED:
            self._fail(
                problem(
                    "resume_failed",
                    "resume_not_answered",
                    timeout=self.policy.ready_timeout,
                    session_id=self.session_id,
                ),
                now,
                out,
            )
        else:
            exited = esc.exit or CliExited(None)
            said = exited.stderr_tail.strip() or "; ".join(esc.said)
            self._fail(
                problem(
                    "resume_failed",
                    "cli_exited_before_answering",
                    returncode=exited.returncode,
                    said=said,
                    fresh=True,
                ),
                now,
                out,
            )

    def _done(self, esc: _Escalation, now: float, out: list[Action]) -> None:
        """The ladder is over and the session goes on; a cancel gets its report."""
        self._escalation = None
        if esc.purpose is not Purpose.CANCEL:
            return
        self._step_on(esc, "ready", now)
        self._answer_pending(out)
        report = CancelReport(
            path=esc.path,
            total_ms=_ms(now - esc.started),
            steps=tuple(esc.steps),
            respawned=self.ladder[esc.phase].enter in _SPAWNS,
            session_id=self.session_id,
            processes_killed=esc.killed,
            trigger=esc.trigger,
        )
        out.append(CancelDone(report))
        notice = protocol.supervisor_cancel(
            report, self.session_id, esc.request_ids, trigger=esc.trigger
        )
        out.append(Deliver(notice, None))

    def _after_exit(self, esc: _Escalation, now: float, out: list[Action]) -> None:
        """The CLI exited during a ladder: its turn and requests are answered; a close
        is over, anything else respawns it."""
        if self._running is not None:
            self._end_running_turn(esc.exit or CliExited(None), esc.purpose, now, out)
        why = self._why_unanswered(esc.purpose)
        self._answer_pending(out, why)
        if esc.purpose is Purpose.CLOSE:
            self._answer_held(why, out)
            self._finish(exit_code(esc.exit.returncode if esc.exit else None), out)
            return
        self._enter(RESPAWN, now, out)

    # ----------------------------------------------------------------- cancels

    def _on_cancel(
        self,
        request_id: Any,
        cancel_queued: bool,
        now: float,
        out: list[Action],
        trigger: CancelTrigger = "request",
    ) -> None:
        if cancel_queued:
            self._drop_queued(problem("cancelled", "cancelled_before_start"), out)
        esc = self._escalation
        if esc is not None and esc.purpose is Purpose.CANCEL:
            if request_id is not None:
                esc.request_ids.append(request_id)
            return  # joins the cancel under way
        if self._running is None or esc is not None:
            out.append(CancelDone(None))
            ids = [] if request_id is None else [request_id]
            notice = protocol.supervisor_cancel(None, self.session_id, ids, trigger=trigger)
            out.append(Deliver(notice, None))
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
        """The ladder from its first phase.

        The driver is asked at once whether the CLI is stopped: if it is, the interrupt
        and SIGINT cannot work and the ladder goes straight to the kill (`CliStopped`).
        """
        self._escalation = _Escalation(
            Purpose.CANCEL, started=now, trigger=trigger, user_interrupt=interrupt
        )
        out.append(CheckCliStopped())
        self._enter(INTERRUPT, now, out)

    def _send_interrupt(self, esc: _Escalation, now: float, out: list[Action]) -> None:
        """Sends the interrupt, or holds it until the CLI's init: one sent before it is
        acknowledged and ignored (the phase's deadline runs from its entry regardless)."""
        interrupt = esc.user_interrupt or protocol.control_request(
            self._own_id("interrupt"), "interrupt"
        )
        esc.interrupt_id = interrupt.data.get("request_id")
        if self._cli is not None and self._cli.initialized:
            self._write_interrupt(esc, interrupt, now, out)
        else:
            esc.pending_interrupt = interrupt

    def _write_interrupt(
        self, esc: _Escalation, interrupt: Frame, now: float, out: list[Action]
    ) -> None:
        out.append(WriteToCli(interrupt))
        esc.interrupt_sent_at = now
        self._step("interrupt_sent", now)

    def _on_terminate(self, now: float, out: list[Action]) -> None:
        self._closing = EndOfInput(drain=False)
        self._drop_queued(problem("cancelled", "stopped_before_start"), out)
        esc = self._escalation
        if self._cli is None or self.failure is not None:
            return  # already finished, or already killing the tree
        if esc is not None and esc.purpose is Purpose.CLOSE and esc.phase == KILL:
            return
        if esc is not None and esc.purpose is Purpose.CANCEL:
            out.append(CancelDone(None))
            notice = protocol.supervisor_cancel(None, self.session_id, esc.request_ids)
            out.append(Deliver(notice, None))
        self._escalation = _Escalation(Purpose.CLOSE, started=now)
        self._enter(KILL, now, out)

    def _answer_pending(self, out: list[Action], failure: str | None = None) -> None:
        """The user's control requests still open get their answer from the supervisor.

        With no `failure`, only interrupts: their turn has ended (by escalation, or by
        finishing), so they succeeded, and an SDK waits for the answer (the official one
        for 60 s). With a `failure` (the CLI died, the session failed), every request:
        interrupts succeed, the others get an error saying what to do. Should the CLI
        answer one of them later, that answer is dropped: one answer per request.
        """
        for request_id, frame in list(self._user_requests.items()):
            if protocol.is_interrupt(frame):
                answer = protocol.control_success(request_id)
            elif failure is not None:
                answer = protocol.control_error(request_id, failure)
            else:
                continue
            del self._user_requests[request_id]
            if self._cli is not None:
                self._cli.answered.add(request_id)
            out.append(Deliver(answer, self.running_turn))

    def _answer_held(self, why: str, out: list[Action]) -> None:
        """Control requests held for a CLI that will not come back get their answer."""
        for held in [item for item in self._queue if isinstance(item, Frame)]:
            self._queue.remove(held)
            if held.type == "control_request":
                request_id = held.data.get("request_id")
                answer = (
                    protocol.control_success(request_id)
                    if protocol.is_interrupt(held)
                    else protocol.control_error(request_id, why)
                )
                out.append(Deliver(answer, None))

    def _why_unanswered(self, purpose: Purpose | None) -> str:
        if self.failure is not None:
            return self.failure.message
        if purpose is Purpose.CLOSE:
            return problem("cli_exited", "unanswered_on_close").message
        return problem("cli_exited", "unanswered_on_restart").message

    # ------------------------------------------------------------- user input

    def _on_user_frame(self, frame: Frame, out: list[Action]) -> None:
        kind = frame.type
        if kind == "user":
            self._enqueue(frame, out, front=False)
        elif kind == "control_response":
            # The user's answer to one of the CLI's requests: only that CLI can use it.
            if self._cli is not None and not self._respawning:
                out.append(WriteToCli(frame))
        else:
            self._forward_or_hold(frame, out)

    def _on_user_control_request(
        self, event: ControlRequest, now: float, out: list[Action]
    ) -> None:
        frame, subtype = event.frame, event.subtype
        esc = self._escalation
        if subtype == "interrupt" and self._running is not None:
            self._user_requests[event.request_id] = frame
            if esc is None:
                self._begin_cancel(now, out, interrupt=frame)
            elif self._rung.enter is Entry.SEND_INTERRUPT and esc.pending_interrupt is None:
                self._forward_control(frame, out)
            # Otherwise it is answered when the cancel under way ends.
            return
        if subtype is not None and subtype in protocol.SESSION_LEVEL_SUBTYPES:
            self._session_requests[subtype] = frame
        self._forward_or_hold(frame, out)

    def _forward_or_hold(self, frame: Frame, out: list[Action]) -> None:
        """Control frames go straight to a healthy CLI; during a cancel they wait their turn."""
        if self.ready and (self._escalation is None or self._rung.takes_control):
            self._forward_control(frame, out)
        else:
            self._queue.append(frame)

    def _forward_control(self, frame: Frame, out: list[Action]) -> None:
        if frame.type == "control_request":
            self._user_requests[frame.data.get("request_id")] = frame
        out.append(WriteToCli(frame))

    def _enqueue(self, frame: Frame, out: list[Action], *, front: bool) -> _Turn:
        turn = _Turn(next(self._turn_ids), frame)
        out.append(TurnQueued(turn.id))
        if self.failure is not None:
            failed = problem("supervisor_failed", failure=self.failure.message)
            out.append(Deliver(self._result(failed), turn.id))
            return turn
        if self._closing is not None:
            out.append(Deliver(self._result(problem("cancelled", "closing")), turn.id))
            return turn
        content = protocol.user_frame_problem(frame)
        if content is not None:
            # The real CLI neither answers nor fails on such content: forwarded, it would
            # hold every turn behind it. Said at once; its result comes in its place.
            turn.invalid = problem("invalid_content", turn=turn.id, problem=content)
            out.append(Deliver(protocol.error_frame(turn.invalid), turn.id))
        if front:
            self._queue.appendleft(turn)
        else:
            self._queue.append(turn)
        return turn

    def _drop_queued(self, why: Problem, out: list[Action]) -> None:
        for item in [item for item in self._queue if isinstance(item, _Turn)]:
            self._queue.remove(item)
            out.append(Deliver(self._result(why), item.id))

    # --------------------------------------------------------------- from CLI

    def _on_cli_lines(
        self, lines: Sequence[bytes], kinds: Sequence[str], now: float, out: list[Action]
    ) -> None:
        """A read's frames: those the machine looks at one by one, as `FromCli` events
        of their own (the queue moved on after each, so the frames after a result
        belong to the next turn, as they would have); each run of the others at once."""
        looked_at = _LOOKED_AT if self.policy.stall_timeout is None else _LOOKED_AT_WITH_TOOLS
        if looked_at.isdisjoint(kinds):  # the usual read: nothing but text to relay
            self._relay_lines(lines, kinds, now, out)
            return
        start = 0
        for index, kind in enumerate(kinds):
            if kind not in looked_at:
                continue
            if start < index:
                self._relay_lines(lines[start:index], kinds[start:index], now, out)
            self._on_cli_frame(Frame(raw=lines[index], head_type=kind), now, out)
            self._pump(now, out)
            if self.finished:
                return
            start = index + 1
        if start < len(lines):
            self._relay_lines(lines[start:], kinds[start:], now, out)

    def _relay_lines(
        self, lines: Sequence[bytes], kinds: Sequence[str], now: float, out: list[Action]
    ) -> None:
        """What `_on_cli_frame` does for frames whose type it does not look at, once for
        a run of them: the CLI is alive and the running turn heard from, and they go on."""
        if self._cli is not None:
            self._cli.proven = True
        turn = self._running
        if turn is not None:
            turn.last_output = now  # `note_output`, without the tools (not in the run)
            turn.heard = True
        out.append(DeliverLines(lines, kinds, turn.id if turn is not None else None))

    def _on_cli_frame(self, frame: Frame, now: float, out: list[Action]) -> None:
        cli = self._cli
        if cli is not None:
            cli.proven = True
        if self._running is not None:
            self._running.note_output(frame, now, tools=self.policy.stall_timeout is not None)
        kind = frame.type
        # Most frames are only relayed and stay unparsed (`Frame.data` is lazy): the
        # session id is read where the CLI says it first (init) and last (result).
        if kind in ("system", "result") or frame.parsed:
            session_id = frame.data.get("session_id")
            if isinstance(session_id, str) and session_id:
                self.session_id = session_id
        esc = self._escalation
        if kind == "control_response":
            if self._on_control_response(frame, now, out):
                return
        elif kind == "system" and frame.subtype == "init":
            if cli is not None:
                cli.initialized = True
            if esc is not None and esc.pending_interrupt is not None:
                self._write_interrupt(esc, esc.pending_interrupt, now, out)
                esc.pending_interrupt = None
        turn = self._running
        if turn is not None and kind != "control_response":
            turn.heard = True  # the CLI took the turn up: the start timeout is over
        if kind == "result" and turn is None and self._respawning:
            # The real CLI writes one when a --resume fails, before it exits: its errors
            # explain the failure (see `_start_fresh`), and it belongs to no turn.
            errors = frame.data.get("errors")
            if isinstance(errors, list) and cli is not None:
                cli.resume_errors += [str(e) for e in errors]
            return
        if kind == "result" and turn is None:
            # Not relayed as a result: a parent counts one result per turn.
            self._error(out, problem("cli_unexpected_result"), frame=frame.data)
            return
        out.append(Deliver(frame, turn.id if turn else None))
        if kind == "result" and turn is not None:
            self._running = None
            self._fire(Trigger.RESULT, now, out)

    def _on_control_response(self, frame: Frame, now: float, out: list[Action]) -> bool:
        """Handles an answer; True when it was ours and must not reach the user."""
        response = frame.data.get("response")
        request_id = protocol.request_id_of(response) if isinstance(response, dict) else None
        if request_id is None:
            return False  # nothing of ours can be answered without an id: relay it
        esc, cli = self._escalation, self._cli
        if esc is not None and request_id == esc.interrupt_id:
            self._step("interrupt_answered", now)
            esc.acknowledged = True
        if cli is not None and isinstance(request_id, str) and request_id in cli.awaiting:
            cli.awaiting.discard(request_id)
            if not cli.awaiting:
                self._fire(Trigger.READY, now, out)
            return True
        if isinstance(request_id, str) and request_id.startswith(protocol.OWN_ID_PREFIX):
            return True
        if cli is not None and request_id in cli.answered:
            cli.answered.discard(request_id)
            return True  # already answered by the supervisor
        self._user_requests.pop(request_id, None)
        return False

    def _on_exit(self, event: CliExited, now: float, out: list[Action]) -> None:
        cli, self._cli = self._cli, None
        esc = self._escalation
        if self.failure is not None:
            self._finish(1, out)  # the tree of a failed session is gone
            return
        if esc is not None:
            esc.killed += event.processes_killed
            esc.exit = event
            esc.said = cli.resume_errors if cli is not None else []
            self._fire(Trigger.EXITED, now, out)
            return
        if cli is not None and not cli.proven:
            said = event.stderr_tail.strip()
            self._fail(
                problem(
                    "cli_not_started",
                    "cli_exited_before_answering",
                    returncode=event.returncode,
                    said=said,
                ),
                now,
                out,
            )
            return
        # A crash: the turn gets its result, the CLI is restarted with --resume.
        if self._running is not None:
            self._end_running_turn(event, None, now, out)
        self._answer_pending(out, self._why_unanswered(None))
        self._error(
            out,
            problem("cli_exited", returncode=event.returncode, stderr=event.stderr_tail),
        )
        self._escalation = _Escalation(Purpose.RECOVER, started=now, exit=event)
        self._enter(RESPAWN, now, out)

    def _end_running_turn(
        self, event: CliExited, purpose: Purpose | None, now: float, out: list[Action]
    ) -> None:
        """The CLI exited before the turn's result: the turn gets one anyway."""
        turn = self._running
        assert turn is not None
        self._running = None
        if purpose is Purpose.CANCEL and turn.not_started:
            why = problem(
                "turn_not_started", "turn_not_started_result", timeout=self.policy.start_timeout
            )
        elif purpose is Purpose.CANCEL:
            why = self._cancelled_problem()
        elif purpose is Purpose.CLOSE:
            why = problem("cancelled", "closed_during_turn")
        else:
            why = problem(
                "cli_exited",
                "cli_exited_during_turn",
                returncode=event.returncode,
                stderr=event.stderr_tail,
            )
        duration = _ms(now - (turn.started or now))
        out.append(Deliver(self._result(why, duration), turn.id))

    def _start_fresh(self, esc: _Escalation, out: list[Action]) -> None:
        """The resumed CLI failed: go on as a new CLI session, and say the history is lost.

        A session the CLI cannot resume (`--no-session-persistence` keeps no transcript;
        the transcript may have been deleted) would otherwise die at the first cancel that
        has to restart the CLI. A new session keeps the user's next turns working; the
        user is told what was lost so they can send the context again.
        """
        exited = esc.exit or CliExited(None)
        why = "; ".join(esc.said) or exited.stderr_tail.strip()[-500:]
        lost = self.session_id
        self._error(
            out,
            problem(
                "session_lost",
                session_id=lost,
                returncode=exited.returncode,
                why=why,
                no_persistence="--no-session-persistence" in self.args,
            ),
            session_id=lost,
        )
        self.session_id = None  # the new CLI says its own with its first turn
        self.sessions_lost += 1

    # -------------------------------------------------------------- the watchdogs

    def _on_turn_deadline(self, now: float, out: list[Action]) -> None:
        """A deadline of the running turn's own (no ladder under way): it never started,
        it stalled, or it ran too long. Each starts an ordinary cancel."""
        turn = self._running
        if turn is None:
            return
        start = turn.start_deadline(self.policy)
        if start is not None and now >= start:
            # The CLI was sent a turn and wrote nothing since: a turn it will never start
            # (the real CLI does that with content it cannot read) must not hold the queue.
            turn.not_started = True
            timeout = self.policy.start_timeout
            self._error(out, problem("turn_not_started", timeout=timeout, turn=turn.id))
            self._begin_cancel(now, out, trigger="start_timeout")
            return
        trigger = turn.watchdog_trigger(self.policy, now)
        if trigger is not None:
            self._begin_cancel(now, out, trigger=trigger)

    def _cancelled_problem(self) -> Problem:
        """Why a cancelled turn has no result of its own: which limit ended it, if any."""
        esc = self._escalation
        return problem(
            "cancelled",
            trigger=esc.trigger if esc is not None else "request",
            stall_timeout=self.policy.stall_timeout,
            turn_timeout=self.policy.turn_timeout,
        )

    # -------------------------------------------------------------- spawning

    def _spawn(self, args: Sequence[str], now: float, *, replay: bool) -> list[Action]:
        """Start a CLI; a respawned one must answer a control request before it is ready."""
        out: list[Action] = [Spawn(tuple(args))]
        cli = self._cli = _Cli()
        if replay:
            requests = [
                protocol.with_request_id(frame, self._own_id("replay"))
                for frame in self._session_requests.values()
            ] or [protocol.control_request(self._own_id("probe"), PROBE_SUBTYPE)]
            for frame in requests:
                cli.awaiting.add(frame.data["request_id"])
                out.append(WriteToCli(frame))
        return out

    def _on_spawn_failed(self, error: str, now: float, out: list[Action]) -> None:
        self._cli = None
        esc = self._escalation
        if esc is not None and self._respawning:
            fresh = self.ladder[esc.phase].enter is Entry.SPAWN_FRESH
            why = problem("respawn_failed", error=error, session_id=self.session_id, fresh=fresh)
        else:
            why = problem("cli_not_started", error=error)
        self._fail(why, now, out)

    # -------------------------------------------------------------- the queue

    def _pump(self, now: float, out: list[Action]) -> None:
        """Moves the session on once nothing blocks it: forwards held control frames,
        starts the next turn, and starts closing when due."""
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
                out.append(Deliver(self._result(turn.invalid), turn.id))
                continue
            turn.started = now
            self._running = turn
            if self._cli is not None:
                self._cli.initialized = False  # the CLI prints init at the start of every turn
            out.append(MarkTurnStart())
            out.append(WriteToCli(turn.frame))
            break
        closing = self._closing
        if closing and not self._queue and (self._running is None or not closing.drain):
            self._escalation = _Escalation(Purpose.CLOSE, started=now)
            self._enter(EOF, now, out)

    # --------------------------------------------------------------- failure

    def _fail(self, why: Problem, now: float, out: list[Action]) -> None:
        """The session cannot go on: say why, and give every waiting turn its result."""
        if self.failure is not None:
            return
        self.failure = why
        self._error(out, why)
        failed = problem("supervisor_failed", failure=why.message)
        if self._running is not None:
            out.append(Deliver(self._result(failed), self._running.id))
            self._running = None
        self._drop_queued(failed, out)
        self._answer_held(why.message, out)  # control frames held for the CLI
        self._queue.clear()
        esc, self._escalation = self._escalation, None
        self._answer_pending(out, why.message)
        if esc is not None and esc.purpose is Purpose.CANCEL:
            out.append(CancelDone(None))
            notice = protocol.supervisor_cancel(
                None, self.session_id, esc.request_ids, trigger=esc.trigger
            )
            out.append(Deliver(notice, None))
        if self._cli is not None:
            out.append(KillTree())
        else:
            self._finish(1, out)

    def _finish(self, exit_code: int, out: list[Action]) -> None:
        if not self.finished:
            self.finished = True
            self._escalation = None
            out.append(Finished(exit_code))

    # ---------------------------------------------------------------- helpers

    def _on_bad_line(self, source: str, error: FramingError, out: list[Action]) -> None:
        code = error.code if source == "user" else f"cli_{error.code}"
        details = {"preview": error.preview} if error.preview else {}
        why = problem(code, "dropped_line", source=source, message=error.message)
        self._error(out, why, **details)

    def _result(self, why: Problem, duration_ms: float = 0) -> Frame:
        """A result written by the supervisor, for a turn whose own never came."""
        return protocol.synthesized_result(
            session_id=self.session_id,
            duration_ms=duration_ms,
            terminal_reason=why.code,
            message=why.message,
        )

    def _error(self, out: list[Action], why: Problem, **details: Any) -> None:
        out.append(Deliver(protocol.error_frame(why, **details), self.running_turn))

    def _own_id(self, what: str) -> str:
        return f"{protocol.OWN_ID_PREFIX}{what}-{next(self._own_ids)}"

    def _step(self, name: str, now: float) -> None:
        if self._escalation is not None:
            self._step_on(self._escalation, name, now)

    def _step_on(self, esc: _Escalation, name: str, now: float) -> None:
        esc.steps.append(Step(name, _ms(now - esc.started)))


#: The types of the CLI's frames that `_on_cli_frame` acts on (beyond relaying them and
#: noting that the CLI wrote): the session id, the CLI's init, our answers, results.
#: With the stall watchdog on, also the frames whose tool calls pause it (`note_output`).
#: A frame of any other type that was not parsed decides nothing (`FromCliLines`).
_LOOKED_AT = frozenset({"system", "result", "control_response"})
_LOOKED_AT_WITH_TOOLS = _LOOKED_AT | {"assistant", "user"}


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
    """The exit code a wrapper passes on for the CLI's `returncode` (128+N: signal N)."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode
