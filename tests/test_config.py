"""Reading the executable's options: flags, variables, masquerade, stream-json detection."""

from __future__ import annotations

import pytest

from supervisor._config import (
    OPTIONS,
    ConfigError,
    build_parser,
    parse_invocation,
    wants_stream_json_input,
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-p", "--input-format", "stream-json"), True),
        (["--input-format=stream-json", "-p"], True),
        (("-p", "--input-format", "text"), False),
        (("-p", "hello"), False),
        (("--input-format",), False),
    ],
)
def test_stream_json_input_is_detected(args: tuple[str, ...], expected: bool) -> None:
    assert wants_stream_json_input(args) is expected


def test_everything_after_the_separator_goes_to_the_cli() -> None:
    inv = parse_invocation(["--kill-timeout", "2", "--", "-p", "--kill-timeout", "9"], "x")
    assert inv.claude_args == ("-p", "--kill-timeout", "9")
    assert inv.config.policy.kill_timeout == 2


def test_without_separator_every_argument_is_the_clis_and_options_come_from_env() -> None:
    env = {"CLAUDE_SUPERVISOR_KILL_TIMEOUT": "4", "CLAUDE_SUPERVISOR_CLAUDE": "/opt/claude"}
    inv = parse_invocation(["--kill-timeout", "2", "-p"], "claude-supervisor", env)
    assert inv.claude_args == ("--kill-timeout", "2", "-p")
    assert inv.config.policy.kill_timeout == 4
    assert inv.config.claude == "/opt/claude"


def test_invoked_as_claude_even_help_goes_to_the_cli() -> None:
    inv = parse_invocation(["--help"], "/somewhere/bin/claude", {})
    assert inv.mode == "run" and inv.claude_args == ("--help",)


def test_flags_win_over_the_environment() -> None:
    env = {"CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT": "9"}
    inv = parse_invocation(["--interrupt-timeout", "0.25", "--"], "x", env)
    assert inv.config.policy.interrupt_timeout == 0.25


def test_every_option_has_a_variable_named_after_its_flag() -> None:
    assert {o.variable for o in OPTIONS} == {
        "CLAUDE_SUPERVISOR_CLAUDE",
        "CLAUDE_SUPERVISOR_INTERRUPT_TIMEOUT",
        "CLAUDE_SUPERVISOR_SIGINT_TIMEOUT",
        "CLAUDE_SUPERVISOR_KILL_TIMEOUT",
        "CLAUDE_SUPERVISOR_EXIT_TIMEOUT",
        "CLAUDE_SUPERVISOR_READY_TIMEOUT",
        "CLAUDE_SUPERVISOR_REPORT_FILE",
        "CLAUDE_SUPERVISOR_MAX_LINE_BYTES",
        "CLAUDE_SUPERVISOR_START_TIMEOUT",
        "CLAUDE_SUPERVISOR_INTERRUPT_ACK_TIMEOUT",
        "CLAUDE_SUPERVISOR_STALL_TIMEOUT",
        "CLAUDE_SUPERVISOR_TURN_TIMEOUT",
    }


def test_the_watchdog_is_off_unless_asked_for() -> None:
    policy = parse_invocation(["--"], "x", {}).config.policy
    assert policy.stall_timeout is None and policy.turn_timeout is None
    assert policy.interrupt_ack_timeout == 0.5


def test_watchdog_limits_and_the_ack_deadline_from_flags_and_environment() -> None:
    env = {"CLAUDE_SUPERVISOR_TURN_TIMEOUT": "600", "CLAUDE_SUPERVISOR_STALL_TIMEOUT": "9"}
    argv = ["--stall-timeout", "45", "--interrupt-ack-timeout", "0.2", "--"]
    policy = parse_invocation(argv, "x", env).config.policy
    assert policy.stall_timeout == 45  # the flag wins over the variable
    assert policy.turn_timeout == 600
    assert policy.interrupt_ack_timeout == 0.2
    masked = parse_invocation(["-p"], "claude", {"CLAUDE_SUPERVISOR_STALL_TIMEOUT": "30"})
    assert masked.config.policy.stall_timeout == 30


def test_start_timeout_from_flag_or_environment() -> None:
    assert parse_invocation(["--"], "x", {}).config.policy.start_timeout == 60
    env = {"CLAUDE_SUPERVISOR_START_TIMEOUT": "45"}
    assert parse_invocation(["--"], "x", env).config.policy.start_timeout == 45
    inv = parse_invocation(["--start-timeout", "5", "--"], "x", env)
    assert inv.config.policy.start_timeout == 5
    with pytest.raises(ConfigError, match="--start-timeout: must be a positive"):
        parse_invocation(["--start-timeout", "0", "--"], "x", {})


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--sigint-timeout", "nan", "--"], {}, "--sigint-timeout: must be a positive"),
        (["--max-line-bytes", "12", "--"], {}, "at least 1024"),
        (["--"], {"CLAUDE_SUPERVISOR_EXIT_TIMEOUT": "x"}, "CLAUDE_SUPERVISOR_EXIT_TIMEOUT"),
        (["--nope", "--"], {}, "unrecognized arguments"),
        (["--stall-timeout", "0", "--"], {}, "--stall-timeout: must be a positive"),
        (["--turn-timeout", "-5", "--"], {}, "--turn-timeout: must be a positive"),
        (["--interrupt-ack-timeout", "inf", "--"], {}, "--interrupt-ack-timeout: must be"),
        (["--"], {"CLAUDE_SUPERVISOR_TURN_TIMEOUT": "soon"}, "CLAUDE_SUPERVISOR_TURN_TIMEOUT"),
    ],
)
def test_bad_values_are_config_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_invocation(argv, "x", env)


def test_help_states_the_defaults_the_policy_really_has() -> None:
    """--help reads each default from EscalationPolicy and WrapperConfig, so the two
    cannot drift apart: what it says is what a run without the flag uses."""
    help_text = " ".join(build_parser("claude-supervisor").format_help().split())
    policy = parse_invocation(["--", "-p"], "claude-supervisor", {}).config.policy
    for option in OPTIONS:
        value = getattr(policy, option.name, None)
        if option.name in {"stall_timeout", "turn_timeout"}:
            assert value is None
            assert f"{option.flag} VALUE" in help_text
            assert "(default off)" in help_text.split(option.flag + " VALUE", 1)[1][:300]
        elif isinstance(value, float):
            said = help_text.split(option.flag + " VALUE", 1)[1][:300]
            assert f"(default {value:g})" in said, option.flag
