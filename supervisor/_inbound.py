"""Frames from the user become the machine's events: the one place they are checked.

The executable reads frames from its stdin; what they ask for is decided here, before
the machine sees them, so the machine never parses a user's fields: a `cancel_turn` is a
`Cancel`, a `supersede_turn` a `Supersede`, a control request carries its id and subtype
already checked, and a frame that asks for something impossible is `Rejected` with the
reason as data (worded in `_protocol`). A turn's *content* is still checked by the
machine: a bad turn must get its result in its place in the queue.
"""

from __future__ import annotations

from typing import Any

from . import _machine as m
from . import _protocol as protocol
from ._framing import Frame


def user_event(frame: Frame) -> m.Event:
    """The event for one frame from the user."""
    kind = frame.type
    if kind == "cancel_turn":
        return _cancel_turn(frame.data)
    if kind == "supersede_turn":
        # Checked like a user frame's content: a bad one gets its error and its result.
        return m.Supersede(protocol.user_message(frame.data.get("content")))
    if kind is not None and kind.startswith("supervisor_"):
        return m.Rejected(protocol.problem("unknown_supervisor_frame", kind=kind))
    if kind == "control_request":
        request_id = protocol.request_id_of(frame.data)
        if request_id is None:
            return m.Rejected(protocol.problem("invalid_control_request"))
        request = frame.data.get("request")
        subtype = request.get("subtype") if isinstance(request, dict) else None
        return m.ControlRequest(frame, request_id, subtype if isinstance(subtype, str) else None)
    return m.FromUser(frame)


def _cancel_turn(data: dict[str, Any]) -> m.Event:
    request_id = data.get("request_id")
    cancel_queued = data.get("cancel_queued", False)
    if request_id is not None and protocol.request_id_of(data) is None:
        return m.Rejected(protocol.problem("invalid_cancel_turn", "invalid_cancel_turn_request_id"))
    if not isinstance(cancel_queued, bool):
        return m.Rejected(
            protocol.problem("invalid_cancel_turn", "invalid_cancel_turn_cancel_queued")
        )
    return m.Cancel(request_id, cancel_queued)
