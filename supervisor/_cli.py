"""The `claude-supervisor` executable: parse the invocation, pick a mode, report failures.

Exit codes: the CLI's own; 128+N when stopped by signal N; 2 for a bad option or
variable; 127 when the CLI cannot be found or started.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see `_launch`)
if TYPE_CHECKING:
    import signal
    from collections.abc import Mapping, Sequence

    from ._config import Invocation
    from ._launch import Prestarted
else:  # `signal` is `_signal` wrapped in enums: importing `enum` costs 4 ms at start
    import _signal as signal

# First of all, before the imports below (and trio's, once the mode is known) take their
# time: a parent's SIGINT while the wrapper starts must not kill it (the relay installs
# its own handler; SIGINT while no turn runs does nothing, by the SIGINT contract).
signal.signal(signal.SIGINT, signal.SIG_IGN)

import gc  # noqa: E402
import os  # noqa: E402

#: Who started us, read before the slow imports: if it dies meanwhile, we still notice.
STARTED_BY = os.getppid()
import sys  # noqa: E402

# Only the standard library here: the CLI is started (`early_start`) before anything
# slower is imported. `_config` (attrs, argparse) comes next, trio with the mode that
# runs, `importlib.metadata` with --version alone.
from ._args import split_invocation, wants_stream_json_input  # noqa: E402
from ._grace import KILL_TIMEOUT, TREE_GRACE  # noqa: E402

#: Set by the helper for the CLI it starts: a wrapper whose parent is that helper has been
#: started as "the CLI" by another wrapper, which would recurse forever.
HELPER_PID_VARIABLE = "CLAUDE_SUPERVISOR_HELPER_PID"


def _started_by_a_hub(environ: Mapping[str, str]) -> bool:
    """Whether this wrapper is a hub's CLI: another wrapper, or itself, found it as
    `claude` (the recursion guard)."""
    return environ.get(HELPER_PID_VARIABLE) == str(os.getppid())


def _error(message: str, code: int) -> int:
    print(f"claude-supervisor: {message}", file=sys.stderr)
    return code


def _is_this_wrapper(path: str) -> bool:
    """Whether an executable is this wrapper (a copy, a symlink, or its entry-point script)."""
    if os.path.realpath(path) == os.path.realpath(sys.argv[0]):
        return True
    try:
        if os.stat(path).st_size >= 65536:
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"supervisor._cli" in head or b"python -m supervisor " in head


def _which(name: str, path: str | None = None) -> str | None:
    """`shutil.which`, imported when a name must be looked up on PATH: with `--claude`
    or its variable set to a path, the CLI starts without it (see `early_start`)."""
    import shutil

    return shutil.which(name, path=path)


def find_real_claude(path_variable: str | None = None) -> str | None:
    """The first `claude` on PATH that is not this wrapper."""
    for directory in (path_variable or os.environ.get("PATH", "")).split(os.pathsep):
        candidate = _which("claude", path=directory or ".")
        if candidate and not _is_this_wrapper(candidate):
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
        found = _which(named)
        if found is None:
            return None, (
                f"--claude {named}: no such executable on PATH; give its path, or install "
                "the CLI (npm install -g @anthropic-ai/claude-code)"
            )
        claude = found
    return claude, claude_path_problem(claude)


def _flag_values(own: Sequence[str]) -> dict[str, str] | None:
    """The wrapper's flags as `{flag: value}`, read without argparse; None where it
    would take argparse to be sure (an abbreviated or unknown flag, --help, --version)."""
    values: dict[str, str] = {}
    args = iter(own)
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag not in _FLAGS:
            return None
        if not equals:
            following = next(args, None)
            if following is None:
                return None
            value = following
        values[flag] = value
    return values


#: The wrapper's flags that take a value (`_config.OPTIONS`, checked by a test).
_FLAGS = frozenset(
    {
        "--claude",
        "--interrupt-timeout",
        "--sigint-timeout",
        "--kill-timeout",
        "--exit-timeout",
        "--ready-timeout",
        "--report-file",
        "--max-line-bytes",
        "--start-timeout",
        "--interrupt-ack-timeout",
        "--stall-timeout",
        "--turn-timeout",
    }
)


def early_plan(
    argv: Sequence[str], prog: str, environ: Mapping[str, str] = os.environ
) -> tuple[list[str], float] | None:
    """The CLI's command line and the kill timeout of a stream-json run, read without
    attrs or argparse; None when the invocation is anything but such a plain run, or
    when it takes the full reading to be sure (`early_start` says why this exists)."""
    mode, own, claude_args = split_invocation(argv, prog)
    flags = _flag_values(own)
    if mode != "run" or flags is None or not wants_stream_json_input(claude_args):
        return None
    if _started_by_a_hub(environ):
        return None
    named = flags.get("--claude") or environ.get("CLAUDE_SUPERVISOR_CLAUDE") or None
    claude = named or find_real_claude(environ.get("PATH"))
    resolved, problem = _resolve_claude(claude) if claude is not None else (None, None)
    if resolved is None or problem is not None:
        return None
    raw_timeout = flags.get("--kill-timeout") or environ.get("CLAUDE_SUPERVISOR_KILL_TIMEOUT")
    try:
        kill_timeout = KILL_TIMEOUT if raw_timeout is None else float(raw_timeout)
    except ValueError:
        return None
    if not 0 < kill_timeout < float("inf"):  # nan too: the full reading says what is wrong
        return None
    return [resolved, *claude_args], kill_timeout


def early_start(argv: Sequence[str], prog: str) -> Prestarted | None:
    """Starts the CLI of a stream-json run now, before the wrapper's slow imports.

    The CLI takes a quarter of a second to boot and the wrapper about as long to import
    what it runs on (attrs, trio, the relay): side by side rather than one after the
    other, the wrapper costs little more than its interpreter. Only what can be read
    without them is read here (`early_plan`); the full reading follows, and `_run` keeps
    this start only if it agrees, so a guess that is wrong, or an invocation that turns
    out to be an error, costs a discarded CLI, never a wrong one.
    """
    plan = early_plan(argv, prog)
    if plan is None:
        return None
    from ._launch import prestart

    args, kill_timeout = plan
    return prestart(args, kill_timeout=kill_timeout, grace=TREE_GRACE)


def main(argv: Sequence[str] | None = None) -> int:
    # The imports that follow make a few hundred thousand objects that live as long as
    # the process, and the collector would scan them again and again: 10% of their CPU,
    # taken from the CLI's boot (see `early_start`). It comes back, with them set aside
    # for good (`gc.freeze`), once they are done (`_imported`).
    collecting = gc.isenabled()
    gc.disable()
    args = list(sys.argv[1:] if argv is None else argv)
    early = early_start(args, sys.argv[0])
    try:
        return _main(args, early)
    finally:
        if early is not None and not early.taken:
            early.abandon()
        if collecting:
            gc.enable()


def _imported() -> None:
    """Called once what a mode runs on is imported: see `main`."""
    gc.freeze()
    gc.enable()


def _main(args: list[str], early: Prestarted | None) -> int:
    from ._config import ConfigError, parse_invocation

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

        _imported()
        return trio.run(run_demo, invocation.config.claude)
    return _run(invocation, early)


def _run(invocation: Invocation, early: Prestarted | None) -> int:
    if _started_by_a_hub(os.environ):
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
        policy = invocation.config.policy
        wanted = (claude, *invocation.claude_args)
        if early is None or early.args != wanted or early.kill_timeout != policy.kill_timeout:
            # Not started early, or not as the full reading says: now, the same way.
            if early is not None:
                early.abandon()
            from ._launch import prestart

            early = prestart(wanted, kill_timeout=policy.kill_timeout, grace=TREE_GRACE)
        if early is not None:
            early.taken = True
        import trio

        from ._relay import Relay

        relay = Relay(invocation.config, claude, invocation.claude_args, STARTED_BY, early)
        _imported()
        return trio.run(relay.run)
    import trio

    from ._passthrough import run_passthrough

    _imported()
    try:
        return trio.run(
            run_passthrough, invocation.config, claude, invocation.claude_args, STARTED_BY
        )
    except FileNotFoundError as exc:
        return _error(str(exc), 127)
