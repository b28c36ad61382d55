"""The state machine on its own: every rung of the ladder, the queue, respawn and failures."""

from __future__ import annotations

import signal

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from machine_harness import ARGS, SID, Harness, frame, init, response, result, user

from supervisor import _machine as m
from supervisor._framing import Frame, cheap_types, decode_line
from supervisor._inbound import user_event
from supervisor._policy import EscalationPolicy


def running(h: Harness, text: str = "hello") -> None:
    """Starts a turn and lets the CLI announce itself, as the real one does."""
    h.user(user(text))
    h.cli(init())


def test_spawns_with_the_users_arguments_unchanged() -> None:
    h = Harness()
    assert h.log[0] == m.Spawn(ARGS)


def test_turns_are_forwarded_one_at_a_time_and_each_gets_its_result() -> None:
    h = Harness()
    assert h.written(h.user(user("one"))) == [user("one").data]
    assert h.written(h.user(user("two"))) == []  # queued: one is running
    assert h.machine.queued_turns == [2]
    actions = h.cli(result(result="r1"))
    assert h.delivered(actions)[0] == (result(result="r1").data, 1)
    assert h.written(actions) == [user("two").data]
    h.cli(result(result="r2"))
    assert {turn: len(rs) for turn, rs in h.results_by_turn().items()} == {1: 1, 2: 1}


def test_frames_are_relayed_unchanged_with_unknown_fields() -> None:
    h = Harness()
    h.user(user("hi"))
    odd = frame(type="brand_new", nested={"x": [1, 2]}, session_id=SID)
    assert h.delivered(h.cli(odd)) == [(odd.data, 1)]
    assert h.machine.session_id == SID


def test_in_band_cancel_kills_the_turns_processes_and_reports() -> None:
    h = Harness()
    running(h)
    actions = h.feed(m.Cancel(), after=1.0)
    interrupt = h.written(actions)[0]
    assert interrupt["type"] == "control_request"
    assert interrupt["request"] == {"subtype": "interrupt"}
    assert (
        h.cli(
            response(interrupt["request_id"]),
        )
        == []
    )  # our own answer: swallowed
    actions = h.feed(m.FromCli(result(subtype="error_during_execution")), after=0.05)
    assert m.KillTurnProcesses() in actions
    assert h.machine.running_turn is None
    actions = h.feed(m.TurnProcessesKilled(2), after=0.01)
    report = h.report(actions)
    assert report.path == "interrupt"
    assert report.respawned is False
    assert report.processes_killed == 2
    assert [s.name for s in report.steps] == [
        "interrupt_sent",
        "interrupt_answered",
        "result",
        "turn_processes_killed",
        "ready",
    ]
    assert report.total_ms == 60.0
    notice = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_cancel"]
    assert notice[0]["report"] == report.to_dict()


def test_interrupt_waits_for_init_because_the_cli_ignores_earlier_ones() -> None:
    h = Harness()
    h.user(user("hi"))
    assert h.written(h.feed(m.Cancel())) == []
    assert h.written(h.cli(init()))[0]["request"]["subtype"] == "interrupt"


def test_sigint_when_the_interrupt_is_ignored_then_resume() -> None:
    policy = EscalationPolicy(interrupt_timeout=2, sigint_timeout=3)
    h = Harness(policy)
    running(h)
    h.user(user("queued"))
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))  # acknowledged: alive, SIGINT may work
    assert h.machine.deadline == 2.0
    assert m.SignalCli(signal.SIGINT) in h.expire()
    assert h.machine.deadline == 5.0
    actions = h.feed(m.CliExited(0, processes_killed=1), after=1.5)
    [(synth, turn)] = [(d, t) for d, t in h.delivered(actions) if d.get("type") == "result"]
    assert turn == 1
    assert synth["subtype"] == "error_during_execution"
    assert synth["is_error"] is True
    assert synth["terminal_reason"] == "cancelled"
    assert synth["session_id"] == SID
    [spawn] = [a for a in actions if isinstance(a, m.Spawn)]
    assert spawn.args == (*ARGS, "--resume", SID)
    assert h.written(actions)  # a probe, to learn when the new CLI reads its input
    assert h.written(h.user(user("while respawning"))) == []
    actions = h.answer_probe()
    report = h.report(actions)
    assert report.path == "sigint"
    assert report.respawned is True
    assert report.processes_killed == 1
    assert [s.name for s in report.steps] == [
        "interrupt_sent",
        "interrupt_answered",
        "sigint_sent",
        "exited",
        "respawned",
        "ready",
    ]
    assert h.written(actions) == [user("queued").data]  # the queue survived the respawn


def test_cli_result_after_sigint_is_relayed_not_synthesized() -> None:
    h = Harness()
    running(h)
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))
    h.expire()
    own = result(subtype="error_during_execution", terminal_reason="aborted_tools")
    assert h.delivered(h.cli(own)) == [(own.data, 1)]
    h.feed(m.CliExited(0))
    assert h.results_by_turn() == {1: [own.data]}


def test_kill_path_when_sigint_does_nothing() -> None:
    h = Harness()
    running(h)
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))
    h.expire()
    assert m.KillTree() in h.expire()
    actions = h.feed(m.CliExited(-9, processes_killed=4))
    assert any(isinstance(a, m.Spawn) for a in actions)
    report = h.report(h.answer_probe())
    assert report.path == "kill"
    assert report.processes_killed == 4
    assert report.step_ms("tree_killed") is not None
    kill_sent, sigint_sent = report.step_ms("kill_sent"), report.step_ms("sigint_sent")
    assert kill_sent is not None and sigint_sent is not None
    assert kill_sent == sigint_sent + 3000


def test_session_level_requests_are_replayed_and_their_answers_swallowed() -> None:
    h = Harness()
    initialize = frame(
        type="control_request", request_id="i1", request={"subtype": "initialize", "hooks": {}}
    )
    assert h.written(h.user(initialize)) == [initialize.data]
    assert h.delivered(h.cli(response("i1"))) == [(response("i1").data, None)]
    running(h)
    h.feed(m.Cancel())
    h.expire()
    actions = h.feed(m.CliExited(0))
    [replayed] = h.written(actions)
    assert replayed["request"] == initialize.data["request"]
    assert replayed["request_id"] != "i1"
    actions = h.cli(response(replayed["request_id"]))
    assert h.delivered(actions) and all(
        d.get("subtype") == "supervisor_cancel" for d, _ in h.delivered(actions)
    )


def test_crash_mid_turn_gets_a_result_and_a_respawn_without_a_report() -> None:
    h = Harness()
    running(h)
    h.user(user("next"))
    actions = h.feed(m.CliExited(3, stderr_tail="boom"))
    [(synth, turn)] = [(d, t) for d, t in h.delivered(actions) if d.get("type") == "result"]
    assert turn == 1 and synth["terminal_reason"] == "cli_exited" and "boom" in synth["result"]
    errors = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_error"]
    assert errors[0]["error"]["code"] == "cli_exited"
    assert any(isinstance(a, m.Spawn) for a in actions)
    actions = h.answer_probe()
    assert h.reports() == []
    assert h.written(actions) == [user("next").data]


def test_failed_resume_and_failed_fresh_start_is_a_clear_error_and_no_turn_waits_forever() -> None:
    h = Harness()
    running(h)
    h.user(user("queued"))
    h.feed(m.Cancel())
    h.expire()
    h.feed(m.CliExited(0))
    h.feed(m.CliExited(1, stderr_tail="No conversation found"))  # the resume: a fresh start
    actions = h.feed(m.CliExited(1, stderr_tail="Error: no API key"))
    errors = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_error"]
    assert errors[0]["error"]["code"] == "resume_failed"
    assert "new session" in errors[0]["error"]["message"]
    assert "no API key" in errors[0]["error"]["message"]
    assert m.Finished(1) in actions
    assert set(h.results_by_turn()) == {1, 2}
    late = h.user(user("after"))
    assert late == []  # finished: nothing more happens


def test_resume_that_never_answers_is_killed_and_reported() -> None:
    h = Harness(EscalationPolicy(ready_timeout=10))
    running(h)
    h.feed(m.CliExited(3))
    actions = h.expire()
    assert m.KillTree() in actions
    errors = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_error"]
    assert errors[-1]["error"]["code"] == "resume_failed"
    assert m.Finished(1) in h.feed(m.CliExited(-15))


def test_cli_that_cannot_start() -> None:
    h = Harness()
    actions = h.feed(m.SpawnFailed("cannot run 'nope': No such file or directory"))
    assert m.Finished(1) in actions
    [(error, _)] = h.delivered(actions)
    assert error["error"]["code"] == "cli_not_started"


def test_cli_that_exits_at_start_says_so() -> None:
    h = Harness()
    actions = h.feed(m.CliExited(1, stderr_tail="error: unknown option '--bogus'"))
    assert m.Finished(1) in actions
    [(error, _)] = h.delivered(actions)
    assert "unknown option" in error["error"]["message"]


def test_a_turn_whose_cli_never_started_says_so() -> None:
    h = Harness()
    h.user(user("first"))
    actions = h.feed(m.CliExited(1, stderr_tail="error: unknown option"))
    [(synth, turn)] = [(d, t) for d, t in h.delivered(actions) if d.get("type") == "result"]
    assert turn == 1 and synth["terminal_reason"] == "supervisor_failed"
    assert "unknown option" in synth["result"] and "restarts" not in synth["result"]
    assert m.Finished(1) in actions


def test_a_cancel_ended_by_a_failed_resume_still_gets_its_notice() -> None:
    h = Harness()
    running(h)
    h.user(frame(type="cancel_turn", request_id="c1"))
    h.expire()
    h.feed(m.CliExited(0))
    h.feed(m.CliExited(1, stderr_tail="No conversation found"))
    actions = h.feed(m.CliExited(1, stderr_tail="still broken"))
    notices = [d for d, _ in h.delivered(actions) if d.get("subtype") == "supervisor_cancel"]
    assert notices == [
        {
            "type": "system",
            "subtype": "supervisor_cancel",
            "session_id": None,  # the old one is lost, the new CLI never said its own
            "trigger": "request",
            "report": None,
            "request_ids": ["c1"],
        }
    ]


def test_a_result_outside_any_turn_is_reported_not_relayed() -> None:
    h = Harness()
    running(h)
    h.cli(result())
    actions = h.cli(result(result="stray"))
    [(error, turn)] = h.delivered(actions)
    assert turn is None
    assert error["error"]["code"] == "cli_unexpected_result"
    assert error["error"]["frame"]["result"] == "stray"


def test_supersede_runs_before_the_queue() -> None:
    h = Harness()
    running(h, "first")
    h.user(user("queued"))
    h.user(frame(type="supersede_turn", content="instead"))
    assert h.machine.queued_turns == [3, 2]
    h.cli(result(subtype="error_during_execution"))
    actions = h.feed(m.TurnProcessesKilled(0))
    assert h.written(actions)[0]["message"]["content"] == "instead"


def test_supersede_while_idle_starts_the_turn() -> None:
    h = Harness()
    actions = h.user(frame(type="supersede_turn", content=[{"type": "text", "text": "x"}]))
    assert h.written(actions)[0]["message"]["content"] == [{"type": "text", "text": "x"}]
    assert h.reports() == []


def test_cancel_queued_gives_each_queued_turn_a_result() -> None:
    h = Harness()
    running(h)
    h.user(user("q1"))
    h.user(user("q2"))
    h.user(frame(type="cancel_turn", request_id="c1", cancel_queued=True))
    results = h.results_by_turn()
    assert [r["terminal_reason"] for r in results[2] + results[3]] == ["cancelled"] * 2
    assert h.machine.queued_turns == []


def test_cancel_with_nothing_running() -> None:
    h = Harness()
    actions = h.user(frame(type="cancel_turn", request_id="c9"))
    assert m.CancelDone(None) in actions
    [(notice, _)] = h.delivered(actions)
    assert notice == {
        "type": "system",
        "subtype": "supervisor_cancel",
        "session_id": None,
        "trigger": "request",
        "report": None,
        "request_ids": ["c9"],
    }


def test_the_users_own_interrupt_is_supervised_and_answered() -> None:
    h = Harness()
    running(h)
    interrupt = frame(type="control_request", request_id="u1", request={"subtype": "interrupt"})
    assert h.written(h.user(interrupt)) == [interrupt.data]
    h.expire()  # the CLI never answered: no SIGINT, the kill rung at once
    actions = h.feed(m.CliExited(-15))
    actions += h.answer_probe()
    answers = [d for d, _ in h.delivered(actions) if d.get("type") == "control_response"]
    assert answers == [
        {
            "type": "control_response",
            "response": {
                "subtype": "success",
                "request_id": "u1",
                "response": {"still_queued": []},
            },
        }
    ]
    assert h.reports()[0].path == "kill" and h.reports()[0].trigger == "request"


def test_the_clis_answer_to_the_users_interrupt_is_relayed() -> None:
    h = Harness()
    running(h)
    h.user(frame(type="control_request", request_id="u1", request={"subtype": "interrupt"}))
    assert h.delivered(h.cli(response("u1"))) == [(response("u1").data, 1)]


def test_pending_user_request_gets_an_error_when_the_cli_dies() -> None:
    h = Harness()
    running(h)
    h.user(frame(type="control_request", request_id="m1", request={"subtype": "set_model"}))
    actions = h.feed(m.CliExited(-9))
    answers = [d for d, _ in h.delivered(actions) if d.get("type") == "control_response"]
    assert answers[0]["response"]["request_id"] == "m1"
    assert answers[0]["response"]["subtype"] == "error"


def test_control_frames_sent_during_a_respawn_are_held_and_delivered_in_order() -> None:
    h = Harness()
    running(h)
    h.feed(m.Cancel())
    h.expire()
    h.feed(m.CliExited(0))
    a = frame(type="control_request", request_id="a", request={"subtype": "set_model"})
    b = frame(type="keep_alive")
    assert h.written(h.user(a)) == [] and h.written(h.user(b)) == []
    written = h.written(h.answer_probe())
    assert written[:2] == [a.data, b.data]


def test_stdin_eof_drains_the_queue_then_closes() -> None:
    h = Harness()
    running(h)
    h.user(user("two"))
    assert m.CloseCliInput() not in h.feed(m.EndOfInput(drain=True))
    h.cli(result())
    actions = h.cli(result())
    assert m.CloseCliInput() in actions
    assert m.Finished(0) in h.feed(m.CliExited(0))


def test_close_of_a_wedged_cli_climbs_the_ladder() -> None:
    h = Harness()
    running(h)
    assert m.CloseCliInput() in h.feed(m.EndOfInput(drain=False))
    assert m.SignalCli(signal.SIGINT) in h.expire()
    assert m.KillTree() in h.expire()
    actions = h.feed(m.CliExited(-15, processes_killed=2))
    assert m.Finished(143) in actions
    assert h.results_by_turn()[1][0]["terminal_reason"] == "cancelled"


def test_terminate_kills_the_tree_at_once_even_after_stdin_eof() -> None:
    """SIGTERM from the parent means "stop now": no graceful wait, not even a started one."""
    h = Harness()
    running(h)
    h.user(user("queued"))
    assert m.CloseCliInput() not in h.feed(m.EndOfInput(drain=True))
    actions = h.feed(m.Terminate())
    assert m.KillTree() in actions
    assert h.machine.deadline is not None
    assert h.results_by_turn()[2][0]["terminal_reason"] == "cancelled"  # the queued turn
    assert h.feed(m.Terminate()) == []  # a second SIGTERM changes nothing
    actions = h.feed(m.CliExited(-15, processes_killed=3), after=0.2)
    assert m.Finished(143) in actions
    assert h.results_by_turn()[1][0]["terminal_reason"] == "cancelled"


def test_control_requests_held_during_the_final_kill_are_answered() -> None:
    h = Harness()
    h.cli(init())
    h.feed(m.Terminate())
    interrupt = frame(type="control_request", request_id="i1", request={"subtype": "interrupt"})
    model = frame(type="control_request", request_id="m1", request={"subtype": "set_model"})
    assert h.written(h.user(interrupt) + h.user(model)) == []  # held: the CLI is being killed
    actions = h.feed(m.CliExited(-15))
    answers = {d["response"]["request_id"]: d["response"]["subtype"] for d, _ in h.delivered()}
    assert answers == {"i1": "success", "m1": "error"}
    assert any(isinstance(a, m.Finished) for a in actions)


def test_terminate_during_a_cancel_ends_it_without_a_report() -> None:
    h = Harness()
    running(h)
    h.feed(m.Cancel(request_id="c1"))
    actions = h.feed(m.Terminate())
    assert m.CancelDone(None) in actions and m.KillTree() in actions
    [(notice, _)] = [d for d in h.delivered(actions) if d[0].get("subtype") == "supervisor_cancel"]
    assert notice["request_ids"] == ["c1"]
    actions = h.feed(m.CliExited(-15))
    assert any(isinstance(a, m.Finished) for a in actions)
    assert len(h.results_by_turn()[1]) == 1
    assert h.reports() == [None]


def test_bad_supervisor_frames_are_reported_and_change_nothing() -> None:
    h = Harness()
    running(h)
    for bad in (
        frame(type="cancel_turn", request_id={"x": 1}),
        frame(type="cancel_turn", cancel_queued="yes"),
        frame(type="supersede_turn", content=42),
        frame(type="supersede_turn"),
        frame(type="supervisor_pause"),
    ):
        actions = h.user(bad)
        [(error, _)] = h.delivered(actions)
        assert error["subtype"] == "supervisor_error"
        assert not any(isinstance(a, m.WriteToCli) for a in actions)
    assert h.machine.running_turn == 1 and not h.machine.cancelling
    # The two bad supersedes were turns: each gets its result once turn 1 has its own.
    h.cli(result())
    results = h.results_by_turn()
    assert [r["terminal_reason"] for r in results[3] + results[2]] == ["invalid_content"] * 2


def test_resume_args_replace_session_flags() -> None:
    h = Harness(args=("-p", "--session-id", "old", "--continue", "--model=x", "--resume=zz"))
    running(h)
    h.feed(m.CliExited(1))
    [spawn] = [a for a in h.last if isinstance(a, m.Spawn)]
    assert spawn.args == ("-p", "--model=x", "--resume", SID)


def test_policy_rejects_nonsense() -> None:
    import pytest

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="interrupt_timeout"):
            EscalationPolicy(interrupt_timeout=bad)


# ------------------------------------------------ a session that cannot be resumed


def lose_the_session(h: Harness) -> list[m.Action]:
    """A cancel that kills the CLI, then a resume that fails as the real CLI's does."""
    h.feed(m.Cancel())
    h.expire()
    h.feed(m.CliExited(0))
    no_conversation = f"No conversation found with session ID: {SID}"
    failure = result(subtype="error_during_execution", is_error=True, errors=[no_conversation])
    assert h.delivered(h.cli(failure)) == []  # no turn's result, no noise
    return h.feed(m.CliExited(1, stderr_tail=no_conversation))


def test_a_session_that_cannot_be_resumed_goes_on_as_a_new_one() -> None:
    args = (*ARGS, "--no-session-persistence", "--session-id", "old-id")
    h = Harness(args=args)
    running(h)
    h.user(user("queued"))
    actions = lose_the_session(h)
    [(error, _)] = [(d, t) for d, t in h.delivered(actions) if d.get("type") == "system"]
    assert error["error"]["code"] == "session_lost"
    assert error["error"]["session_id"] == SID
    message = error["error"]["message"]
    assert "history is lost" in message and "No conversation found" in message
    assert "--no-session-persistence" in message
    [spawn] = [a for a in actions if isinstance(a, m.Spawn)]
    assert spawn.args == (*ARGS, "--no-session-persistence")  # no --resume, no old id
    assert m.Finished(1) not in actions
    actions = h.answer_probe()
    report = h.report(actions)
    assert report.respawned is True
    assert [s.name for s in report.steps][-4:] == ["respawned", "exited", "started_fresh", "ready"]
    assert h.written(actions) == [user("queued").data]  # the next turn runs
    h.cli(frame(type="system", subtype="init", session_id="new-session"))
    h.cli(result(session_id="new-session"))
    assert h.results_by_turn()[2][0]["subtype"] == "success"
    assert h.machine.session_id == "new-session"


def test_a_crash_of_an_unresumable_session_goes_on_as_a_new_one_every_time() -> None:
    h = Harness()
    for attempt in range(2):
        running(h, f"turn {attempt}")
        h.feed(m.CliExited(3))  # a crash: the supervisor resumes on its own
        actions = h.feed(m.CliExited(1, stderr_tail="No conversation found"))
        codes = [d["error"]["code"] for d, _ in h.delivered(actions) if "error" in d]
        assert codes == ["session_lost"]
        h.answer_probe()
        assert h.machine.ready
    assert not h.machine.finished


def test_a_fresh_start_that_fails_too_ends_the_session() -> None:
    h = Harness()
    running(h)
    h.user(user("queued"))
    lose_the_session(h)
    actions = h.feed(m.CliExited(1, stderr_tail="Error: bad flag"))
    codes = [d["error"]["code"] for d, _ in h.delivered(actions) if "error" in d]
    assert "resume_failed" in codes
    assert m.Finished(1) in actions
    assert {turn: len(rs) for turn, rs in h.results_by_turn().items()} == {1: 1, 2: 1}


# ----------------------------------------------------------- malformed content

MALFORMED = [
    123,
    None,
    {"type": "text", "text": "not in a list"},
    [1, 2, 3],
    ["s"],
    [None],
    [{"type": "text"}],
    [{"type": "text", "text": 5}],
    [{"text": "no type"}],
    [{"type": 7}],
    [{"type": "image"}],
    [{"type": "tool_result", "content": "x"}],
]


def test_malformed_content_gets_an_error_and_a_result_and_is_never_forwarded() -> None:
    for content in MALFORMED:
        h = Harness()
        actions = h.user(frame(type="user", message={"role": "user", "content": content}))
        assert h.written(actions) == [], content
        [(error, error_turn), (synth, result_turn)] = h.delivered(actions)
        assert error["error"]["code"] == "invalid_content"
        assert "content" in error["error"]["message"]
        assert synth["type"] == "result" and synth["terminal_reason"] == "invalid_content"
        assert synth["is_error"] is True and error_turn == result_turn == 1
        assert h.written(h.user(user("good"))) == [user("good").data], content


def test_user_frames_without_a_message_are_refused_too() -> None:
    for bad in (
        frame(type="user"),
        frame(type="user", message="hi"),
        frame(type="user", message={"role": "user"}),
    ):
        h = Harness()
        actions = h.user(bad)
        assert h.written(actions) == []
        assert [d.get("type") for d, _ in h.delivered(actions)] == ["system", "result"]


def test_content_the_cli_answers_is_forwarded_unchanged() -> None:
    for content in (
        "",
        [],
        [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
        [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}],
        [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}],
        [{"type": "a_block_type_from_the_future", "anything": [1]}],
    ):
        h = Harness()
        good = frame(type="user", message={"role": "user", "content": content})
        assert h.written(h.user(good)) == [good.data], content


def test_a_malformed_turn_waits_its_place_so_results_keep_the_frames_order() -> None:
    h = Harness()
    running(h, "first")
    actions = h.user(frame(type="user", message={"role": "user", "content": [None]}))
    assert [d["error"]["code"] for d, _ in h.delivered(actions)] == ["invalid_content"]
    assert h.results_by_turn() == {}  # said at once, but its result comes in its place
    h.user(user("third"))
    actions = h.cli(result(result="r1"))
    assert [(d["type"], t) for d, t in h.delivered(actions)] == [("result", 1), ("result", 2)]
    assert h.written(actions) == [user("third").data]


def test_a_malformed_supersede_does_not_cancel_the_running_turn() -> None:
    for content in ([1, 2, 3], [{"type": "text"}], ["s"], [None]):
        h = Harness()
        running(h)
        actions = h.user(frame(type="supersede_turn", content=content))
        assert h.written(actions) == [] and not h.machine.cancelling
        assert [d["error"]["code"] for d, _ in h.delivered(actions)] == ["invalid_content"]
        h.user(user("queued"))
        actions = h.cli(result())
        assert h.results_by_turn()[2][0]["terminal_reason"] == "invalid_content"
        assert h.written(actions) == [user("queued").data]


# ------------------------------------------------------- a turn never started


def test_a_turn_the_cli_never_starts_is_cancelled_after_start_timeout() -> None:
    h = Harness(EscalationPolicy(start_timeout=30, interrupt_timeout=1, sigint_timeout=2))
    h.user(user("silently swallowed"))
    h.user(user("behind it"))
    set_model = frame(type="control_request", request_id="m1", request={"subtype": "set_model"})
    h.user(set_model)
    h.cli(response("m1"))  # the CLI answers control requests: that does not start a turn
    assert h.machine.deadline == 30
    actions = h.expire()
    [(error, turn)] = h.delivered(actions)
    assert error["error"]["code"] == "turn_not_started" and turn == 1
    assert "start_timeout" in error["error"]["message"]
    assert h.written(actions) == []  # the interrupt waits for an init that never comes
    assert m.SignalCli(signal.SIGINT) in h.expire()
    actions = h.feed(m.CliExited(0), after=1)
    [synth] = h.results_by_turn()[1]
    assert synth["terminal_reason"] == "turn_not_started"
    assert "send it again" in synth["result"]
    actions = h.answer_probe()
    assert h.written(actions) == [user("behind it").data]  # the queue goes on
    assert h.reports()[-1] is not None


def test_any_frame_from_the_cli_means_the_turn_started() -> None:
    h = Harness(EscalationPolicy(start_timeout=30))
    h.user(user("hi"))
    assert h.machine.deadline == 30
    h.cli(init())
    assert h.machine.deadline is None
    h.feed(m.DeadlinePassed(), after=100)
    assert h.machine.running_turn == 1 and not h.machine.cancelling


def test_the_start_timeout_runs_from_when_the_turn_was_sent() -> None:
    h = Harness(EscalationPolicy(start_timeout=30))
    running(h, "first")
    h.user(user("second"))
    h.feed(m.FromCli(result()), after=50)
    assert h.machine.deadline == 80


def test_a_new_session_that_cannot_be_run_says_so() -> None:
    h = Harness()
    running(h)
    h.feed(m.CliExited(3))
    h.feed(m.CliExited(1, stderr_tail="No conversation found"))
    actions = h.feed(m.SpawnFailed("cannot run 'claude': No such file or directory"))
    [error] = [d for d, _ in h.delivered(actions) if d.get("type") == "system"]
    assert error["error"]["code"] == "respawn_failed"
    assert "as a new session" in error["error"]["message"]
    assert m.Finished(1) in actions


# ------------------------------------------------- the adaptive ladder and the watchdog


def tool_use(tool_id: str) -> Frame:
    content = [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": "x"}}]
    return frame(type="assistant", message={"role": "assistant", "content": content})


def tool_result(tool_id: str) -> Frame:
    content = [{"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}]
    return frame(type="user", message={"role": "user", "content": content})


def test_an_unanswered_interrupt_skips_sigint_for_the_kill() -> None:
    policy = EscalationPolicy(interrupt_timeout=2, interrupt_ack_timeout=0.3)
    h = Harness(policy)
    running(h)
    h.feed(m.Cancel(), after=1.0)
    assert h.machine.deadline == 1.3  # the acknowledgement's deadline comes first
    actions = h.expire()
    assert m.KillTree() in actions and m.SignalCli(signal.SIGINT) not in actions
    h.feed(m.CliExited(-15, processes_killed=2), after=0.1)
    report = h.report(h.answer_probe())
    assert report.path == "kill" and report.trigger == "request" and report.respawned
    assert report.step_ms("sigint_sent") is None
    assert report.step_ms("kill_sent") == 300.0
    assert h.results_by_turn()[1][0]["result"] == "the turn was cancelled"


def test_an_acknowledged_interrupt_waits_for_its_result_as_before() -> None:
    policy = EscalationPolicy(interrupt_timeout=2, interrupt_ack_timeout=0.3)
    h = Harness(policy)
    running(h)
    h.feed(m.Cancel())
    h.feed(m.FromCli(response(h.interrupt_id())), after=0.01)
    assert h.machine.deadline == 2.0  # alive: the result may still come
    assert m.SignalCli(signal.SIGINT) in h.expire()


def test_the_ack_clock_starts_when_a_held_interrupt_is_sent() -> None:
    policy = EscalationPolicy(interrupt_timeout=2, interrupt_ack_timeout=0.3)
    h = Harness(policy)
    h.user(user("hi"))
    h.feed(m.Cancel())
    assert h.machine.deadline == 2.0  # nothing sent yet: nothing to acknowledge
    h.feed(m.FromCli(init()), after=0.5)
    assert h.machine.deadline == 0.8
    assert m.KillTree() in h.expire()


def test_an_ack_deadline_not_shorter_than_the_interrupts_turns_the_shortcut_off() -> None:
    policy = EscalationPolicy(interrupt_timeout=1, interrupt_ack_timeout=1)
    h = Harness(policy)
    running(h)
    h.feed(m.Cancel())
    assert m.SignalCli(signal.SIGINT) in h.expire()


def test_a_stopped_cli_is_killed_at_once() -> None:
    h = Harness()
    running(h)
    actions = h.feed(m.Cancel())
    assert m.CheckCliStopped() in actions  # the driver looks at the process
    actions = h.feed(m.CliStopped(), after=0.002)
    assert m.KillTree() in actions and m.SignalCli(signal.SIGINT) not in actions
    h.feed(m.CliExited(-9), after=0.02)
    report = h.report(h.answer_probe())
    assert report.path == "kill"
    assert [s.name for s in report.steps][:4] == [
        "interrupt_sent",
        "cli_stopped",
        "kill_sent",
        "tree_killed",
    ]
    assert report.step_ms("kill_sent") == 2.0


def test_a_stopped_cli_is_news_only_during_a_cancel() -> None:
    h = Harness()
    running(h)
    assert h.feed(m.CliStopped()) == []
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))
    h.cli(result(subtype="error_during_execution"))
    assert h.feed(m.CliStopped()) == []  # the turn already ended in-band
    assert h.reports() == []


def test_the_watchdog_is_off_by_default() -> None:
    h = Harness()
    running(h)
    assert h.machine.deadline is None


def test_a_stall_cancels_the_turn_and_every_frame_restarts_the_clock() -> None:
    h = Harness(EscalationPolicy(stall_timeout=10))
    h.user(user("hi"))
    assert h.machine.deadline == 10.0  # from the turn's start
    h.feed(m.FromCli(init()), after=4)
    assert h.machine.deadline == 14.0
    h.feed(m.FromCli(frame(type="stream_event", event={})), after=9)
    assert h.machine.deadline == 23.0
    actions = h.expire()
    assert h.written(actions)[0]["request"]["subtype"] == "interrupt"
    assert h.machine.cancelling
    h.cli(response(h.interrupt_id()))
    own = result(subtype="error_during_execution", terminal_reason="aborted_streaming")
    h.cli(own)
    report = h.report(h.feed(m.TurnProcessesKilled(0)))
    assert report.trigger == "stall" and report.path == "interrupt"
    assert h.results_by_turn() == {1: [own.data]}  # the CLI answered: its own result
    notice = [d for d, _ in h.delivered() if d.get("subtype") == "supervisor_cancel"]
    assert notice[0]["trigger"] == "stall" and notice[0]["report"]["trigger"] == "stall"
    assert h.machine.deadline is None  # no turn runs: no watchdog


def test_a_running_tool_pauses_the_stall_clock_until_its_result() -> None:
    h = Harness(EscalationPolicy(stall_timeout=10))
    running(h)
    h.feed(m.FromCli(tool_use("t1")), after=1)
    h.feed(m.FromCli(tool_use("t2")), after=1)  # parallel tool calls
    assert h.machine.deadline is None
    h.feed(m.FromCli(frame(type="system", subtype="task_started")), after=300)
    h.feed(m.FromCli(tool_result("t1")), after=300)
    assert h.machine.deadline is None  # t2 still runs
    h.feed(m.FromCli(tool_result("t2")), after=1)
    assert h.machine.deadline == 613.0
    h.feed(m.FromCli(result()), after=2)
    assert h.reports() == [] and h.machine.deadline is None


def test_a_stall_the_cli_does_not_answer_gets_a_result_naming_the_limit() -> None:
    h = Harness(EscalationPolicy(stall_timeout=30, interrupt_ack_timeout=0.5))
    running(h)
    h.expire()  # the stall: the interrupt goes out
    h.expire()  # unanswered: the kill
    actions = h.feed(m.CliExited(-15), after=0.1)
    [(synth, turn)] = [(d, t) for d, t in h.delivered(actions) if d.get("type") == "result"]
    assert turn == 1 and synth["supervisor"] == {"synthesized": True}
    assert "stall_timeout" in synth["result"] and "30 s" in synth["result"]
    report = h.report(h.answer_probe())
    assert report.trigger == "stall" and report.path == "kill"


def test_the_turn_timeout_ends_a_turn_even_while_a_tool_runs() -> None:
    h = Harness(EscalationPolicy(turn_timeout=60, stall_timeout=10))
    running(h)
    h.feed(m.FromCli(tool_use("t1")), after=1)
    assert h.machine.deadline == 60.0
    h.expire()
    assert h.machine.cancelling
    h.cli(response(h.interrupt_id()))
    h.expire()  # the result never came: SIGINT
    actions = h.feed(m.CliExited(0), after=1)
    [synth] = [d for d, _ in h.delivered(actions) if d.get("type") == "result"]
    assert "turn_timeout" in synth["result"] and "60 s" in synth["result"]
    report = h.report(h.answer_probe())
    assert report.trigger == "turn_timeout" and report.path == "sigint"


def test_the_turn_timeout_runs_from_when_the_turn_was_forwarded() -> None:
    h = Harness(EscalationPolicy(turn_timeout=5))
    running(h, "one")
    h.user(user("two"))
    h.feed(m.FromCli(result()), after=4)  # turn 2 starts at 4
    assert h.machine.running_turn == 2 and h.machine.deadline == 9.0


def test_every_cancel_says_what_started_it() -> None:
    interrupt = frame(type="control_request", request_id="u1", request={"subtype": "interrupt"})
    starts: list[m.Event] = [
        m.Cancel(trigger="sigint"),
        user_event(frame(type="cancel_turn")),
        user_event(frame(type="supersede_turn", content="instead")),
        user_event(interrupt),
    ]
    triggers = []
    for start in starts:
        h = Harness()
        running(h)
        h.feed(start)
        h.cli(result(subtype="error_during_execution"))
        triggers.append(h.report(h.feed(m.TurnProcessesKilled(0))).trigger)
    assert triggers == ["sigint", "request", "supersede", "request"]


def test_a_rung_is_added_through_the_table_alone() -> None:
    """A SIGTERM rung between SIGINT and the kill: one new row, one changed arrow."""
    sigterm = "sigterm"
    ladder = {
        **m.LADDER,
        m.SIGINT: attrs.evolve(
            m.LADDER[m.SIGINT], on={**m.LADDER[m.SIGINT].on, m.Trigger.DEADLINE: m.Go(sigterm)}
        ),
        sigterm: m.Rung(
            enter=m.SignalCli(signal.SIGTERM),
            timeout="kill_timeout",
            step="sigterm_sent",
            on={
                m.Trigger.DEADLINE: m.Go(m.KILL),
                m.Trigger.EXITED: m.Go(m.End.CLI_GONE, "exited"),
            },
        ),
    }
    policy = EscalationPolicy(interrupt_timeout=2, sigint_timeout=3, kill_timeout=4)
    h = Harness(policy, ladder=ladder)
    running(h)
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))
    assert m.SignalCli(signal.SIGINT) in h.expire()
    assert m.SignalCli(signal.SIGTERM) in h.expire()
    assert h.machine.deadline == 2 + 3 + 4  # the new rung's own deadline
    h.feed(m.CliExited(-15), after=1)
    report = h.report(h.answer_probe())
    assert [s.name for s in report.steps] == [
        "interrupt_sent",
        "interrupt_answered",
        "sigint_sent",
        "sigterm_sent",
        "exited",
        "respawned",
        "ready",
    ]
    assert report.path == "sigint" and report.respawned
    assert h.results_by_turn()[1][0]["terminal_reason"] == "cancelled"

    # And when SIGTERM is ignored too, the ladder goes on to the kill, as before.
    h = Harness(policy, ladder=ladder)
    running(h)
    h.feed(m.Cancel())
    h.cli(response(h.interrupt_id()))
    h.expire()
    h.expire()
    assert m.KillTree() in h.expire()
    h.feed(m.CliExited(-9))
    assert h.report(h.answer_probe()).path == "kill"


def test_every_phase_of_the_ladder_is_reachable_and_can_end() -> None:
    """The table is consistent: arrows lead to rows, rows name real deadlines, and from
    every phase some path of triggers leads to an end."""
    policy = EscalationPolicy()
    for phase, rung in m.LADDER.items():
        assert isinstance(getattr(policy, rung.timeout), float), phase
        if rung.answer_timeout is not None:
            assert isinstance(getattr(policy, rung.answer_timeout), float), phase
        for go in rung.on.values():
            assert go.to is None or isinstance(go.to, m.End) or go.to in m.LADDER, (phase, go)
    reachable = {m.INTERRUPT, m.EOF, m.KILL, m.RESPAWN}  # where cancels, closes, stops and
    todo = list(reachable)  # recoveries enter
    while todo:
        for go in m.LADDER[todo.pop()].on.values():
            if isinstance(go.to, str) and go.to not in reachable:
                reachable.add(go.to)
                todo.append(go.to)
    assert reachable == set(m.LADDER)
    for rung in m.LADDER.values():
        assert m.Trigger.DEADLINE in rung.on and m.Trigger.EXITED in rung.on


# ------------------------------------------------ a read's frames in one event


def _tool_use(tool_id: str) -> Frame:
    block = {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}
    return frame(type="assistant", message={"role": "assistant", "content": [block]})


def _tool_result(tool_id: str) -> Frame:
    block = {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}
    return frame(type="user", message={"role": "user", "content": [block]})


#: Frames as the CLI writes them (compact, `type` first), of every kind the machine
#: looks at or only relays.
_CLI_FRAMES = [
    frame(type="assistant", message={"role": "assistant", "content": "text"}, session_id=SID),
    frame(type="stream_event", event={"type": "content_block_delta"}),
    frame(type="brand_new", nested={"x": [1, 2]}),
    init(),
    result(result="done"),
    result(subtype="error_during_execution", is_error=True),
    response("supervisor-interrupt-1"),
    response("user-request-9"),
    _tool_use("t1"),
    _tool_result("t1"),
    frame(type="system", subtype="status", session_id="another-session"),
]


def _one_by_one(h: Harness, lines: list[bytes]) -> list[m.Action]:
    actions: list[m.Action] = []
    for line in lines:
        lazy = decode_line(line, lazy=True)
        assert isinstance(lazy, Frame)
        actions += h.feed(m.FromCli(lazy))
    return actions


def _flattened(actions: list[m.Action]) -> list[object]:
    """Actions with each run of lines spelled out as one delivery per frame."""
    out: list[object] = []
    for action in actions:
        if isinstance(action, m.DeliverLines):
            out += [("deliver", line, action.turn) for line in action.lines]
        elif isinstance(action, m.Deliver):
            out.append(("deliver", action.frame.raw, action.turn))
        else:
            out.append(action)
    return out


def _state(h: Harness) -> object:
    machine = h.machine
    return (
        machine.running_turn,
        machine.queued_turns,
        machine.deadline,
        machine.session_id,
        machine.cancelling,
        machine.escalating,
    )


@settings(max_examples=500)
@given(
    picks=st.lists(st.integers(0, len(_CLI_FRAMES) - 1), min_size=1, max_size=30),
    turns=st.integers(0, 3),
    cancel=st.booleans(),
    stall=st.booleans(),
)
def test_a_reads_frames_in_one_event_do_what_they_would_one_at_a_time(
    picks: list[int], turns: int, cancel: bool, stall: bool
) -> None:
    policy = EscalationPolicy(stall_timeout=5.0 if stall else None)
    lines = [_CLI_FRAMES[i].raw for i in picks]
    kinds = cheap_types(lines)
    assert None not in kinds  # written as the CLI writes them
    machines = Harness(policy), Harness(policy)
    for h in machines:
        for n in range(turns):
            h.user(user(f"turn {n}"))
        if cancel:
            h.feed(m.Cancel(), after=0.5)
        h.now += 1.0
    one, batch = machines
    expected = _one_by_one(one, lines)
    actions = batch.feed(m.FromCliLines(lines, [k for k in kinds if k is not None]))
    assert _flattened(actions) == _flattened(expected)
    assert _state(batch) == _state(one)


def test_a_result_in_the_middle_of_a_read_ends_its_turn_and_the_rest_is_the_next_ones() -> None:
    h = Harness()
    h.user(user("one"))
    h.user(user("two"))
    text = [frame(type="assistant", n=n, session_id=SID).raw for n in range(3)]
    lines = [init().raw, *text, result(result="r1").raw, init().raw, *text]
    kinds = [k for k in cheap_types(lines) if k is not None]
    actions = h.feed(m.FromCliLines(lines, kinds), after=0.1)
    delivered = _flattened([a for a in actions if isinstance(a, m.Deliver | m.DeliverLines)])
    # Every frame, byte for byte and in order; those after the result belong to turn 2.
    assert delivered == [("deliver", line, 1) for line in lines[:5]] + [
        ("deliver", line, 2) for line in lines[5:]
    ]
    assert h.written(actions) == [user("two").data]  # the next turn went to the CLI
    assert h.machine.running_turn == 2
    assert [a.turn for a in actions if isinstance(a, m.DeliverLines)] == [1, 2]  # two runs


def test_frames_that_decide_nothing_go_on_as_one_run() -> None:
    h = Harness()
    h.user(user("hi"))
    lines = [frame(type="assistant", n=n).raw for n in range(100)]
    actions = h.feed(m.FromCliLines(lines, ["assistant"] * 100), after=1.0)
    assert actions == [m.DeliverLines(lines, ["assistant"] * 100, 1)]
    # The CLI was heard: the start timeout is off, and a stall would count from now.
    assert h.machine.deadline is None


def test_our_own_answers_in_a_read_are_not_relayed() -> None:
    h = Harness()
    h.user(user("hi"))
    text = frame(type="assistant", message={"role": "assistant", "content": "a"}).raw
    ours = response("supervisor-probe-7").raw
    lines = [text, ours, text]
    actions = h.feed(m.FromCliLines(lines, ["assistant", "control_response", "assistant"]))
    assert _flattened(actions) == [("deliver", text, 1), ("deliver", text, 1)]


def test_with_the_stall_watchdog_a_tool_call_in_a_read_still_pauses_it() -> None:
    h = Harness(EscalationPolicy(stall_timeout=5.0))
    h.user(user("hi"))
    lines = [init().raw, _tool_use("t1").raw, frame(type="stream_event").raw]
    h.feed(m.FromCliLines(lines, ["system", "assistant", "stream_event"]), after=1.0)
    assert h.machine.deadline is None  # a tool runs: no stall deadline
    h.feed(m.FromCliLines([_tool_result("t1").raw], ["user"]), after=30.0)
    assert h.machine.deadline == h.now + 5.0  # its result came: the stall clock runs again
