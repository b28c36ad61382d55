"""The frames the supervisor writes itself, in one place.

Everything here builds a `Frame` the CLI or the parent will read: the interrupt the
supervisor sends on the user's behalf, the results it synthesizes when the CLI's own was
lost, and the `system` frames it adds (`supervisor_cancel`, `supervisor_error`).
docs/protocol.md describes each of them; keep the two in step.
"""

from __future__ import annotations

import copy
import signal
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._framing import Frame
from ._report import CancelReport, CancelTrigger

#: Request ids the supervisor generates start with this, so they never collide with the
#: parent's ids and the answers can be told apart (and swallowed).
OWN_ID_PREFIX = "supervisor-"

#: Control requests whose effect lasts for the whole session: a respawned CLI must get
#: them again, or hooks, the model and the permission mode would silently reset.
SESSION_LEVEL_SUBTYPES = frozenset(
    {"initialize", "set_permission_mode", "set_model", "set_max_thinking_tokens"}
)


def control_request(request_id: str, subtype: str, **fields: Any) -> Frame:
    return Frame.from_data(
        {
            "type": "control_request",
            "request_id": request_id,
            "request": {"subtype": subtype, **fields},
        }
    )


def request_id_of(data: Mapping[str, Any]) -> str | int | None:
    """A usable request id (a string or an integer), or None."""
    value = data.get("request_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value


def is_interrupt(frame: Frame) -> bool:
    request = frame.data.get("request")
    return isinstance(request, dict) and request.get("subtype") == "interrupt"


def with_request_id(frame: Frame, request_id: str) -> Frame:
    """The same control request under another id (for replaying it after a respawn)."""
    return Frame.from_data({**frame.data, "request_id": request_id})


def control_success(request_id: Any, response: dict[str, Any] | None = None) -> Frame:
    """A success answer shaped like the CLI's own.

    The supervisor answers only interrupts itself, so the default payload is the CLI's
    interrupt receipt: `still_queued` lists the queued user messages the interrupt left
    waiting, and the supervisor's own queue is not the CLI's, so none are listed.
    """
    return Frame.from_data(
        {
            "type": "control_response",
            "response": {
                "subtype": "success",
                "request_id": request_id,
                "response": {"still_queued": []} if response is None else response,
            },
        }
    )


def control_error(request_id: Any, message: str, error_code: str = "cli_did_not_answer") -> Frame:
    """An error answer shaped like the CLI's own, which carries a machine-readable
    `error_code` next to the human-readable `error`. The supervisor answers with an error
    only for requests the CLI never answered (it exited, or the session failed)."""
    return Frame.from_data(
        {
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": message,
                "error_code": error_code,
            },
        }
    )


def user_message(content: object) -> Frame:
    """A user turn, shaped as the official SDKs send it."""
    return Frame.from_data(
        {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
            "session_id": "default",
        }
    )


#: `usage` of a result in which no model call was made, in the CLI's own shape (the
#: official SDKs type it as non-nullable, so every counter is present).
_NO_USAGE: dict[str, Any] = {
    "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "fallback_credit": None,
    "inference_geo": "",
    "input_tokens": 0,
    "iterations": [],
    "output_tokens": 0,
    "output_tokens_details": {"thinking_tokens": 0},
    "server_tool_use": {"web_fetch_requests": 0, "web_search_requests": 0},
    "service_tier": "standard",
    "speed": "standard",
}

#: Fields the CLI writes on its own error result that a synthesized one leaves out: the
#: supervisor cannot know them, and the official TypeScript SDK's type marks each of them
#: optional (or does not list it). tests/test_frame_shapes.py and
#: tests/realcli/test_frame_shapes_live.py hold both to that.
SYNTHESIZED_RESULT_OMITS = frozenset(
    {
        "fast_mode_disabled_reason",
        "fast_mode_state",
        "queued_turn_count",
        "result_index",
        "subagent_stats",
    }
)

#: Fields a synthesized result adds to the CLI's error result: `result` repeats the
#: message (parents read it there, and the Python SDK's `ResultMessage.result` shows it),
#: and `supervisor` marks the frame as the supervisor's.
SYNTHESIZED_RESULT_ADDS = frozenset({"result", "supervisor"})


def synthesized_result(
    *, session_id: str | None, duration_ms: float, terminal_reason: str, message: str
) -> Frame:
    """A `result` for a turn whose own result the CLI never wrote.

    Shaped like the CLI's own `error_during_execution` result (every field it writes, with
    the same JSON type, but for `SYNTHESIZED_RESULT_OMITS`), so the official SDKs parse
    it: the TypeScript SDK reads `errors` from every error result and dies without it.
    `"supervisor": {"synthesized": true}` lets a careful parent tell it apart.
    """
    return Frame.from_data(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "duration_ms": round(duration_ms),
            "duration_api_ms": 0,
            "num_turns": 0,
            "stop_reason": None,
            "errors": [message],
            "result": message,
            "session_id": session_id or "",
            "total_cost_usd": 0,
            "usage": copy.deepcopy(_NO_USAGE),
            "modelUsage": {},
            "model_usage_since_last_result": {},
            "permission_denials": [],
            "safety_stops": 0,
            "terminal_reason": terminal_reason,
            "uuid": str(uuid.uuid4()),
            "supervisor": {"synthesized": True},
        }
    )


def supervisor_cancel(
    report: CancelReport | None,
    session_id: str | None,
    request_ids: list[Any],
    *,
    trigger: CancelTrigger = "request",
) -> Frame:
    """Sent once the session is ready again after a cancel (`report` null: nothing ran).

    `trigger` says what started it, also when there was nothing to cancel.
    """
    data: dict[str, Any] = {
        "type": "system",
        "subtype": "supervisor_cancel",
        "session_id": session_id,
        "trigger": trigger,
        "report": None if report is None else report.to_dict(),
    }
    if request_ids:
        data["request_ids"] = request_ids
    return Frame.from_data(data)


def supervisor_error(code: str, message: str, **details: Any) -> Frame:
    error: dict[str, Any] = {"code": code, "message": message, **details}
    return Frame.from_data({"type": "system", "subtype": "supervisor_error", "error": error})


def error_frame(problem: Problem, **details: Any) -> Frame:
    """The `supervisor_error` that tells the user about `problem`."""
    return supervisor_error(problem.code, problem.message, **details)


# ---------------------------------------------------------------------- wording


@attrs.frozen
class Problem:
    """Something the supervisor tells its user: a stable code and the facts behind it.

    The machine decides *that* something is wrong and says it as data; the words are
    chosen here, once (`MESSAGES`), so a message can be reworded without touching the
    machine or its tests. `code` is what goes on the wire (a `supervisor_error` code, a
    synthesized result's `terminal_reason`); `wording` picks the message when one code
    has several (it defaults to the code).
    """

    code: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    wording: str | None = None

    @property
    def message(self) -> str:
        return MESSAGES[self.wording or self.code](**self.params)


def problem(code: str, wording: str | None = None, **params: Any) -> Problem:
    return Problem(code, params, wording)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _said(tail: str) -> str:
    tail = tail.strip()
    return f"; it said: {tail[-500:]}" if tail else ""


_WHERE = "claude= in the library, --claude or CLAUDE_SUPERVISOR_CLAUDE in the executable"


def _dropped_line(source: str, message: str) -> str:
    who = "your input" if source == "user" else "the Claude Code CLI's output"
    return f"a line of {who} was dropped: {message}"


def _respawn_failed(error: str, session_id: str | None, fresh: bool) -> str:
    what = (
        "as a new session after the resume failed" if fresh else f"to resume session {session_id}"
    )
    return (
        f"cannot restart the Claude Code CLI {what}: "
        f"{error}; reinstall it or point the supervisor at it ({_WHERE})"
    )


def _exited_before_answering(returncode: int | None, said: str, fresh: bool = False) -> str:
    if fresh:
        what = "the Claude Code CLI, started as a new session after the resume failed,"
        advice = "check the CLI's arguments and its installation, then start a new session"
    else:
        what, advice = "the Claude Code CLI", "check the CLI's path and arguments"
    return f"{what} exited ({describe_exit(returncode)}) before it answered{_said(said)}; {advice}"


def _session_lost(
    session_id: str | None, returncode: int | None, why: str, no_persistence: bool
) -> str:
    which = f"session {session_id}" if session_id else "the session"
    message = (
        f"the Claude Code CLI could not resume {which} "
        f"({describe_exit(returncode)}{'; it said: ' + why if why else ''}), so "
        "the supervisor started it again as a new session: the conversation's history "
        "is lost (the CLI no longer knows the earlier turns); send again whatever "
        "context the next turns need"
    )
    if no_persistence:
        message += (
            ". The session was started with --no-session-persistence, which keeps no "
            "transcript to resume: drop that flag to keep the history across a cancel "
            "that restarts the CLI"
        )
    return message


def _cancelled(
    trigger: str = "request", stall_timeout: Any = None, turn_timeout: Any = None
) -> str:
    if trigger == "stall":
        return (
            f"the turn was cancelled: the Claude Code CLI wrote nothing for "
            f"{stall_timeout:g} s while no tool was running "
            "(stall_timeout, --stall-timeout)"
        )
    if trigger == "turn_timeout":
        return (
            f"the turn was cancelled: it ran longer than its limit of "
            f"{turn_timeout:g} s (turn_timeout, --turn-timeout)"
        )
    return "the turn was cancelled"


#: Every message the supervisor's decisions produce, by wording (see `Problem`).
MESSAGES: dict[str, Callable[..., str]] = {
    # A line that is not a frame (`code` is the framing error's, `cli_`-prefixed for the CLI).
    "dropped_line": _dropped_line,
    # The CLI cannot be started, or did not start.
    "cli_not_started": lambda error: f"{error}; check the CLI's path ({_WHERE})",
    "cli_exited_before_answering": _exited_before_answering,
    "respawn_failed": _respawn_failed,
    "resume_not_answered": lambda timeout, session_id: (
        f"the resumed CLI did not answer within {timeout:g} s (session {session_id}); raise "
        "ready_timeout for very large sessions, or start a new session"
    ),
    "session_lost": _session_lost,
    "tree_not_killed": lambda: (
        "the CLI's processes did not exit after SIGKILL (stuck in the kernel?); "
        "the session cannot continue"
    ),
    # What the CLI did on its own.
    "cli_exited": lambda returncode, stderr: (
        f"the Claude Code CLI exited unexpectedly ({describe_exit(returncode)})"
        f"{_said(stderr)}; restarting it with --resume"
    ),
    "cli_exited_during_turn": lambda returncode, stderr: (
        f"the Claude Code CLI exited ({describe_exit(returncode)}) during this turn; the "
        "supervisor restarts it with --resume: send the turn again" + _said(stderr)
    ),
    "cli_unexpected_result": lambda: "the Claude Code CLI wrote a result while no turn was running",
    "turn_not_started": lambda timeout, turn: (
        f"the Claude Code CLI wrote nothing for {timeout:g} s after turn {turn} was sent to "
        "it (it starts a turn with system/init within about a second); the supervisor "
        "cancels the turn so the turns behind it can run. Send it again; if the CLI is "
        "just slow to start turns (many MCP servers?), raise start_timeout (--start-timeout)"
    ),
    "turn_not_started_result": lambda timeout: (
        f"the Claude Code CLI wrote nothing for {timeout:g} s after this turn was sent to "
        "it, so the supervisor cancelled it (the turns behind it run next): send it again"
    ),
    # What the user sent.
    "invalid_content": lambda turn, problem: (
        f"turn {turn} was not sent to the Claude Code CLI: {problem}; "
        "fix the content and send the turn again"
    ),
    "unknown_supervisor_frame": lambda kind: (
        f"unknown supervisor frame type {kind!r}; "
        "the supervisor accepts cancel_turn and supersede_turn"
    ),
    "invalid_control_request": lambda: (
        'a control_request needs a "request_id" (a string or an integer) '
        "to be answered; it was not sent to the CLI"
    ),
    "invalid_cancel_turn_request_id": lambda: (
        'cancel_turn "request_id" must be a string or an integer'
    ),
    "invalid_cancel_turn_cancel_queued": lambda: 'cancel_turn "cancel_queued" must be a boolean',
    # Why a turn got a result the CLI did not write.
    "cancelled": _cancelled,
    "closed_during_turn": lambda: "the session was closed during this turn",
    "closing": lambda: "the session is closing: no new turn can start",
    "closed_before_start": lambda: "the session was closed before this turn started",
    "stopped_before_start": lambda: "the session was stopped before this turn started",
    "cancelled_before_start": lambda: "cancelled before it started",
    "supervisor_failed": lambda failure: failure,
    # Why a control request got its answer from the supervisor.
    "unanswered_on_close": lambda: (
        "the Claude Code CLI exited before answering: the session was closed"
    ),
    "unanswered_on_restart": lambda: (
        "the Claude Code CLI exited before answering; the supervisor restarts it "
        "(a session-level request is sent to it again; send any other request again)"
    ),
}


#: The fields each known content block type cannot do without, and their JSON types.
#: The Messages API refuses a block without them, and the real CLI (2.1.328) goes silent
#: on some of them (a `text` whose `text` is not a string): it neither answers nor fails,
#: and every turn behind that one would wait forever. Blocks of any other type pass
#: unchecked when their `type` is a string, so a block type newer than this list still
#: reaches the CLI.
BLOCK_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "text": (("text", str),),
    "image": (("source", dict),),
    "document": (("source", dict),),
    "tool_result": (("tool_use_id", str),),
    "tool_use": (("id", str), ("name", str), ("input", dict)),
}

_JSON_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "a list"}


def content_problem(content: object) -> str | None:
    """What is wrong with a user turn's `content`, or None when the CLI can take it.

    Valid: a string, or a list (possibly empty) of content blocks, each an object with a
    string `type` and, for the types in `BLOCK_FIELDS`, their required fields.
    """
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f'"content" must be a string or a list of content blocks, not {_json_kind(content)}'
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            return (
                f'content block {index} must be an object with a "type" '
                f'(such as {{"type": "text", "text": "..."}}), not {_json_kind(block)}'
            )
        kind = block.get("type")
        if not isinstance(kind, str):
            return f'content block {index} needs a "type" that is a string, not {_json_kind(kind)}'
        for name, expected in BLOCK_FIELDS.get(kind, ()):
            if not isinstance(block.get(name), expected):
                return (
                    f'content block {index} of type "{kind}" needs "{name}": '
                    f"{_JSON_NAMES[expected]}, not {_json_kind(block.get(name))}"
                )
    return None


def user_frame_problem(frame: Frame) -> str | None:
    """What is wrong with a `user` frame's message, or None when it can be forwarded."""
    message = frame.data.get("message")
    if not isinstance(message, dict):
        return (
            'a user frame needs "message": an object such as '
            f'{{"role": "user", "content": "..."}}, not {_json_kind(message)}'
        )
    if "content" not in message:
        return 'a user frame\'s "message" needs "content": a string or a list of content blocks'
    return content_problem(message["content"])


def _json_kind(value: object) -> str:
    """How a JSON value reads in an error message: its type and a short preview."""
    if value is None:
        return "null (or missing)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
