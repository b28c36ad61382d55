"""A simulated CLI and process tree, paired with the real state machine on a fake clock.

The machine is pure, so the whole supervisor can run against a model of its peer, as
h11 pairs two ends of a connection: the simulation carries out the machine's actions
(spawn, write, signal, kill), schedules what the modelled CLI would do and when, and
feeds the results back as events. Faults are chosen per turn (ignore the interrupt,
never answer it, ignore SIGINT, wedge, crash, leave stubborn or escaped processes) and
per respawn (slow or failing resume, and a failing new session after it). The user may
also send content the CLI cannot read, and a turn may be one the CLI never starts. A
test then checks the promises that must hold whatever happened. The World also records
what the stall watchdog and the turn timeout may rely on (when the CLI last wrote,
whether a tool call was open, when the turn was forwarded), so a test can check that the
watchdog fired when, and only when, it should.
"""

from __future__ import annotations

import heapq
import itertools
import signal
from collections.abc import Iterable
from typing import Any

import attrs

from supervisor import _machine as m
from supervisor._framing import Frame
from supervisor._inbound import user_event
from supervisor._policy import EscalationPolicy
from supervisor._report import CancelReport

SID = "sim-session"


@attrs.frozen
class Behaviour:
    """How the simulated CLI plays one turn."""

    duration: float = 0.5  # seconds to the result when nothing interferes
    tool: bool = False  # runs a tool process (killed by the CLI on interrupt)
    escapee: bool = False  # the tool leaves a process the CLI does not kill
    stubborn: bool = False  # a process that ignores SIGTERM (dies at SIGKILL)
    ignore_interrupt: bool = False  # answers the interrupt, keeps running
    mute_interrupt: bool = False  # does not even answer it
    ignore_sigint: bool = False
    wedge: bool = False  # stops itself once the turn started
    crash: bool = False  # exits with code 3 mid-turn
    garbage: bool = False  # writes a line that is not a frame
    silent: bool = False  # never starts the turn: writes nothing for it (unreadable content)
    stall: bool = False  # goes silent, never ends by itself; still answers the interrupt


@attrs.frozen
class ResumeFault:
    delay: float = 0.2  # until the resumed CLI reads its input
    fails: bool = False  # the transcript cannot be resumed
    fresh_fails: bool = False  # then the new session started instead cannot start either


@attrs.define
class SimProcess:
    turn: int | None  # the turn that started it (None: the CLI itself)
    stubborn: bool = False
    killed_by_cli: bool = True  # the CLI kills it when its turn is interrupted
    alive: bool = True


@attrs.define
class SimCli:
    """One run of the modelled CLI."""

    generation: int
    resume_fault: ResumeFault | None
    reading_at: float  # it ignores its input until then (start-up)
    running: int | None = None  # the turn id it is playing
    behaviour: Behaviour = Behaviour()
    stopped: bool = False
    exiting: bool = False
    eof: bool = False
    got_sigint: bool = False
    backlog: list[Frame] = attrs.Factory(list)


class Violation(AssertionError):
    pass


class World:
    """The machine, the simulated CLI, the clock, and a record of everything seen."""

    def __init__(self, policy: EscalationPolicy | None = None) -> None:
        self.policy = policy or EscalationPolicy(
            interrupt_timeout=1.0,
            sigint_timeout=2.0,
            kill_timeout=0.5,
            ready_timeout=5.0,
            start_timeout=5.0,
        )
        self.machine = m.SessionMachine(["-p"], self.policy)
        self.now = 0.0
        self._queue: list[
            tuple[float, int, int, m.Event | _EndTurn | _Stop]
        ] = []  # (time, seq, generation, ev)
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        self.cli: SimCli | None = None
        self.processes: list[SimProcess] = []
        self.snapshot: set[int] = set()  # ids of processes alive at the last MarkTurnStart
        self.behaviours: dict[int, Behaviour] = {}
        self.resume_faults: list[ResumeFault] = []
        # Records.
        self.results: dict[int, list[dict[str, Any]]] = {}
        self.stray_frames: list[dict[str, Any]] = []
        self.forwarded: list[int] = []  # turn ids in the order the CLI received them
        self.reports: list[tuple[float, CancelReport | None]] = []
        self.cancel_started: list[float] = []
        self.finished: int | None = None
        self.submitted: list[int] = []
        self.cancelled_turns: set[int] = set()
        self.user_interrupts: dict[str, int] = {}  # request id -> answers seen
        self.malformed: set[int] = set()  # turns whose content the CLI cannot read
        self.sessions_lost = 0
        self.error_codes: list[Any] = []  # of every supervisor_error, in order
        self.fresh_failures = 0  # new sessions (after a failed resume) that failed too
        self._failed_resume: ResumeFault | None = None  # the last resume, if it failed
        # What the watchdog may rely on, as the CLI produced it.
        self.last_output = 0.0  # when the CLI last wrote a frame the machine received
        self.turn_forwarded = 0.0  # when the running turn reached the CLI
        self.tool_open = False  # a tool_use was written and its tool_result not yet
        self.watchdog_cancels: list[tuple[float, set[str]]] = []  # when, triggers justified
        self.queued: list[int] = []  # the turn ids the machine gave, in order
        self._apply(self.machine.start(self.now))

    # ------------------------------------------------------------ the user

    def send(self, behaviour: Behaviour) -> int:
        turn = len(self.submitted) + 1  # turns are numbered in arrival order
        self.behaviours[turn] = behaviour
        self.submitted.append(turn)
        frame = Frame.from_data(
            {"type": "user", "message": {"role": "user", "content": f"t{turn}"}}
        )
        self._feed(m.FromUser(frame))
        assert self.queued[-1] == turn
        return turn

    def supersede(self, behaviour: Behaviour) -> int:
        turn = len(self.submitted) + 1  # turns are numbered in arrival order
        self.behaviours[turn] = behaviour
        self.submitted.append(turn)
        self._note_cancel()
        self._feed(user_event(Frame.from_data({"type": "supersede_turn", "content": f"t{turn}"})))
        assert self.queued[-1] == turn
        return turn

    def send_malformed(self, content: Any, *, supersede: bool = False) -> int:
        """A turn whose content the CLI cannot read: it must never reach the CLI."""
        turn = len(self.submitted) + 1  # turns are numbered in arrival order
        self.submitted.append(turn)
        self.malformed.add(turn)
        if supersede:
            frame = {"type": "supersede_turn", "content": content}
        else:
            frame = {"type": "user", "message": {"role": "user", "content": content}}
        self._feed(user_event(Frame.from_data(frame)))
        assert self.queued[-1] == turn
        return turn

    def cancel(self, cancel_queued: bool = False) -> None:
        self._note_cancel()
        self._feed(m.Cancel(cancel_queued=cancel_queued))

    def user_interrupt(self, request_id: str) -> None:
        self.user_interrupts.setdefault(request_id, 0)
        self._note_cancel()
        request = {"type": "control_request", "request_id": request_id}
        self._feed(user_event(Frame.from_data({**request, "request": {"subtype": "interrupt"}})))

    def set_model(self, request_id: str) -> None:
        request = {"type": "control_request", "request_id": request_id}
        self._feed(user_event(Frame.from_data({**request, "request": {"subtype": "set_model"}})))

    def end_input(self) -> None:
        self._feed(m.EndOfInput(drain=True))

    def terminate(self) -> None:
        """The executable's SIGTERM (or its parent's death)."""
        self._feed(m.Terminate())

    def _note_cancel(self) -> None:
        if self.machine.running_turn is not None and not self.machine.cancelling:
            self.cancelled_turns.add(self.machine.running_turn)
            self.cancel_started.append(self.now)

    # ------------------------------------------------------------- the clock

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float) -> None:
        while not self.machine.finished:
            deadline = self.machine.deadline
            next_event = self._queue[0][0] if self._queue else None
            candidates = [t for t in (deadline, next_event) if t is not None and t <= until]
            if not candidates:
                break
            at = min(candidates)
            self.now = max(self.now, at)
            if next_event is not None and next_event == at:
                _, _, generation, event = heapq.heappop(self._queue)
                if generation and (self.cli is None or generation != self.cli.generation):
                    continue  # from a CLI that is gone
                if isinstance(event, _EndTurn):
                    self._on_end_turn(event)
                elif isinstance(event, _Stop):
                    if self.cli is not None:
                        self.cli.stopped = True
                else:
                    self._deliver_to_machine(event)
            else:
                self._feed(m.DeadlinePassed())
                if self.machine.deadline == deadline and not self.machine.finished:
                    raise Violation(f"the deadline {deadline} passed and nothing happened")
        self.now = max(self.now, until)

    def settle(self, limit: float = 120.0) -> None:
        """Runs until nothing more can happen by itself (or `limit` simulated seconds)."""
        end = self.now + limit
        while not self.machine.finished and self.now < end:
            if not self._queue and self.machine.deadline is None:
                return
            self.run_until(min(end, self.now + 1.0))

    # ---------------------------------------------------------- the machine

    def _feed(self, event: m.Event) -> None:
        watching = self.machine.running_turn is not None and not self.machine.cancelling
        if isinstance(event, m.FromCli):
            self._note_output(event.frame)
        self._apply(self.machine.handle(event, self.now))
        if isinstance(event, m.DeadlinePassed) and watching and self.machine.cancelling:
            self._on_watchdog_cancel()

    def _note_output(self, frame: Frame) -> None:
        self.last_output = self.now
        kind = frame.data.get("type")
        if kind == "assistant":
            self.tool_open = True
        elif kind == "user" or kind == "result":
            self.tool_open = False

    def _on_watchdog_cancel(self) -> None:
        """The machine began a cancel by itself: say which limits had really passed."""
        policy, now = self.policy, self.now
        justified = set()
        if policy.turn_timeout is not None and now >= self.turn_forwarded + policy.turn_timeout:
            justified.add("turn_timeout")
        if (
            policy.stall_timeout is not None
            and not self.tool_open
            and now >= self.last_output + policy.stall_timeout
        ):
            justified.add("stall")
        if now >= self.turn_forwarded + policy.start_timeout:
            justified.add("start_timeout")  # a turn the CLI never started (no frame for it)
        if not justified:
            raise Violation(f"the watchdog cancelled turn {self.machine.running_turn} at {now}")
        running = self.machine.running_turn
        assert running is not None
        self.cancelled_turns.add(running)
        self.cancel_started.append(now)
        self.watchdog_cancels.append((now, justified))

    def _deliver_to_machine(self, event: m.Event) -> None:
        if isinstance(event, m.CliExited):
            # The helper kills what is left of the tree before it reports the exit.
            event = attrs.evolve(event, processes_killed=event.processes_killed + self._kill_all())
            if self.cli is not None:
                self.cli = None
        self._feed(event)

    def _schedule(
        self, delay: float, event: m.Event | _EndTurn | _Stop, *, cli_bound: bool = True
    ) -> None:
        generation = self.cli.generation if (cli_bound and self.cli) else 0
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), generation, event))

    def _apply(self, actions: Iterable[m.Action]) -> None:
        for action in actions:
            match action:
                case m.TurnQueued(turn):
                    self.queued.append(turn)
                case m.Spawn(args):
                    self._spawn(args)
                case m.WriteToCli(frame):
                    self._cli_reads(frame)
                case m.Deliver(frame, turn):
                    self._on_deliver(frame.data, turn)
                case m.SignalCli(signum):
                    assert signum == signal.SIGINT
                    self._sigint()
                case m.KillTree():
                    self._kill_tree()
                case m.MarkTurnStart():
                    self.snapshot = {id(p) for p in self.processes if p.alive}
                case m.KillTurnProcesses():
                    self._kill_turn_processes()
                case m.CloseCliInput():
                    self._close_input()
                case m.CancelDone(report):
                    self.reports.append((self.now, report))
                    self._check_trigger(report)
                case m.CheckCliStopped():
                    if self.cli is not None and self.cli.stopped:
                        self._schedule(0.001, m.CliStopped())
                case m.Finished(code):
                    self.finished = code

    def _check_trigger(self, report: CancelReport | None) -> None:
        if report is None or report.trigger not in ("stall", "turn_timeout", "start_timeout"):
            return
        if not self.watchdog_cancels or report.trigger not in self.watchdog_cancels[-1][1]:
            raise Violation(f"a {report.trigger} report for no such limit: {report}")

    def _on_deliver(self, data: dict[str, Any], turn: int | None) -> None:
        if data.get("type") == "control_response":
            request_id = data["response"]["request_id"]
            if request_id in self.user_interrupts:
                self.user_interrupts[request_id] += 1
        if data.get("type") == "result":
            if turn is None:
                raise Violation(f"a result for no turn: {data}")
            self.results.setdefault(turn, []).append(data)
            if len(self.results[turn]) > 1:
                raise Violation(f"turn {turn} got two results: {self.results[turn]}")
        elif turn is None:
            self.stray_frames.append(data)
        error = data.get("error")
        if isinstance(error, dict):
            self.error_codes.append(error.get("code"))
            self.sessions_lost += error.get("code") == "session_lost"

    # --------------------------------------------------------- the model CLI

    def _spawn(self, args: tuple[str, ...]) -> None:
        fault: ResumeFault | None = None
        if "--resume" in args:
            fault = self.resume_faults.pop(0) if self.resume_faults else ResumeFault()
            self._failed_resume = fault if fault.fails else None
        elif self.cli_count > 0:  # a restart without --resume: a new session
            failed, self._failed_resume = self._failed_resume, None
            fault = ResumeFault(fails=failed is not None and failed.fresh_fails)
            self.fresh_failures += fault.fails
        self.cli = SimCli(
            generation=next(self._generations),
            resume_fault=fault,
            reading_at=self.now + (fault.delay if fault else 0.05),
        )
        self.cli_count += 1
        self._schedule(0.005, m.CliSpawned())
        if fault is not None and fault.fails:
            # As the real CLI: a result that belongs to no turn, then exit 1.
            no_conversation = "No conversation found"
            failure = {"type": "result", "subtype": "error_during_execution", "is_error": True}
            self._emit(fault.delay / 2, {**failure, "errors": [no_conversation]})
            self._schedule(fault.delay, m.CliExited(1, stderr_tail=no_conversation))
            self.cli.exiting = True

    cli_count = 0

    def _cli_reads(self, frame: Frame) -> None:
        cli = self.cli
        if cli is None or cli.exiting or cli.eof:
            return
        if cli.stopped:
            cli.backlog.append(frame)
            return
        delay = max(0.0, cli.reading_at - self.now)
        data = frame.data
        if data["type"] == "user":
            content = data["message"]["content"]
            if not (isinstance(content, str) and content.startswith("t")):
                raise Violation(f"content the CLI cannot read was forwarded: {content!r}")
            turn = int(content[1:])
            if cli.running is not None:
                raise Violation(f"turn {turn} was written while turn {cli.running} ran")
            self.forwarded.append(turn)
            self.turn_forwarded = self.now
            self.tool_open = False
            self._start_turn(turn, delay)
        elif data["type"] == "control_request":
            self._control(data, delay)

    def _control(self, data: dict[str, Any], delay: float) -> None:
        cli = self.cli
        assert cli is not None
        request_id = data["request_id"]
        subtype = data["request"]["subtype"]
        if subtype == "interrupt" and cli.running is not None:
            if cli.behaviour.mute_interrupt:
                return
            self._emit(
                delay + 0.02,
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": request_id, "response": {}},
                },
            )
            if not (cli.behaviour.ignore_interrupt or cli.behaviour.silent):
                self._end_turn(delay + 0.05, "error_during_execution", "aborted_tools")
            return
        answer = "success" if subtype in ("interrupt", "initialize", "set_model") else "error"
        self._emit(
            delay + 0.005,
            {
                "type": "control_response",
                "response": {"subtype": answer, "request_id": request_id, "response": {}},
            },
        )

    def _start_turn(self, turn: int, delay: float) -> None:
        cli = self.cli
        assert cli is not None
        behaviour = self.behaviours.get(turn, Behaviour())
        cli.running, cli.behaviour = turn, behaviour
        if behaviour.silent:
            return  # nothing at all: no init, no tool, no result
        if behaviour.tool:
            self.processes.append(SimProcess(turn, stubborn=behaviour.stubborn))
        if behaviour.escapee:
            self.processes.append(SimProcess(turn, killed_by_cli=False))
        if behaviour.stubborn:
            self.processes.append(SimProcess(turn, stubborn=True, killed_by_cli=False))
        self._emit(delay + 0.01, {"type": "system", "subtype": "init", "session_id": SID})
        if behaviour.tool:
            # The tool call is announced; it runs until the turn ends (see _on_end_turn).
            tool = {"id": f"tool-{turn}"}
            self._emit(delay + 0.015, _tool_frame("assistant", "tool_use", tool))
        if behaviour.garbage:
            self._schedule(delay + 0.02, m.BadLine("cli", _garbage()))
        if behaviour.crash:
            self._schedule(delay + behaviour.duration / 2, m.CliExited(3))
            cli.exiting = True
        elif behaviour.wedge:
            self._schedule(delay + 0.02, _Stop())
        elif behaviour.stall:
            pass  # silent until interrupted, SIGINTed or killed
        else:
            # Never before the frames scheduled above: the CLI writes nothing of a turn
            # after its result (a stray frame would count for the next turn).
            end = delay + max(behaviour.duration, 0.03)
            self._end_turn(end, "success", "completed", turn=turn)

    def _end_turn(self, delay: float, subtype: str, reason: str, turn: int | None = None) -> None:
        self._schedule(delay, _EndTurn(subtype, reason, turn))

    def _emit(self, delay: float, data: dict[str, Any]) -> None:
        self._schedule(delay, m.FromCli(Frame.from_data(data)))

    def _sigint(self) -> None:
        cli = self.cli
        if cli is None or cli.stopped or cli.exiting or cli.behaviour.ignore_sigint:
            return
        if cli.running is not None and cli.behaviour.silent:
            cli.running = None  # a turn it never started: it just exits
        if cli.running is not None:
            self._end_turn(0.01, "error_during_execution", "aborted_tools")
        self._schedule(0.3, m.CliExited(0))
        cli.exiting = True

    def _kill_tree(self) -> None:
        cli = self.cli
        if cli is None:
            return
        stubborn = any(p.alive and p.stubborn for p in self.processes)
        count = 1 + self._kill_all()
        delay = self.policy.kill_timeout if stubborn or cli.stopped else 0.01
        self._schedule(delay, m.CliExited(-9 if stubborn else -15, processes_killed=count))
        cli.exiting = True

    def _kill_turn_processes(self) -> None:
        new = [p for p in self.processes if p.alive and id(p) not in self.snapshot]
        for proc in new:
            proc.alive = False
        delay = self.policy.kill_timeout if any(p.stubborn for p in new) else 0.01
        self._schedule(delay, m.TurnProcessesKilled(len(new)), cli_bound=False)

    def _kill_all(self) -> int:
        alive = [p for p in self.processes if p.alive]
        for proc in alive:
            proc.alive = False
        return len(alive)

    def _close_input(self) -> None:
        cli = self.cli
        if cli is None or cli.stopped:
            return
        cli.eof = True
        if cli.running is None:
            self._schedule(0.03, m.CliExited(0))
            cli.exiting = True

    def _on_end_turn(self, event: _EndTurn) -> None:
        cli = self.cli
        if cli is None or cli.stopped or cli.running is None:
            return
        if event.turn is not None and event.turn != cli.running:
            return  # a turn that already ended another way
        turn, cli.running = cli.running, None
        for proc in self.processes:
            if proc.turn == turn and proc.killed_by_cli:
                proc.alive = False  # the tool ends (or the CLI kills it on interrupt)
        if self.behaviours.get(turn, Behaviour()).tool:
            # Its tool's result (or, when interrupted, the rejected one) comes first.
            ended = {"tool_use_id": f"tool-{turn}"}
            self._feed(m.FromCli(Frame.from_data(_tool_frame("user", "tool_result", ended))))
        result = {
            "type": "result",
            "subtype": event.subtype,
            "is_error": event.subtype != "success",
            "session_id": SID,
            "terminal_reason": event.reason,
            "turn": turn,
        }
        self._feed(m.FromCli(Frame.from_data(result)))
        if cli.eof and not cli.exiting:
            self._schedule(0.03, m.CliExited(0))
            cli.exiting = True


@attrs.frozen
class _EndTurn:
    subtype: str
    reason: str
    turn: int | None


@attrs.frozen
class _Stop:
    pass


def _tool_frame(role: str, block_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    block = {"type": block_type, **fields}
    return {"type": role, "message": {"role": role, "content": [block]}, "session_id": SID}


def _garbage() -> Any:
    from supervisor._framing import FramingError

    return FramingError("invalid_json", "line is not JSON", "garbage")
