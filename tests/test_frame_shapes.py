"""What the supervisor writes in the CLI's name has the shape of the CLI's own frames.

The reference frames were recorded from the real CLI (tests/realcli/cli_frames.py writes
tests/data/cli_frames/; tests/realcli/test_frame_shapes_live.py re-records them live, so a
CLI bump that changes them is caught). The official Python SDK's own parser must also
accept every frame the supervisor writes.
"""

from __future__ import annotations

from claude_agent_sdk import ResultMessage
from claude_agent_sdk._internal.message_parser import parse_message
from frame_shapes import RECORDED, mismatches, recorded

from supervisor import _protocol as protocol
from supervisor.testing.claude_install import PINNED_VERSION

NULLABLE = frozenset({"stop_reason"})


def synthesized() -> dict[str, object]:
    return protocol.synthesized_result(
        session_id="s1", duration_ms=12.4, terminal_reason="cli_exited", message="it died"
    ).data


def test_the_recorded_frames_are_the_pinned_clis() -> None:
    assert (RECORDED / "VERSION").read_text().strip() == PINNED_VERSION


def test_a_synthesized_result_has_the_shape_of_the_clis_error_result() -> None:
    cli = recorded("result_error_during_execution")
    assert cli["subtype"] == "error_during_execution" and isinstance(cli["errors"], list)
    assert (
        mismatches(
            cli,
            synthesized(),
            omitted=protocol.SYNTHESIZED_RESULT_OMITS,
            added=protocol.SYNTHESIZED_RESULT_ADDS,
            nullable=NULLABLE,
        )
        == []
    )


def test_the_supervisors_interrupt_answer_has_the_shape_of_the_clis() -> None:
    cli = recorded("control_response_success")
    assert mismatches(cli, protocol.control_success("r1").data) == []


def test_the_supervisors_error_answer_has_the_shape_of_the_clis() -> None:
    cli = recorded("control_response_error")
    assert mismatches(cli, protocol.control_error("r1", "the session failed").data) == []


def test_the_shape_check_sees_a_missing_or_retyped_field() -> None:
    cli = recorded("result_error_during_execution")
    broken = {k: v for k, v in synthesized().items() if k != "errors"}
    broken["num_turns"] = "0"
    assert mismatches(cli, broken, added=protocol.SYNTHESIZED_RESULT_ADDS, nullable=NULLABLE) == [
        "errors: missing (the CLI writes array)",
        "fast_mode_disabled_reason: missing (the CLI writes string)",
        "fast_mode_state: missing (the CLI writes string)",
        "num_turns: string, the CLI writes number",
        "queued_turn_count: missing (the CLI writes number)",
        "result_index: missing (the CLI writes number)",
        "subagent_stats: missing (the CLI writes object)",
    ]


def test_the_python_sdk_parses_a_synthesized_result() -> None:
    message = parse_message(synthesized())
    assert isinstance(message, ResultMessage)
    assert message.is_error and message.subtype == "error_during_execution"
    assert message.errors == ["it died"] and message.result == "it died"
    assert message.session_id == "s1" and message.terminal_reason == "cli_exited"


def test_control_answers_carry_what_the_python_sdk_reads() -> None:
    # The SDK's reader matches `response.request_id`, treats subtype "error" as a failure
    # with `response.error` as its message, and hands any other answer back as is.
    ok = protocol.control_success("r1").data["response"]
    assert (ok["request_id"], ok["subtype"], ok["response"]) == (
        "r1",
        "success",
        {"still_queued": []},
    )
    error = protocol.control_error("r2", "the session failed").data["response"]
    assert (error["request_id"], error["subtype"], error["error"]) == (
        "r2",
        "error",
        "the session failed",
    )
