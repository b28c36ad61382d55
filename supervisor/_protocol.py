"""The frames the supervisor writes itself, in one place.

Everything here builds a `Frame` the CLI or the parent will read: the interrupt the
supervisor sends on the user's behalf, the results it synthesizes when the CLI's own was
lost, and the `system` frames it adds (`supervisor_cancel`, `supervisor_error`).
docs/protocol.md describes each of them; keep the two in step.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

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
