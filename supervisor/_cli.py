"""The `claude-supervisor` executable: parse the invocation, pick a mode, report failures.

Exit codes: the CLI's own; 128+N when stopped by signal N; 2 for a bad option or
variable; 127 when the CLI cannot be found or started.
"""

from __future__ import annotations

import signal

# First of all, before the imports below (and trio's, once the mode is known) take their
# time: a parent's SIGINT while the wrapper starts must not kill it (the relay installs
# its own handler; SIGINT while no turn runs does nothing, by the SIGINT contract).
signal.signal(signal.SIGINT, signal.SIG_IGN)

import os  # noqa: E402

#: Who started us, read before the slow imports: if it dies meanwhile, we still notice.
STARTED_BY = os.getppid()
import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

# Only what every mode needs: trio (a tenth of a second) is imported by the modes that
# run, `importlib.metadata` by --version alone.
from ._config import (  # noqa: E402
    ConfigError,
    Invocation,
    parse_invocation,
    wants_stream_json_input,
)

#: Set by the helper for the CLI it starts: a wrapper whose parent is that helper has been
#: started as "the CLI" by another wrapper, which would recurse forever.
HELPER_PID_VARIABLE = "CLAUDE_SUPERVISOR_HELPER_PID"


def _error(message: str, code: int) -> int:
    print(f"claude-supervisor: {message}", file=sys.stderr)
    return code


def _is_this_wrapper(path: Path) -> bool:
    """Whether an executable is this wrapper (a copy, a symlink, or its entry-point script)."""
    me = Path(sys.argv[0]).resolve()
    if path.resolve() == me:
        return True
    try:
        head = path.read_bytes()[:4096] if path.stat().st_size < 65536 else b""
    except OSError:
        return False
    return b"supervisor._cli" in head or b"python -m supervisor " in head


def find_real_claude(path_variable: str | None = None) -> str | None:
    """The first `claude` on PATH that is not this wrapper."""
    for directory in (path_variable or os.environ.get("PATH", "")).split(os.pathsep):
        candidate = shutil.which("claude", path=directory or ".")
        if candidate and not _is_this_wrapper(Path(candidate)):
            return candidate
    return None


#: Where an executable named `claude` sits inside the folders users point at by mistake:
#: an npm prefix (`npm install --prefix DIR`), a global prefix, the package itself.
_CLAUDE_INSIDE = ("node_modules/.bin/claude", "bin/claude", "claude", "cli.js")


def claude_path_problem(claude: str) -> str | None:
    """Why `claude` cannot be the CLI to run, said with what to do; None if it can.

    Checked before anything starts: a folder passes the `X_OK` test (a directory is
    searchable), and a wrong path found later would fail far from its cause.
    """
    how = "give the path of the `claude` executable with --claude or CLAUDE_SUPERVISOR_CLAUDE"
    if os.path.isdir(claude):
        inside = [
            os.path.join(claude, name)
            for name in _CLAUDE_INSIDE
            if os.path.isfile(os.path.join(claude, name))
            and os.access(os.path.join(claude, name), os.X_OK)
        ]
        hint = f" (did you mean {inside[0]}?)" if inside else ""
        return f"the Claude Code CLI {claude!r} is a directory, not an executable file; {how}{hint}"
    if not os.path.exists(claude):
        return (
            f"the Claude Code CLI {claude!r} does not exist; {how} "
            "(`command -v claude` shows where it is installed)"
        )
    if not os.path.isfile(claude) or not os.access(claude, os.X_OK):
        return (
            f"the Claude Code CLI {claude!r} is not an executable file; make it executable "
            f"(chmod +x) or {how}"
        )
    return None


def _resolve_claude(named: str) -> tuple[str | None, str | None]:
    """(path, problem): a bare name is looked up on PATH, as a shell would; then checked."""
    claude = named
    if os.sep not in named:
        found = shutil.which(named)
        if found is None:
            return None, (
                f"--claude {named}: no such executable on PATH; give its path, or install "
                "the CLI (npm install -g @anthropic-ai/claude-code)"
            )
        claude = found
    return claude, claude_path_problem(claude)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        invocation = parse_invocation(args, sys.argv[0])
    except ConfigError as exc:
        return _error(f"{exc} (see claude-supervisor --help)", 2)
    if invocation.mode == "help":
        print(invocation.help_text, end="")
        return 0
    if invocation.mode == "version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"claude-supervisor {version('claude-supervisor')}")
        except PackageNotFoundError:
            print("claude-supervisor (not installed)")
        return 0
    if invocation.mode == "demo":
        import trio

        from ._demo import run_demo

        if invocation.config.claude is not None:
            _, problem = _resolve_claude(invocation.config.claude)
            if problem is not None:
                return _error(problem, 127)

        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C ends the demo

        return trio.run(run_demo, invocation.config.claude)
    return _run(invocation)


def _run(invocation: Invocation) -> int:
    helper_pid = os.environ.get(HELPER_PID_VARIABLE)
    if helper_pid is not None and helper_pid == str(os.getppid()):
        return _error(
            "started as the CLI by claude-supervisor itself; set --claude or "
            "CLAUDE_SUPERVISOR_CLAUDE to the real Claude Code CLI",
            2,
        )
    claude = invocation.config.claude or find_real_claude()
    if claude is None:
        return _error(
            "cannot find the Claude Code CLI: no `claude` on PATH other than this wrapper; "
            "install it (npm install -g @anthropic-ai/claude-code) or set --claude / "
            "CLAUDE_SUPERVISOR_CLAUDE",
            127,
        )
    resolved, problem = _resolve_claude(claude)
    if problem is not None:
        return _error(problem, 127)
    assert resolved is not None
    claude = resolved
    if wants_stream_json_input(invocation.claude_args):
        # The CLI first, so that it boots while trio and the relay are imported.
        from ._launch import prestart
        from ._policy import TREE_GRACE

        policy = invocation.config.policy
        early = prestart(
            [claude, *invocation.claude_args], kill_timeout=policy.kill_timeout, grace=TREE_GRACE
        )
        import trio

        from ._relay import Relay

        relay = Relay(invocation.config, claude, invocation.claude_args, STARTED_BY, early)
        return trio.run(relay.run)
    import trio

    from ._passthrough import run_passthrough

    try:
        return trio.run(
            run_passthrough, invocation.config, claude, invocation.claude_args, STARTED_BY
        )
    except FileNotFoundError as exc:
        return _error(str(exc), 127)
