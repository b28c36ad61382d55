"""The docs that are drawn from the code stay true to it."""

from __future__ import annotations

import signal
from pathlib import Path

from supervisor import _machine as m

ARCHITECTURE = Path(__file__).parent.parent / "docs" / "architecture.md"
START, END = "<!-- ladder table: tests/test_docs.py -->", "<!-- end of ladder table -->"


def ladder_table(ladder: dict[str, m.Rung] | None = None) -> str:
    """The ladder as a markdown table, one row per phase."""
    rows = [
        "| Phase | On entry (step) | Deadline (`EscalationPolicy`) "
        "| Trigger: where it leads (step) |",
        "| --- | --- | --- | --- |",
    ]
    for phase, rung in (ladder or m.LADDER).items():
        enter = rung.enter
        if isinstance(enter, m.Entry):
            entry = enter.name
        elif isinstance(enter, m.SignalCli):
            entry = f"SignalCli({signal.Signals(enter.signum).name})"
        else:
            entry = type(enter).__name__
        if rung.step:
            entry += f" (`{rung.step}`)"
        deadline = f"`{rung.timeout}`"
        if rung.answer_timeout:
            deadline += f"; unanswered: `{rung.answer_timeout}`"
        arrows = []
        for trigger, go in rung.on.items():
            to = "stay" if go.to is None else go.to.name if isinstance(go.to, m.End) else go.to
            arrows.append(f"{trigger.value}: {to}" + (f" (`{go.step}`)" if go.step else ""))
        rows.append(f"| `{phase}` | {entry} | {deadline} | {'; '.join(arrows)} |")
    return "\n".join(rows)


def test_the_architecture_doc_shows_the_ladder_as_the_code_has_it() -> None:
    text = ARCHITECTURE.read_text()
    assert START in text and END in text, "docs/architecture.md lost its ladder table markers"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert shown == ladder_table(), (
        "docs/architecture.md's ladder table differs from supervisor/_machine.py's LADDER; "
        "paste this in its place:\n" + ladder_table()
    )
