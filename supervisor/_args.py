"""The command lines: which arguments are the wrapper's and which the CLI's, and the
session flags, the only ones of the CLI's that the supervisor rewrites.

Standard library only: the executable splits its arguments before it imports anything
else, to start the CLI early (`_cli.early_start`).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see `_launch`)
if TYPE_CHECKING:
    from collections.abc import Sequence

#: Flags that choose which session the CLI runs, with whether they take a value.
#: On a respawn they are all replaced by `--resume <id>`.
SESSION_FLAGS: dict[str, bool] = {
    "--resume": True,
    "-r": True,
    "--session-id": True,
    "--continue": False,
    "-c": False,
    "--fork-session": False,
}


def without_session_flags(args: Sequence[str]) -> list[str]:
    """`args` minus every session flag (and its value), in both `--f v` and `--f=v` forms."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in SESSION_FLAGS:
            skip_value = SESSION_FLAGS[name] and "=" not in arg
            continue
        kept.append(arg)
    return kept


def resume_args(args: Sequence[str], session_id: str | None) -> list[str]:
    """The arguments for a respawn: the user's own, resuming `session_id`.

    With no session id known (the CLI never said one), the original arguments are used
    unchanged: that restarts whatever session they named, or a fresh one.
    """
    if session_id is None:
        return list(args)
    return [*without_session_flags(args), "--resume", session_id]


def split_invocation(argv: Sequence[str], prog: str) -> tuple[str, list[str], list[str]]:
    """(mode, the wrapper's own arguments, the CLI's arguments) of a command line.

    The mode is "run", "demo", "help" or "version". Invoked as `claude` (the wrapper
    standing in for the CLI), or without `--`, every argument is the CLI's: the
    wrapper's options then come from the environment only.
    """
    args = list(argv)
    if os.path.basename(prog) != "claude":
        if args[:1] == ["demo"]:
            return "demo", args[1:], []
        if args in (["--help"], ["-h"]):
            return "help", [], []
        if args == ["--version"]:
            return "version", [], []
        if "--" in args:
            split = args.index("--")
            return "run", args[:split], args[split + 1 :]
    return "run", [], args


def wants_stream_json_input(claude_args: Sequence[str]) -> bool:
    """Whether the CLI will read stream-json frames (else the wrapper passes through)."""
    args = list(claude_args)
    return any(
        arg == "--input-format=stream-json"
        or (arg == "--input-format" and args[i + 1 : i + 2] == ["stream-json"])
        for i, arg in enumerate(args)
    )
