"""Compare the shape of two stream-json frames: which fields, with which JSON types.

Used to hold the frames the supervisor writes in the CLI's name to the CLI's own frames
of the same kind (recorded in tests/data/cli_frames/, and live in a real-CLI test).
Values are not compared (a session id, a duration, a message differ by nature); field
names and JSON types are, recursively, except inside maps keyed by data (`modelUsage`
is keyed by model name), which are compared as objects only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).resolve().parent / "data" / "cli_frames"

#: Objects whose keys are data, not field names.
MAPS = frozenset({"modelUsage", "model_usage_since_last_result", "by_type"})


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def mismatches(
    theirs: Any,
    ours: Any,
    *,
    omitted: frozenset[str] = frozenset(),
    added: frozenset[str] = frozenset(),
    nullable: frozenset[str] = frozenset(),
    path: str = "",
) -> list[str]:
    """How `ours` differs in shape from `theirs` (the CLI's), one line per difference.

    `omitted`, `added` and `nullable` name top-level fields `ours` may leave out, may
    add, or may set to null where the CLI wrote a value.
    """
    found: list[str] = []
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return [f"{path or 'frame'}: not an object"]
    for key, value in theirs.items():
        where = f"{path}.{key}" if path else key
        if key not in ours:
            if not (path == "" and key in omitted):
                found.append(f"{where}: missing (the CLI writes {json_type(value)})")
            continue
        mine = ours[key]
        if json_type(mine) != json_type(value):
            if not (path == "" and key in nullable and mine is None):
                found.append(f"{where}: {json_type(mine)}, the CLI writes {json_type(value)}")
        elif isinstance(value, dict) and key not in MAPS:
            found += mismatches(value, mine, path=where)
    for key in sorted(ours.keys() - theirs.keys()):
        if not (path == "" and key in added):
            found.append(f"{path}.{key}: not written by the CLI" if path else f"{key}: extra")
    return found


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))
    return data
