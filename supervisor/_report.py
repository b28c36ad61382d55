"""What a cancel cost: the value handed back for every cancel, and shown to users as JSON."""

from __future__ import annotations

from typing import Any, Literal

import attrs

#: Which rung of the ladder ended the turn.
CancelPath = Literal["interrupt", "sigint", "kill"]

#: What started the cancel: a `cancel_turn`, the library's `cancel()` or the user's own
#: in-band interrupt (`"request"`), a supersede, the executable's SIGINT contract, or one
#: of the watchdog's limits (`"stall"`: the CLI wrote nothing for `stall_timeout`;
#: `"turn_timeout"`: the turn ran longer than `turn_timeout`).
CancelTrigger = Literal["request", "supersede", "sigint", "stall", "turn_timeout", "start_timeout"]


@attrs.frozen
class Step:
    """A moment in a cancel, in milliseconds since the cancel was requested."""

    name: str
    ms: float


@attrs.frozen
class CancelReport:
    """The timeline of one cancel, from the request to a session ready for the next turn.

    Step names, in the order they can happen: ``interrupt_sent``, ``interrupt_answered``,
    ``result``, ``cli_stopped``, ``sigint_sent``, ``exited``, ``kill_sent``, ``tree_killed``,
    ``turn_processes_killed``, ``respawned``, ``ready``. A ``kill_sent`` with no
    ``sigint_sent`` before it is the adaptive shortcut: the CLI was stopped, or did not
    acknowledge the interrupt within ``interrupt_ack_timeout``. When the resumed CLI fails,
    ``exited`` and ``started_fresh`` (a new CLI session, the history lost) come before
    ``ready``.
    """

    path: CancelPath
    total_ms: float
    steps: tuple[Step, ...]
    respawned: bool
    session_id: str | None
    processes_killed: int
    trigger: CancelTrigger = "request"

    def step_ms(self, name: str) -> float | None:
        """When the named step happened, or None if it did not."""
        return next((step.ms for step in self.steps if step.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `steps` becomes a list of {"name", "ms"} objects."""
        return {
            "path": self.path,
            "trigger": self.trigger,
            "total_ms": self.total_ms,
            "steps": [{"name": step.name, "ms": step.ms} for step in self.steps],
            "respawned": self.respawned,
            "session_id": self.session_id,
            "processes_killed": self.processes_killed,
        }
