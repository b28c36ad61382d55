"""A small harness for driving `SessionMachine` by hand: events in, actions out, fake time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from supervisor import _machine as m
from supervisor._framing import Frame
from supervisor._inbound import user_event
from supervisor._policy import EscalationPolicy
from supervisor._report import CancelReport

ARGS = ("-p", "--input-format", "stream-json", "--output-format", "stream-json")
SID = "11111111-2222-3333-4444-555555555555"


def frame(**data: Any) -> Frame:
    return Frame.from_data(data)


def user(text: str) -> Frame:
    return frame(type="user", message={"role": "user", "content": text})


def init() -> Frame:
    return frame(type="system", subtype="init", session_id=SID)


def result(**extra: Any) -> Frame:
    fields: dict[str, Any] = {"subtype": "success", "is_error": False, "session_id": SID}
    return frame(type="result", **{**fields, **extra})


def response(request_id: str, subtype: str = "success") -> Frame:
    return frame(
        type="control_response",
        response={"subtype": subtype, "request_id": request_id, "response": {}},
    )


class Harness:
    def __init__(
        self,
        policy: EscalationPolicy | None = None,
        args: tuple[str, ...] = ARGS,
        *,
        ladder: Mapping[m.Phase, m.Rung] = m.LADDER,
    ):
        self.machine = m.SessionMachine(args, policy, ladder=ladder)
        self.now = 0.0
        self.log: list[m.Action] = []
        self.last = self._record(self.machine.start(self.now))
        self.feed(m.CliSpawned())

    def _record(self, actions: list[m.Action]) -> list[m.Action]:
        self.log.extend(actions)
        return actions

    def feed(self, event: m.Event, *, after: float = 0.0) -> list[m.Action]:
        self.now += after
        self.last = self._record(self.machine.handle(event, self.now))
        return self.last

    def user(self, data: Frame) -> list[m.Action]:
        return self.feed(user_event(data))  # as the executable reads it

    def cli(self, data: Frame) -> list[m.Action]:
        return self.feed(m.FromCli(data))

    def expire(self) -> list[m.Action]:
        """Lets time run to the machine's deadline."""
        deadline = self.machine.deadline
        assert deadline is not None, "no deadline is pending"
        self.now = max(self.now, deadline)
        return self.feed(m.DeadlinePassed())

    # What the actions say, in the words a test wants.

    def written(self, actions: list[m.Action] | None = None) -> list[dict[str, Any]]:
        return [a.frame.data for a in self._of(m.WriteToCli, actions)]

    def delivered(
        self, actions: list[m.Action] | None = None
    ) -> list[tuple[dict[str, Any], int | None]]:
        return [(a.frame.data, a.turn) for a in self._of(m.Deliver, actions)]

    def results_by_turn(self) -> dict[int | None, list[dict[str, Any]]]:
        out: dict[int | None, list[dict[str, Any]]] = {}
        for data, turn in self.delivered(self.log):
            if data.get("type") == "result":
                out.setdefault(turn, []).append(data)
        return out

    def report(self, actions: list[m.Action]) -> CancelReport:
        """The one report `actions` finish a cancel with."""
        [report] = [a.report for a in actions if isinstance(a, m.CancelDone)]
        assert report is not None
        return report

    def reports(self) -> list[Any]:
        return [a.report for a in self._of(m.CancelDone, self.log)]

    def _of(self, kind: type[Any], actions: list[m.Action] | None) -> list[Any]:
        return [a for a in (self.last if actions is None else actions) if isinstance(a, kind)]

    def interrupt_id(self) -> str:
        for data in reversed(self.written(self.log)):
            if data.get("type") == "control_request" and data["request"]["subtype"] == "interrupt":
                return str(data["request_id"])
        raise AssertionError("no interrupt was sent")

    def answer_probe(self) -> list[m.Action]:
        """Answers every control request the supervisor sent to a respawned CLI."""
        ids = [
            d["request_id"]
            for d in self.written(self.log)
            if d.get("type") == "control_request"
            and str(d.get("request_id", "")).startswith(("supervisor-probe", "supervisor-replay"))
        ]
        actions: list[m.Action] = []
        for request_id in ids:
            actions += self.cli(response(request_id))
        self.last = actions
        return actions
