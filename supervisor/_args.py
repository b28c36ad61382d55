"""The CLI's command line: the session flags are the only ones the supervisor rewrites."""

from __future__ import annotations

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
