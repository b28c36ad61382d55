"""Randomized fault injection against the state machine, paired with a simulated CLI.

Hypothesis drives random sequences of user turns, cancels, supersedes, interrupts,
control requests and waits, with a fault drawn for every turn and every respawn (see
tests/sim_cli.py). Whatever happens, the promises must hold:

* every user turn gets exactly one result, and every interrupt exactly one answer;
* content the CLI cannot read never reaches it, and gets its own `invalid_content` result;
* a turn the CLI never starts does not hold the queue (start_timeout);
* no turn is forwarded twice or while another runs (nothing merged, duplicated, lost);
* when a cancel ends, no process of the cancelled turn is alive;
* every cancel ends within the policy's deadlines plus a bounded respawn;
* unless a resume failed and so did the new session started instead, the session answers
  the next turn;
* with a stall timeout or a turn timeout (drawn per run), no turn outlives its limit
  without a cancel, and the watchdog cancels only when a limit has really passed (the
  CLI silent with no tool call open, or the turn too old), saying which.

The profile (`HYPOTHESIS_PROFILE`) sets how many sequences run: `ci` (the default) a
few hundred, `long` many thousands, on demand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sim_cli import Behaviour, ResumeFault, Violation, World

from supervisor._policy import EscalationPolicy

settings.register_profile(
    "ci", max_examples=300, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile(
    "long", max_examples=20_000, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MAX_RESUME_DELAY = 2.0

behaviours = st.builds(
    Behaviour,
    duration=st.floats(0.01, 3.0),
    tool=st.booleans(),
    escapee=st.booleans(),
    stubborn=st.booleans(),
    ignore_interrupt=st.booleans(),
    mute_interrupt=st.booleans(),
    ignore_sigint=st.booleans(),
    wedge=st.booleans(),
    crash=st.sampled_from([False] * 4 + [True]),
    garbage=st.booleans(),
    silent=st.sampled_from([False] * 5 + [True]),
    stall=st.sampled_from([False] * 3 + [True]),
)
resume_faults = st.builds(
    ResumeFault,
    delay=st.floats(0.01, MAX_RESUME_DELAY),
    fails=st.sampled_from([False] * 4 + [True]),
    fresh_fails=st.sampled_from([False] * 3 + [True]),
)
#: Content the real CLI neither answers nor fails on (and a few more shapes it cannot read).
malformed_content = st.sampled_from(
    [123, None, [1, 2, 3], ["s"], [None], [{"type": "text"}], [{"type": "text", "text": 5}],
     {"type": "text", "text": "x"}, [{"type": 1}], [{"type": "image"}]]
)  # fmt: skip


class SupervisedSession(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.terminated_at: float | None = None

    @initialize(
        fault=resume_faults,
        stall_timeout=st.sampled_from([None, None, 0.4, 1.5]),
        turn_timeout=st.sampled_from([None, None, 2.5, 6.0]),
        ack_timeout=st.sampled_from([0.1, 0.5, 2.0]),
    )
    def open_session(
        self,
        fault: ResumeFault,
        stall_timeout: float | None,
        turn_timeout: float | None,
        ack_timeout: float,
    ) -> None:
        policy = EscalationPolicy(
            interrupt_timeout=1.0,
            sigint_timeout=2.0,
            kill_timeout=0.5,
            ready_timeout=5.0,
            start_timeout=5.0,
            interrupt_ack_timeout=ack_timeout,
            stall_timeout=stall_timeout,
            turn_timeout=turn_timeout,
        )
        self.world = World(policy)
        self.world.resume_faults.append(fault)

    def _open(self) -> bool:
        return not self.world.machine.finished

    @precondition(_open)
    @rule(behaviour=behaviours)
    def send(self, behaviour: Behaviour) -> None:
        self.world.send(behaviour)

    @precondition(_open)
    @rule(behaviour=behaviours)
    def supersede(self, behaviour: Behaviour) -> None:
        self.world.supersede(behaviour)

    @precondition(_open)
    @rule(content=malformed_content, supersede=st.booleans())
    def send_malformed(self, content: object, supersede: bool) -> None:
        self.world.send_malformed(content, supersede=supersede)

    @precondition(_open)
    @rule(cancel_queued=st.booleans())
    def cancel(self, cancel_queued: bool) -> None:
        self.world.cancel(cancel_queued)

    @precondition(_open)
    @rule()
    def interrupt_like_an_sdk(self) -> None:
        self.requests += 1
        self.world.user_interrupt(f"u{self.requests}")

    @precondition(_open)
    @rule()
    def set_model(self) -> None:
        self.requests += 1
        self.world.set_model(f"m{self.requests}")

    @precondition(_open)
    @rule(seconds=st.floats(0.001, 8.0))
    def wait(self, seconds: float) -> None:
        self.world.run_for(seconds)

    @precondition(_open)
    @rule(data=st.data())
    def terminate_like_sigterm(self, data: st.DataObject) -> None:
        # Rare, as it ends the session: most sequences must go on to test the rest.
        if data.draw(st.integers(0, 9)) == 0:
            if self.terminated_at is None:
                self.terminated_at = self.world.now
            self.world.terminate()

    @invariant()
    def a_terminate_ends_the_session_within_the_kill(self) -> None:
        world = self.world
        if self.terminated_at is None or world.machine.finished:
            return
        if world.now - self.terminated_at > world.policy.reap_timeout:
            raise Violation(f"not finished {world.now - self.terminated_at} s after SIGTERM")

    @rule(fault=resume_faults)
    def next_respawn_misbehaves(self, fault: ResumeFault) -> None:
        self.world.resume_faults.append(fault)

    @invariant()
    def cancels_end_within_the_deadlines(self) -> None:
        policy = self.world.policy
        bound = (
            policy.interrupt_timeout
            + policy.sigint_timeout
            + policy.reap_timeout
            + MAX_RESUME_DELAY
            + 1.0
        )
        for _, report in self.world.reports:
            if report is not None and report.total_ms > bound * 1000:
                raise Violation(f"a cancel took {report.total_ms} ms: {report}")

    @invariant()
    def no_process_of_a_cancelled_turn_survives_its_cancel(self) -> None:
        world = self.world
        if world.machine.cancelling:
            return
        for proc in world.processes:
            if proc.alive and proc.turn in world.cancelled_turns and proc.turn in world.results:
                raise Violation(f"a process of cancelled turn {proc.turn} is alive")

    @invariant()
    def no_turn_outlives_the_watchdogs_limits(self) -> None:
        world = self.world
        machine, policy, now = world.machine, world.policy, world.now
        if machine.finished or machine.running_turn is None or machine.escalating:
            return
        if policy.turn_timeout is not None and now > world.turn_forwarded + policy.turn_timeout:
            raise Violation(f"turn {machine.running_turn} outlived the turn timeout at {now}")
        silent = now - max(world.last_output, world.turn_forwarded)
        stall = policy.stall_timeout
        if stall is not None and not world.tool_open and silent > stall:
            raise Violation(f"turn {machine.running_turn} stalled {silent} s uncancelled")

    @invariant()
    def at_most_one_answer_per_interrupt(self) -> None:
        assert all(n <= 1 for n in self.world.user_interrupts.values())

    def teardown(self) -> None:
        world = self.world
        # Simulated time, and settle() returns as soon as nothing is pending: a generous
        # limit costs nothing, and a queue of turns the CLI never starts takes a while.
        world.settle(limit=600 + 30 * len(world.submitted))
        stuck = world.machine.running_turn
        if stuck is not None:  # one the CLI never started ends by itself (start_timeout)
            assert not world.behaviours.get(stuck, Behaviour()).silent, f"turn {stuck} hangs"
        # A wedged turn never ends by itself: the user cancels what is stuck.
        for _ in range(len(world.submitted) + 1):
            if world.machine.finished or world.machine.running_turn is None:
                break
            world.cancel()
            world.settle()
        missing = [t for t in world.submitted if len(world.results.get(t, [])) != 1]
        assert not missing, f"turns without exactly one result: {missing}"
        for turn in world.malformed:
            reason = world.results[turn][0]["terminal_reason"]
            assert reason in ("invalid_content", "supervisor_failed", "cancelled"), reason
        unanswered = [r for r, n in world.user_interrupts.items() if n != 1]
        assert not unanswered, f"interrupts not answered exactly once: {unanswered}"
        assert len(world.forwarded) == len(set(world.forwarded)), "a turn was forwarded twice"
        if self.terminated_at is not None:
            assert world.machine.finished
            assert not [p for p in world.processes if p.alive], "SIGTERM left processes"
            return
        if world.machine.finished:
            assert world.finished == 1
            # Only a failed resume followed by a failed new session ends a session here,
            # or a first CLI that died before its first frame (a respawn would repeat it).
            if "cli_not_started" not in world.error_codes:
                assert world.fresh_failures > 0, "the session ended, yet a new one could start"
            return
        # The session must still work: a well-behaved turn gets a successful result.
        turn = world.send(Behaviour(duration=0.1))
        world.settle()
        assert world.results[turn][0]["subtype"] == "success", world.results[turn]


TestSupervisedSession = SupervisedSession.TestCase
