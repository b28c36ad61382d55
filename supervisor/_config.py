"""The executable's configuration: flags, environment variables, and how they combine.

Every option has an environment variable, because the executable is often started by
something that only lets you choose the program and the CLI's own arguments (an SDK's
`cli_path`, a bridge that spawns `claude`): then every argument belongs to the CLI and
the supervisor's options can only come from the environment. Flags win over it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from ._args import split_invocation
from ._args import wants_stream_json_input as wants_stream_json_input
from ._framing import DEFAULT_MAX_LINE_BYTES
from ._policy import EscalationPolicy

ENV_PREFIX = "CLAUDE_SUPERVISOR_"


class ConfigError(Exception):
    """A bad option or variable; the executable prints it and exits with code 2."""


@attrs.frozen
class WrapperConfig:
    claude: str | None = None  # None: the first `claude` on PATH that is not this wrapper
    policy: EscalationPolicy = attrs.field(factory=EscalationPolicy)
    report_file: Path | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number of bytes, got {text!r}") from None
    if value < 1024:
        raise ValueError(f"must be at least 1024 bytes, got {text!r}")
    return value


@attrs.frozen
class Option:
    """One supervisor option: its flag, its variable, how to read it, and what it means."""

    name: str  # the WrapperConfig or EscalationPolicy field
    flag: str
    parse: Callable[[str], Any]
    help: str

    @property
    def default(self) -> str | None:
        """The default, worded for --help, read from where it is defined (None: none to say)."""
        fields = attrs.fields_dict(EscalationPolicy) | attrs.fields_dict(WrapperConfig)
        field = fields.get(self.name)
        if field is None or (field.default is None and self.name not in POLICY_FIELDS):
            return None
        value = field.default
        return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()


OPTIONS = (
    Option("claude", "--claude", str, "the real Claude Code CLI (default: first `claude` on PATH "
           "that is not this wrapper)"),
    Option("interrupt_timeout", "--interrupt-timeout", _seconds,
           "seconds to wait for the turn's result after the in-band interrupt"),
    Option("sigint_timeout", "--sigint-timeout", _seconds,
           "seconds to wait for the CLI to exit after SIGINT"),
    Option("kill_timeout", "--kill-timeout", _seconds,
           "seconds between SIGTERM and SIGKILL for the CLI's process tree"),
    Option("exit_timeout", "--exit-timeout", _seconds,
           "seconds the CLI may take to exit after its input ends, before the ladder"),
    Option("ready_timeout", "--ready-timeout", _seconds,
           "seconds a respawned CLI may take to answer before the resume counts as failed"),
    Option("report_file", "--report-file", Path,
           "append every cancel report to this file, one JSON object a line"),
    Option("max_line_bytes", "--max-line-bytes", _size,
           "most buffered to parse one line, in bytes; longer CLI lines are relayed in pieces, "
           "longer input lines dropped"),
    Option("start_timeout", "--start-timeout", _seconds,
           "seconds the CLI may stay silent after a turn is sent to it before the turn counts "
           "as never started and is cancelled"),
    Option("interrupt_ack_timeout", "--interrupt-ack-timeout", _seconds,
           "seconds the CLI may take to acknowledge the in-band interrupt before the "
           "ladder skips SIGINT and kills the tree"),
    Option("stall_timeout", "--stall-timeout", _seconds,
           "cancel the running turn when the CLI writes nothing for this many seconds "
           "while no tool call runs"),
    Option("turn_timeout", "--turn-timeout", _seconds,
           "cancel a turn that runs longer than this many seconds, tools included "
           ""),
)  # fmt: skip

POLICY_FIELDS = {a.name for a in attrs.fields(EscalationPolicy)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        usage=f"{prog} [OPTIONS] -- [CLAUDE ARGS...]\n       {prog} demo [--claude PATH]",
        description=(
            "Run the Claude Code CLI under supervision: in stream-json mode, cancel_turn "
            "and supersede_turn frames and SIGINT cancel the running turn through the "
            "ladder (in-band interrupt, SIGINT, tree kill) and the session is resumed. "
            "Every option can also be set by its environment variable; flags win."
        ),
        epilog="Without `--`, every argument goes to the CLI and options come from the "
        "environment only (this is how the wrapper stands in for `claude`).",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar="VALUE",
            help=option.help
            + ("" if option.default is None else f" (default {option.default})")
            + f" [env {option.variable}]",
        )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def from_sources(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> WrapperConfig:
    """Combines flag values (None: not given) with the environment; flags win."""
    config: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    for option in OPTIONS:
        raw = flags.get(option.name)
        source = option.flag
        if raw is None:
            raw = environ.get(option.variable) or None
            source = option.variable
        if raw is None:
            continue
        try:
            value = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        (policy if option.name in POLICY_FIELDS else config)[option.name] = value
    return WrapperConfig(policy=EscalationPolicy(**policy), **config)


@attrs.frozen
class Invocation:
    mode: str  # "run", "demo", "help", "version"
    config: WrapperConfig
    claude_args: tuple[str, ...] = ()
    help_text: str = ""


def parse_invocation(
    argv: Sequence[str], prog: str, environ: Mapping[str, str] = os.environ
) -> Invocation:
    """Reads the command line. Raises ConfigError for a bad option or variable."""
    mode, own, claude_args = split_invocation(argv, prog)
    if mode == "demo":
        demo = _Parser(prog="claude-supervisor demo", description="a scripted session")
        demo.add_argument("--claude", default=None)
        parsed = demo.parse_args(own)
        return Invocation("demo", from_sources({"claude": parsed.claude}, environ))
    if mode == "help":
        parser = build_parser("claude-supervisor")
        return Invocation("help", WrapperConfig(), help_text=parser.format_help())
    if mode == "version":
        return Invocation("version", WrapperConfig())
    flags: dict[str, str | None] = {}
    if own:
        parsed = build_parser("claude-supervisor").parse_args(own)
        if parsed.version:
            return Invocation("version", WrapperConfig())
        flags = {option.name: getattr(parsed, option.name) for option in OPTIONS}
    return Invocation("run", from_sources(flags, environ), tuple(claude_args))
