"""A fake Claude Code CLI that speaks stream-json and misbehaves on request.

Run it as::

    python -m supervisor.testing.fake_claude [ARGS...]

It stands in for ``claude -p --input-format stream-json --output-format
stream-json --verbose``: it reads one JSON frame per line on stdin and writes
one JSON frame per line on stdout, following the same protocol as the real
CLI closely enough to drive a supervisor. It needs no network and no API key,
and it can be told to misbehave (slow starts, tools that leave processes
behind, interrupts that are ignored, crashes, wedges, garbage output...) so a
supervisor's cancellation ladder (in-band interrupt, SIGINT, killing the
process tree, respawning with ``--resume``) can be tested deterministically.
It uses the standard library only.

Command line
------------
The real CLI's usual flags are accepted and ignored: ``-p``/``--print``,
``--verbose``, ``--input-format X``, ``--output-format X``, ``--model X``,
``--allowedTools X``, ``--permission-mode X``, ``--max-turns N``,
``--append-system-prompt X`` and more. Any other ``--flag`` is ignored too; an
unknown flag followed by a token that does not start with ``-`` consumes that
token as its value. ``--flag=value`` works for every flag. Bare positional
arguments (a prompt) are ignored.

``--session-id ID``
    Start a new session with this id (default: a fresh uuid4). The id must be
    made of letters, digits, ``.``, ``_`` and ``-``; otherwise the fake exits 1.
``--resume ID`` (or ``-r ID``)
    Restore the session's transcript and keep its id. If there is no
    transcript for ID, write the real CLI's error ``result`` (``"num_turns": 0``,
    ``"errors": ["No conversation found with session ID: ID"]``) on stdout,
    print ``No conversation found with session ID: ID`` to stderr and exit 1
    without reading stdin, like the real CLI.
``--no-session-persistence``
    Write no transcript, like the real CLI: the session cannot be resumed.

Fake-only options (a flag wins over its environment variable):

``--fake-start-delay S`` / ``FAKE_CLAUDE_START_DELAY``
    Sleep S seconds before reading stdin (a slow start).
``--fake-resume-delay S`` / ``FAKE_CLAUDE_RESUME_DELAY``
    Sleep S more seconds, only when ``--resume`` is given (a slow resume). The
    delays come before the transcript is looked up, so a resume can also be
    made to fail slowly.
``--fake-fail-resume`` / ``FAKE_CLAUDE_FAIL_RESUME=1``
    Every ``--resume`` fails as if the session did not exist.
``--fake-sigint-exit-delay S`` / ``FAKE_CLAUDE_SIGINT_EXIT_DELAY``
    Delay between handling SIGINT and exiting (default 0.2).
``FAKE_CLAUDE_DIRECTIVES``
    Directives applied to every turn, same syntax as inside
    ``[[fake: ...]]`` but without the brackets, e.g. ``ignore_interrupt`` or
    ``tool=5, stubborn``. Directives in a message override these.

SIGINT during a start or resume delay exits 0 (after the SIGINT exit delay).

Transcript
----------
Each session has a transcript at
``${CLAUDE_CONFIG_DIR:-$HOME/.claude}/fake-sessions/<session_id>.jsonl``, one
JSON line per event, appended and fsynced as it happens: ``{"user": "hi"}`` when a
turn starts (as the real CLI records the message at once), then
``{"assistant": "reply #1 to: hi", "interrupted": false}`` when it ends
(``assistant`` is ``""`` for an interrupted turn). ``--resume`` reads the user
texts back. A session whose first turn never started cannot be resumed, like the
real CLI's.

stdin frames
------------
``{"type": "user", "message": {"role": "user", "content": C}}``
    A user turn. Its text is C if C is a string, otherwise the concatenated
    ``text`` of the ``{"type": "text"}`` blocks of C. User frames that arrive
    while a turn is running are merged into ONE following turn (texts joined
    with a newline) that gets a single result, like the real CLI.
``{"type": "control_request", "request_id": R, "request": {"subtype": S}}``
    Answered with a ``control_response`` at once, even while a turn runs.
    ``initialize`` answers ``{"commands": [], "models": [], "account": {},
    "fake": true}``; ``interrupt`` answers ``{"still_queued": []}`` and ends
    the running turn, if any (user frames already merged for the next turn
    stay queued and run afterwards); ``set_model``, ``set_permission_mode`` and
    ``set_max_thinking_tokens`` answer ``{}``; any other subtype gets an error
    response ``Unsupported control request subtype: S``.
``{"type": "control_response", ...}``
    Ignored.
A line that is not a JSON object is reported on stderr and ignored. At end of
stdin the fake finishes the running turn (and a merged pending one) and exits 0.

stdout frames of a turn
-----------------------
1. At the start of every turn, as the real CLI does: ``{"type": "system",
   "subtype": "init", "session_id": SID, "cwd": ..., "tools": ["Bash"],
   "model": "fake", "claude_code_version": "fake-1.0", "capabilities": []}``.
2. An assistant frame with the text ``working on: <text>``.
3. If the turn runs a tool: an assistant frame with a ``tool_use`` block
   (id ``toolu_N``, N being the turn's number in the session, name ``Bash``),
   then, when the tool exits, a user frame with the matching ``tool_result``
   (content ``done``).
4. ``{"type": "result", "subtype": "success", "is_error": false, "result":
   "reply #N to: <text>", "terminal_reason": "completed", "fake_history":
   [...], ...}`` where ``fake_history`` lists the texts of all user turns of
   the session so far (restored ones included, this one last) and N is its
   length.

Every frame is written with a single write of a complete line and flushed.
Frames carry the extra fields the claude-agent-sdk parser requires
(``message.model``, ``duration_api_ms``, ``uuid``...).

An interrupted turn (in-band interrupt or SIGINT) kills the tool's process
group with SIGKILL (only that group: a process that escaped with ``setsid``
survives, as with the real CLI), then emits a user frame with the text
``[Request interrupted by user for tool use]`` (``[Request interrupted by
user]`` when no tool was running) and a result with ``"subtype":
"error_during_execution"``, ``"is_error": true`` and ``"terminal_reason":
"aborted_tools"`` (a tool was running) or ``"aborted_streaming"``
(otherwise). The turn is recorded in the transcript as interrupted and
counts in ``fake_history``. After an in-band interrupt the process stays
alive for the next turn.

Directives
----------
Misbehaviour is requested in the user text as ``[[fake: key, key=value,
...]]`` (the directive stays part of the turn's text). Several blocks may
appear; later values win. Boolean keys also accept ``=1``/``=0`` (or
true/false, yes/no, on/off), so a message can switch off an env directive.

``tool=S``
    Run a "Bash tool": a Python child in its own session (like the real CLI's
    shells) that sleeps S seconds, with stdin/stdout/stderr on /dev/null. The
    tool_use frame is only emitted once the tool and all the helpers below are
    in place, so a test may inspect the process tree right after it.
``escapee``
    The tool also starts a grandchild that, after a double fork, calls
    ``os.setsid()`` and sleeps 300 s: it is re-parented away from the tool and
    survives the tool's death and the kill of its process group.
``stubborn``
    The tool also starts a child that ignores SIGTERM and SIGINT and sleeps
    300 s (SIGKILL still works; killing the tool's group kills it).
``deep=N``
    The tool runs a chain of N nested descendants, each the parent of the
    next; the last one sleeps S seconds and the tool waits for the chain.
``forkchain=N``
    The tool also starts a fork-and-exit chain of N links: each link forks
    the next, which calls ``os.setsid()``, and exits; the last sleeps 300 s.
    Only a link or two live at any moment, each re-parented as it is born.
``stream=S``
    The model "streams" for S seconds before the assistant text. An interrupt
    there ends the turn with ``aborted_streaming``.
``ignore_interrupt``
    Answer the interrupt control request but keep the turn running.
``mute_interrupt``
    Neither answer the interrupt nor act on it.
``ignore_sigint``
    SIGINT does nothing during this turn.
``wedge``
    After the assistant frame (and after starting the tool, if any) the
    process stops itself with SIGSTOP: it reads nothing, answers nothing and
    SIGINT does nothing, but SIGKILL still ends it. (SIGCONT resumes it.)
``crash``
    After the assistant frame (and after starting the tool, if any) exit at
    once with status 3, without a result. The tool is left running.
``huge=BYTES``
    The assistant text is exactly BYTES characters long (one huge line).
``huge_result=BYTES``
    The result's ``result`` text (``reply #N to: ...`` padded with ``x``) is exactly
    BYTES characters long; the line is written in pieces of 1 MiB, so even a line of
    hundreds of megabytes costs the fake little memory. As in the real CLI's results,
    ``type`` comes after ``result`` in that line.
``garbage``
    Write the non-JSON line ``this is not json {`` before the result.
``silent``
    Never start the turn: write nothing for it at all (no init, no result) and
    record nothing, as the real CLI does with content it cannot read. Control
    requests are still answered, an interrupt does nothing, SIGINT exits.

``escapee``, ``stubborn``, ``deep`` and ``forkchain`` only matter together
with ``tool``.
Every process the fake starts inherits its environment unchanged, so tests
can find leftovers by an environment token.

Signals and exit status
-----------------------
SIGINT during a turn ends it as described above, then the process exits 0
after the SIGINT exit delay; SIGINT while idle exits 0 after the delay. With
``ignore_sigint`` active, SIGINT is ignored. SIGTERM has its default effect.
Exit status: 0 on end of stdin or SIGINT, 1 for a failed resume or a bad
command line, 3 for ``crash``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

GARBAGE_LINE: Final = "this is not json {"
DEFAULT_SIGINT_EXIT_DELAY: Final = 0.2
TOOL_READY_TIMEOUT: Final = 10.0
TOOL_REAP_TIMEOUT: Final = 5.0

_DIRECTIVE_BLOCK: Final = re.compile(r"\[\[fake:(.*?)\]\]", re.DOTALL)
_SAFE_SESSION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off", ""})


def warn(message: str) -> None:
    """Report something odd on stderr; stdout is reserved for protocol frames."""
    print(f"fake_claude: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Directives


@dataclass(frozen=True)
class Directives:
    """How a turn should (mis)behave; see the module docstring."""

    tool: float | None = None
    escapee: bool = False
    stubborn: bool = False
    deep: int = 0
    forkchain: int = 0
    stream: float = 0.0
    ignore_interrupt: bool = False
    mute_interrupt: bool = False
    ignore_sigint: bool = False
    wedge: bool = False
    crash: bool = False
    huge: int | None = None
    huge_result: int | None = None
    garbage: bool = False
    silent: bool = False


def _flag_value(raw: str | None) -> bool:
    """A bare key means true; ``key=0`` lets a message switch off an env directive."""
    if raw is None:
        return True
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _seconds_value(raw: str | None) -> float:
    """A non-negative duration in seconds."""
    if raw is None:
        raise ValueError("needs a value")
    value = float(raw)
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"not a non-negative number: {raw!r}")
    return value


def _count_value(raw: str | None) -> int:
    """A non-negative integer."""
    if raw is None:
        raise ValueError("needs a value")
    value = int(raw)
    if value < 0:
        raise ValueError(f"negative: {raw!r}")
    return value


_CONVERTERS: Final[Mapping[str, Callable[[str | None], object]]] = {
    "tool": _seconds_value,
    "escapee": _flag_value,
    "stubborn": _flag_value,
    "deep": _count_value,
    "forkchain": _count_value,
    "stream": _seconds_value,
    "ignore_interrupt": _flag_value,
    "mute_interrupt": _flag_value,
    "ignore_sigint": _flag_value,
    "wedge": _flag_value,
    "crash": _flag_value,
    "huge": _count_value,
    "huge_result": _count_value,
    "garbage": _flag_value,
    "silent": _flag_value,
}
assert set(_CONVERTERS) == {f.name for f in fields(Directives)}


def apply_directive_spec(spec: str, base: Directives) -> Directives:
    """Apply ``key, key=value, ...`` on top of ``base``.

    Bad items are reported on stderr and skipped rather than fatal: a typo in
    a test message should show up in the logs, not kill the fake mid-protocol.
    """
    result = base
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        converter = _CONVERTERS.get(key)
        if converter is None:
            warn(f"unknown directive {key!r} ignored")
            continue
        try:
            value: Any = converter(raw.strip() if eq else None)
        except ValueError as exc:
            warn(f"bad directive {item!r} ignored: {exc}")
            continue
        result = replace(result, **{key: value})
    return result


def directive_specs_in(text: str) -> list[str]:
    """The insides of all ``[[fake: ...]]`` blocks of a user text, in order."""
    return [match.group(1) for match in _DIRECTIVE_BLOCK.finditer(text)]


def directives_from_env(value: str) -> Directives:
    """Parse FAKE_CLAUDE_DIRECTIVES; a bracketed ``[[fake: ...]]`` form is accepted too."""
    specs = directive_specs_in(value) or [value]
    result = Directives()
    for spec in specs:
        result = apply_directive_spec(spec, result)
    return result


def directives_for_text(text: str, base: Directives) -> Directives:
    """The directives of one turn: the process-wide ones, overridden by the message's."""
    result = base
    for spec in directive_specs_in(text):
        result = apply_directive_spec(spec, result)
    return result


# --------------------------------------------------------------------------
# Command line


class UsageError(Exception):
    """The command line cannot be honoured."""


# Flags of the real CLI that take a value; the value is consumed even if it
# starts with "-" (e.g. an --append-system-prompt text).
_VALUE_FLAGS: Final = frozenset(
    {
        "--input-format",
        "--output-format",
        "--model",
        "--fallback-model",
        "--allowedTools",
        "--allowed-tools",
        "--disallowedTools",
        "--disallowed-tools",
        "--permission-mode",
        "--permission-prompt-tool",
        "--max-turns",
        "--max-thinking-tokens",
        "--append-system-prompt",
        "--system-prompt",
        "--mcp-config",
        "--settings",
        "--setting-sources",
        "--add-dir",
        "--session-id",
        "--resume",
        "-r",
        "--fake-start-delay",
        "--fake-resume-delay",
        "--fake-sigint-exit-delay",
    }
)

# Flags that never take a value, so a following positional is not eaten.
_BOOL_FLAGS: Final = frozenset(
    {
        "-p",
        "--print",
        "--verbose",
        "-c",
        "--continue",
        "--fork-session",
        "--include-partial-messages",
        "--replay-user-messages",
        "--dangerously-skip-permissions",
        "--strict-mcp-config",
        "--fake-fail-resume",
        "--no-session-persistence",
    }
)


@dataclass(frozen=True)
class Options:
    """What the fake was asked to do, from its command line and environment."""

    session_id: str | None = None
    resume: str | None = None
    start_delay: float = 0.0
    resume_delay: float = 0.0
    fail_resume: bool = False
    persist: bool = True  # False with --no-session-persistence: no transcript
    sigint_exit_delay: float = DEFAULT_SIGINT_EXIT_DELAY
    directives: Directives = field(default_factory=Directives)


def scan_flags(argv: Sequence[str]) -> dict[str, str | None]:
    """Map each flag to its value (None for a valueless flag), leniently.

    Mirrors how forgiving a test double must be: unknown flags are kept (and
    later ignored) instead of rejected, and positionals are dropped.
    """
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            continue
        name, eq, inline = arg.partition("=")
        if eq and name.startswith("--"):
            flags[name] = inline
        elif name in _BOOL_FLAGS:
            flags[name] = None
        elif name in _VALUE_FLAGS:
            if i >= len(argv):
                raise UsageError(f"option {name} needs a value")
            flags[name] = argv[i]
            i += 1
        elif i < len(argv) and not argv[i].startswith("-"):
            flags[name] = argv[i]
            i += 1
        else:
            flags[name] = None
    return flags


def _seconds_option(
    flags: Mapping[str, str | None], flag: str, env: Mapping[str, str], var: str, default: float
) -> float:
    """A delay given by flag or environment variable (the flag wins)."""
    raw = flags.get(flag)
    source = flag
    if raw is None:
        raw, source = env.get(var), var
    if raw is None or raw.strip() == "":
        return default
    try:
        return _seconds_value(raw)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Build the Options from the command line and the FAKE_CLAUDE_* variables."""
    flags = scan_flags(argv)
    session_id = flags.get("--session-id")
    if session_id is not None and not _SAFE_SESSION_ID.fullmatch(session_id):
        raise UsageError(f"Invalid session ID: {session_id!r}")
    resume = flags.get("--resume", flags.get("-r"))
    if ("--resume" in flags or "-r" in flags) and not resume:
        raise UsageError("option --resume needs a session ID")
    try:
        fail_resume = "--fake-fail-resume" in flags or _flag_value(
            env.get("FAKE_CLAUDE_FAIL_RESUME", "0")
        )
    except ValueError as exc:
        raise UsageError(f"FAKE_CLAUDE_FAIL_RESUME: {exc}") from None
    return Options(
        session_id=session_id,
        resume=resume,
        start_delay=_seconds_option(
            flags, "--fake-start-delay", env, "FAKE_CLAUDE_START_DELAY", 0.0
        ),
        resume_delay=_seconds_option(
            flags, "--fake-resume-delay", env, "FAKE_CLAUDE_RESUME_DELAY", 0.0
        ),
        fail_resume=fail_resume,
        persist="--no-session-persistence" not in flags,
        sigint_exit_delay=_seconds_option(
            flags,
            "--fake-sigint-exit-delay",
            env,
            "FAKE_CLAUDE_SIGINT_EXIT_DELAY",
            DEFAULT_SIGINT_EXIT_DELAY,
        ),
        directives=directives_from_env(env.get("FAKE_CLAUDE_DIRECTIVES", "")),
    )


# --------------------------------------------------------------------------
# Transcript


class Transcript:
    """The on-disk history of one session, which is what makes --resume work."""

    def __init__(self, path: Path, *, persist: bool = True) -> None:
        self.path = path
        self.persist = persist

    @classmethod
    def for_session(cls, session_id: str, env: Mapping[str, str]) -> Transcript:
        """Locate the transcript under the same config dir the real CLI would use."""
        config_dir = env.get("CLAUDE_CONFIG_DIR") or str(Path.home() / ".claude")
        return cls(Path(config_dir) / "fake-sessions" / f"{session_id}.jsonl")

    def load(self) -> list[str] | None:
        """The user texts of the recorded turns, or None if there are none to resume."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        texts: list[str] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                warn(f"skipping a corrupt line of {self.path}")
                continue
            if isinstance(entry, dict) and isinstance(entry.get("user"), str):
                texts.append(entry["user"])
        return texts or None  # an empty file (say, a full disk) holds no conversation

    def record_user(self, text: str) -> None:
        """Record a turn's message as it starts, as the real CLI does: a CLI killed in
        the middle of its very first turn can still be resumed."""
        self._append({"user": text})

    def record_reply(self, assistant: str, interrupted: bool) -> None:
        self._append({"assistant": assistant, "interrupted": interrupted})

    def _append(self, entry: dict[str, Any]) -> None:
        """Durably: a kill right after a frame must not lose it."""
        if not self.persist:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            warn(f"cannot write transcript {self.path}: {exc}")


# --------------------------------------------------------------------------
# Output


class Output:
    """The single way to stdout: whole lines, one at a time, never interleaved."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Write ``text`` plus a newline in one go, straight to the file descriptor."""
        data = (text + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except BrokenPipeError:
                # Nobody listens any more; the real CLI dies too.
                os._exit(1)

    def frame(self, obj: Mapping[str, Any]) -> None:
        """Write one protocol frame."""
        self.line(json.dumps(obj, ensure_ascii=False))

    def padded_frame(self, obj: Mapping[str, Any], key: str, size: int) -> None:
        """Write one frame whose string ``obj[key]`` is padded with ``x`` to ``size``
        characters, in pieces: the whole line never exists in memory."""
        text = str(obj[key])[:size]
        marker = "\x00padding\x00"
        prefix, suffix = json.dumps({**obj, key: text + marker}, ensure_ascii=False).split(
            json.dumps(marker)[1:-1], 1
        )
        piece = b"x" * (1024 * 1024)
        left = size - len(text)
        with self._lock:
            try:
                self._write(prefix.encode("utf-8"))
                while left > 0:
                    self._write(piece[: min(left, len(piece))])
                    left -= len(piece)
                self._write((suffix + "\n").encode("utf-8"))
            except BrokenPipeError:
                os._exit(1)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


# --------------------------------------------------------------------------
# Events: everything the main loop reacts to arrives through one queue.


@dataclass(frozen=True)
class Event:
    """Something for the main loop: a stdin frame, stdin EOF, SIGINT, or a tool exit."""

    kind: Literal["frame", "eof", "sigint", "tool_exit"]
    frame: Mapping[str, Any] | None = None
    tool_pid: int = 0


# SimpleQueue.put is reentrant, so the SIGINT handler may use it safely.
EventQueue = queue.SimpleQueue[Event]


def start_daemon_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a helper thread with SIGINT blocked.

    The kernel delivers SIGINT to any thread that does not block it, but only
    the main thread runs Python handlers and only its blocking wait is the one
    we need interrupted. Blocking SIGINT in every helper steers it to the main
    thread so it is noticed at once.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


def install_sigint_handler(events: EventQueue) -> None:
    """Turn SIGINT into an event; what it means depends on what the main loop is doing."""

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        events.put(Event("sigint"))

    signal.signal(signal.SIGINT, on_sigint)


def _parse_stdin_line(raw: bytes) -> Mapping[str, Any] | None:
    """Decode one stdin line; report and drop anything that is not a JSON object."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        warn(f"ignoring a stdin line that is not JSON: {text[:120]!r}")
        return None
    if not isinstance(obj, dict):
        warn(f"ignoring a stdin line that is not a JSON object: {text[:120]!r}")
        return None
    return obj


def read_stdin(events: EventQueue, fd: int = 0) -> None:
    """Feed stdin frames to the queue, then EOF.

    Reads the raw descriptor rather than sys.stdin so no buffered-reader lock is
    held at exit, and so control requests are seen while a turn runs.
    """
    buffer = bytearray()
    scanned = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buffer += chunk
        while (newline := buffer.find(b"\n", scanned)) >= 0:
            frame = _parse_stdin_line(bytes(buffer[:newline]))
            del buffer[: newline + 1]
            scanned = 0
            if frame is not None:
                events.put(Event("frame", frame))
        scanned = len(buffer)
    frame = _parse_stdin_line(bytes(buffer))
    if frame is not None:
        events.put(Event("frame", frame))
    events.put(Event("eof"))


def sleep_unless_sigint(events: EventQueue, seconds: float) -> bool:
    """Sleep before stdin is read; False if SIGINT cut the sleep short."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=remaining)
        except queue.Empty:
            return True
        if event.kind == "sigint":
            return False
    return True


# --------------------------------------------------------------------------
# The tool: a Python child standing in for a Bash tool and its offspring.

# Runs as ``python -c _TOOL_SCRIPT SECONDS READY_FD ESCAPEE STUBBORN DEPTH LINKS``.
# Every helper reports through a pipe once it is set up, and the tool writes
# to READY_FD only when all of them are, so the fake announces the tool_use
# with a complete, stable process tree.
_TOOL_SCRIPT: Final = r"""
import os, signal, sys, time

LONG = 300.0
seconds = float(sys.argv[1])
ready_fd = int(sys.argv[2])
want_escapee = sys.argv[3] == "1"
want_stubborn = sys.argv[4] == "1"
depth = int(sys.argv[5])
links = int(sys.argv[6])


def notify(fd):
    os.write(fd, b"x")
    os.close(fd)


def close_ready_fd():
    # Once only: after closing, the number may be reused by a later pipe.
    global ready_fd
    if ready_fd >= 0:
        os.close(ready_fd)
        ready_fd = -1


def fork_then(body):
    # Run body(notify_fd) in a child; return its pid once it has reported in.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            close_ready_fd()
            body(w)
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return pid


def escapee(fd):
    # Double fork: the grandchild is orphaned, then leaves the tool's session.
    if os.fork() == 0:
        os.setsid()
        notify(fd)
        time.sleep(LONG)


def stubborn(fd):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    notify(fd)
    time.sleep(LONG)


def chain(levels):
    def body(fd):
        if levels > 1:
            child = fork_then(chain(levels - 1))
            notify(fd)
            os.waitpid(child, 0)
        else:
            notify(fd)
            time.sleep(seconds)
    return body


def forkchain(fd):
    notify(fd)
    for _ in range(links):
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
    time.sleep(LONG)


if want_escapee:
    os.waitpid(fork_then(escapee), 0)
if links > 0:
    os.waitpid(fork_then(forkchain), 0)
if want_stubborn:
    fork_then(stubborn)
head = fork_then(chain(depth)) if depth > 0 else None
notify(ready_fd)
if head is None:
    time.sleep(seconds)
else:
    os.waitpid(head, 0)
"""


@dataclass(frozen=True)
class Tool:
    """A running fake Bash tool."""

    proc: subprocess.Popen[bytes]
    tool_use_id: str


def spawn_tool(directives: Directives, seconds: float) -> subprocess.Popen[bytes]:
    """Start the tool in its own session and wait until its process tree is built.

    Its standard streams are /dev/null so it never holds the fake's stdout
    open, and it inherits the fake's environment unchanged.
    """
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TOOL_SCRIPT,
                repr(seconds),
                str(write_fd),
                "1" if directives.escapee else "0",
                "1" if directives.stubborn else "0",
                str(directives.deep),
                str(directives.forkchain),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(write_fd,),
        )
    finally:
        os.close(write_fd)
    try:
        readable, _, _ = select.select([read_fd], [], [], TOOL_READY_TIMEOUT)
        if readable:
            os.read(read_fd, 1)  # a byte when ready, or EOF if the tool died
        else:
            warn("the tool did not report ready in time")
    finally:
        os.close(read_fd)
    return proc


def kill_tool(tool: Tool) -> None:
    """SIGKILL the tool's own process group, as the real CLI does on interrupt.

    Processes that left the group (the setsid escapee) survive on purpose.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(tool.proc.pid, signal.SIGKILL)
    try:
        tool.proc.wait(timeout=TOOL_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        warn(f"tool {tool.proc.pid} survived SIGKILL")


# --------------------------------------------------------------------------
# Frames


def _new_uuid() -> str:
    return str(uuid.uuid4())


def assistant_frame(session_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant message, with the fields the agent SDK insists on."""
    return {
        "type": "assistant",
        "message": {
            "id": f"msg_fake_{uuid.uuid4().hex[:16]}",
            "type": "message",
            "role": "assistant",
            "model": "fake",
            "content": content,
        },
        "session_id": session_id,
        "parent_tool_use_id": None,
        "uuid": _new_uuid(),
    }


def user_frame(session_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """A user message echoed by the CLI (tool results, interruption notices)."""
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "session_id": session_id,
        "parent_tool_use_id": None,
        "uuid": _new_uuid(),
    }


def control_success(request_id: object, response: Mapping[str, Any]) -> dict[str, Any]:
    """A successful answer to a control request."""
    return {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response},
    }


def control_error(request_id: object, error: str) -> dict[str, Any]:
    """A failed answer to a control request."""
    return {
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    }


def user_text(frame: Mapping[str, Any]) -> str:
    """The text of a user frame: its string content, or its text blocks concatenated."""
    message = frame.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


_SIMPLE_CONTROL_SUBTYPES: Final = frozenset(
    {"set_model", "set_permission_mode", "set_max_thinking_tokens"}
)


# --------------------------------------------------------------------------
# The session


class Outcome(enum.Enum):
    """How a turn ended."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    SIGINT = "sigint"


# Why a wait inside a turn returned.
Wake = Literal["timeout", "tool_exit", "interrupt", "sigint"]
_STOPS: Final = ("interrupt", "sigint")


@dataclass
class Turn:
    """One running turn."""

    text: str
    directives: Directives
    number: int
    started: float

    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class FakeClaude:
    """The protocol engine: an idle loop that runs turns and answers control requests.

    Everything happens on the main thread, fed by the event queue, so there is
    no shared state to lock besides stdout.
    """

    def __init__(
        self,
        *,
        session_id: str,
        history: list[str],
        transcript: Transcript,
        options: Options,
        events: EventQueue,
        out: Output,
    ) -> None:
        self.session_id = session_id
        self.history = history
        self.transcript = transcript
        self.options = options
        self.events = events
        self.out = out
        self.pending: list[str] = []
        self.eof = False

    # -- main loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve turns until stdin ends (exit 0) or SIGINT (exit 0 after the delay)."""
        while True:
            if self.pending:
                text = "\n".join(self.pending)
                self.pending.clear()
                if self.run_turn(text) is Outcome.SIGINT:
                    return self.exit_after_sigint()
            elif self.eof:
                return 0
            elif self.dispatch(self.events.get(), None) == "sigint":
                return self.exit_after_sigint()

    def exit_after_sigint(self) -> int:
        """Linger a little after SIGINT, as the real CLI takes a moment to shut down."""
        time.sleep(self.options.sigint_exit_delay)
        return 0

    # -- events ------------------------------------------------------------

    def wait(
        self, deadline: float | None, directives: Directives, tool_pid: int | None = None
    ) -> Wake:
        """Serve events until the deadline, the tool's exit, or a reason to stop the turn.

        A deadline in the past just drains what has already arrived.
        """
        while True:
            event = self._next_event(deadline)
            if event is None:
                return "timeout"
            wake = self.dispatch(event, directives, tool_pid)
            if wake is not None:
                return wake

    def _next_event(self, deadline: float | None) -> Event | None:
        if deadline is None:
            return self.events.get()
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                return self.events.get_nowait()
            return self.events.get(timeout=remaining)
        except queue.Empty:
            return None

    def dispatch(
        self, event: Event, directives: Directives | None, tool_pid: int | None = None
    ) -> Wake | None:
        """React to one event; ``directives`` is None while idle.

        Returns why the current wait should end, if it should.
        """
        if event.kind == "sigint":
            if directives is not None and directives.ignore_sigint:
                return None
            return "sigint"
        if event.kind == "eof":
            self.eof = True
            return None
        if event.kind == "tool_exit":
            return "tool_exit" if tool_pid is not None and event.tool_pid == tool_pid else None
        assert event.frame is not None
        return self.handle_frame(event.frame, directives)

    def handle_frame(self, frame: Mapping[str, Any], directives: Directives | None) -> Wake | None:
        """Queue user text for the next turn, or answer a control request."""
        kind = frame.get("type")
        if kind == "user":
            self.pending.append(user_text(frame))
        elif kind == "control_request":
            return self.handle_control(frame, directives)
        elif kind != "control_response":
            warn(f"ignoring a stdin frame of type {kind!r}")
        return None

    def handle_control(
        self, frame: Mapping[str, Any], directives: Directives | None
    ) -> Wake | None:
        """Answer a control request; an honoured interrupt ends the running turn."""
        request_id = frame.get("request_id")
        request = frame.get("request")
        subtype = request.get("subtype") if isinstance(request, dict) else None
        if subtype == "interrupt":
            if directives is not None and directives.mute_interrupt:
                return None
            self.out.frame(control_success(request_id, {"still_queued": []}))
            if directives is None or directives.ignore_interrupt:
                return None
            return "interrupt"
        if subtype == "initialize":
            response = {"commands": [], "models": [], "account": {}, "fake": True}
            self.out.frame(control_success(request_id, response))
        elif subtype in _SIMPLE_CONTROL_SUBTYPES:
            self.out.frame(control_success(request_id, {}))
        else:
            error = f"Unsupported control request subtype: {subtype}"
            self.out.frame(control_error(request_id, error))
        return None

    # -- turns -------------------------------------------------------------

    def run_turn(self, text: str) -> Outcome:
        """Play one turn, misbehaving as its directives say."""
        directives = directives_for_text(text, self.options.directives)
        if directives.silent:
            # Only SIGINT ends this wait: the interrupt is answered and ignored.
            self.wait(None, replace(directives, ignore_interrupt=True, ignore_sigint=False))
            return Outcome.SIGINT
        self.history.append(text)
        self.transcript.record_user(text)
        turn = Turn(
            text=text,
            directives=directives_for_text(text, self.options.directives),
            number=len(self.history),
            started=time.monotonic(),
        )
        self.send_init()
        d = turn.directives
        if d.stream > 0:
            wake = self.wait(turn.started + d.stream, d)
            if wake in _STOPS:
                return self.end_interrupted(turn, wake, None)
        self.out.frame(assistant_frame(self.session_id, [self.assistant_text(turn)]))
        tool = self.start_tool(turn) if d.tool is not None else None
        self.misbehave_after_start(d)
        if tool is not None:
            wake = self.wait(None, d, tool.proc.pid)
            if wake in _STOPS:
                return self.end_interrupted(turn, wake, tool)
            self.send_tool_result(tool)
        if d.garbage:
            self.out.line(GARBAGE_LINE)
        # Take in whatever arrived meanwhile: it belongs to this turn's window.
        wake = self.wait(time.monotonic(), d)
        if wake in _STOPS:
            return self.end_interrupted(turn, wake, None)
        return self.end_completed(turn)

    def send_init(self) -> None:
        """The system/init frame that opens every turn (the real CLI's 2.1.x behaviour)."""
        self.out.frame(
            {
                "type": "system",
                "subtype": "init",
                "session_id": self.session_id,
                "cwd": os.getcwd(),
                "tools": ["Bash"],
                "model": "fake",
                "claude_code_version": "fake-1.0",
                "capabilities": [],
                "uuid": _new_uuid(),
            }
        )

    @staticmethod
    def assistant_text(turn: Turn) -> dict[str, Any]:
        """The assistant's text block, padded to ``huge`` characters if asked."""
        text = f"working on: {turn.text}"
        if turn.directives.huge is not None:
            size = turn.directives.huge
            text = (text + " " + "x" * size)[:size]
        return {"type": "text", "text": text}

    def start_tool(self, turn: Turn) -> Tool:
        """Start the fake Bash tool and announce it once its process tree is ready."""
        d = turn.directives
        assert d.tool is not None
        proc = spawn_tool(d, d.tool)
        tool = Tool(proc=proc, tool_use_id=f"toolu_{turn.number}")
        self.watch_tool_exit(proc)
        block = {
            "type": "tool_use",
            "id": tool.tool_use_id,
            "name": "Bash",
            "input": {"command": "fake tool", "description": "fake"},
        }
        self.out.frame(assistant_frame(self.session_id, [block]))
        return tool

    def watch_tool_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """Turn the tool's exit into an event, so waiting on it is event-driven."""

        def waiter() -> None:
            proc.wait()
            self.events.put(Event("tool_exit", tool_pid=proc.pid))

        start_daemon_thread(waiter, f"tool-waiter-{proc.pid}")

    @staticmethod
    def misbehave_after_start(d: Directives) -> None:
        """``wedge`` and ``crash`` strike once the turn is visibly under way."""
        if d.wedge:
            warn("wedging (SIGSTOP) as directed")
            os.kill(os.getpid(), signal.SIGSTOP)
        if d.crash:
            warn("crashing (exit 3) as directed")
            os._exit(3)

    def send_tool_result(self, tool: Tool) -> None:
        """Report the tool's normal completion."""
        block = {"type": "tool_result", "tool_use_id": tool.tool_use_id, "content": "done"}
        self.out.frame(user_frame(self.session_id, [block]))

    def end_completed(self, turn: Turn) -> Outcome:
        """Emit the success result and record the turn."""
        reply = f"reply #{len(self.history)} to: {turn.text}"
        frame = self.result_frame(turn, "success", is_error=False, reason="completed")
        if turn.directives.huge_result is not None:
            del frame["type"]  # after the answer, as the real CLI writes it
            real_order = frame | {"result": reply, "type": "result"}
            self.out.padded_frame(real_order, "result", turn.directives.huge_result)
        else:
            self.out.frame(frame | {"result": reply})
        self.transcript.record_reply(reply, interrupted=False)
        return Outcome.COMPLETED

    def end_interrupted(self, turn: Turn, wake: Wake, tool: Tool | None) -> Outcome:
        """Abort the turn the way the real CLI does: kill the tool's group, report, record."""
        if tool is not None:
            kill_tool(tool)
            notice = "[Request interrupted by user for tool use]"
        else:
            notice = "[Request interrupted by user]"
        self.out.frame(user_frame(self.session_id, [{"type": "text", "text": notice}]))
        reason = "aborted_tools" if tool is not None else "aborted_streaming"
        self.out.frame(
            self.result_frame(turn, "error_during_execution", is_error=True, reason=reason)
        )
        self.transcript.record_reply("", interrupted=True)
        return Outcome.SIGINT if wake == "sigint" else Outcome.INTERRUPTED

    def result_frame(
        self, turn: Turn, subtype: str, *, is_error: bool, reason: str
    ) -> dict[str, Any]:
        """The fields every result frame shares."""
        duration = turn.duration_ms()
        return {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "session_id": self.session_id,
            "num_turns": 1,
            "duration_ms": duration,
            "duration_api_ms": duration,
            "total_cost_usd": 0.0,
            "usage": {"input_tokens": 0, "output_tokens": 0},
            "terminal_reason": reason,
            "uuid": _new_uuid(),
            "fake_history": list(self.history),
        }


# --------------------------------------------------------------------------
# Entry point


def open_session(
    options: Options, env: Mapping[str, str]
) -> tuple[str, list[str], Transcript] | None:
    """Pick the session id and restored history; None if the resume must fail."""
    if options.resume is not None:
        session_id = options.resume
        if options.fail_resume or not _SAFE_SESSION_ID.fullmatch(session_id):
            return None
        transcript = Transcript.for_session(session_id, env)
        history = transcript.load()
        if history is None:
            return None
        return session_id, history, transcript
    session_id = options.session_id or _new_uuid()
    transcript = Transcript.for_session(session_id, env)
    transcript.persist = options.persist
    return session_id, [], transcript


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the fake CLI; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    try:
        options = parse_args(argv, env)
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1

    events: EventQueue = queue.SimpleQueue()
    install_sigint_handler(events)
    delay = options.start_delay + (options.resume_delay if options.resume is not None else 0)
    if not sleep_unless_sigint(events, delay):
        time.sleep(options.sigint_exit_delay)
        return 0

    session = open_session(options, env)
    if session is None:
        error = f"No conversation found with session ID: {options.resume}"
        Output().frame(
            {
                "type": "result",
                "subtype": "error_during_execution",
                "is_error": True,
                "duration_ms": 0,
                "duration_api_ms": 0,
                "num_turns": 0,
                "session_id": options.resume,
                "total_cost_usd": 0,
                "usage": {"input_tokens": 0, "output_tokens": 0},
                "errors": [error],
                "uuid": _new_uuid(),
            }
        )
        print(error, file=sys.stderr)
        sys.stderr.flush()
        return 1
    session_id, history, transcript = session

    start_daemon_thread(lambda: read_stdin(events), "stdin-reader")
    fake = FakeClaude(
        session_id=session_id,
        history=history,
        transcript=transcript,
        options=options,
        events=events,
        out=Output(),
    )
    return fake.run()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: no interpreter teardown racing the stdin reader thread.
    os._exit(status)
