"""The frames the supervisor writes itself, in one place.

Everything here builds a `Frame` the CLI or the parent will read: the interrupt the
supervisor sends on the user's behalf, the results it synthesizes when the CLI's own was
lost, and the `system` frames it adds (`supervisor_cancel`, `supervisor_error`).
docs/protocol.md describes each of them; keep the two in step.
"""

from __future__ import annotations

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
    return Frame.from_data(
        {
            "type": "control_response",
            "response": {
                "subtype": "success",
                "request_id": request_id,
                "response": response or {},
            },
        }
    )


def control_error(request_id: Any, message: str) -> Frame:
    return Frame.from_data(
        {
            "type": "control_response",
            "response": {"subtype": "error", "request_id": request_id, "error": message},
        }
    )


def user_message(content: str | list[Any]) -> Frame:
    """A user turn, shaped as the official SDKs send it."""
    return Frame.from_data(
        {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
            "session_id": "default",
        }
    )


def synthesized_result(
    *, session_id: str | None, duration_ms: float, terminal_reason: str, message: str
) -> Frame:
    """A `result` for a turn whose own result the CLI never wrote.

    It carries every field the official SDKs require of a result, so their parsers accept
    it, and `"supervisor": {"synthesized": true}` so a careful parent can tell it apart.
    """
    return Frame.from_data(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "duration_ms": round(duration_ms),
            "duration_api_ms": 0,
            "num_turns": 0,
            "result": message,
            "session_id": session_id or "",
            "total_cost_usd": 0,
            "usage": {},
            "terminal_reason": terminal_reason,
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
