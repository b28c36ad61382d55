"""The supervisor's frames against the live CLI and against the TypeScript SDK's types.

tests/test_frame_shapes.py compares what the supervisor writes in the CLI's name with
frames recorded from the pinned CLI. Here the same frames are recorded live, so a CLI
bump that adds, drops or retypes a field fails this test (re-record with
tests/realcli/cli_frames.py); and the supervisor's frames are checked against the type
definitions the official TypeScript SDK ships (`sdk.d.ts`): every field its type
requires is there with a JSON type the type allows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from frame_shapes import json_type, mismatches, recorded

from supervisor import _protocol as protocol
from supervisor.testing.claude_install import ensure_agent_sdk
from supervisor.testing.fake_api import FakeMessagesAPI

from .cli_frames import KINDS, record

pytestmark = pytest.mark.real_cli

NULLABLE = frozenset({"stop_reason"})


def test_the_live_cli_writes_the_recorded_shapes(
    claude_cli: Path, api: FakeMessagesAPI, tmp_path: Path
) -> None:
    live = record(claude_cli, api)
    assert set(live) == set(KINDS)
    for name, frame in live.items():
        assert mismatches(recorded(name), frame) == [], (name, "re-record: cli_frames.py")
        assert mismatches(frame, recorded(name)) == [], (name, "re-record: cli_frames.py")
    ours = {
        "result_error_during_execution": protocol.synthesized_result(
            session_id="s", duration_ms=1, terminal_reason="cli_exited", message="m"
        ),
        "control_response_success": protocol.control_success("r"),
        "control_response_error": protocol.control_error("r", "m"),
    }
    for name, mine in ours.items():
        assert (
            mismatches(
                live[name],
                mine.data,
                omitted=protocol.SYNTHESIZED_RESULT_OMITS,
                added=protocol.SYNTHESIZED_RESULT_ADDS,
                nullable=NULLABLE,
            )
            == []
        ), name


# ------------------------------------------------------------ the SDK's .d.ts types


class Declarations:
    """Just enough of a reader for the SDK's `declare type X = {...}` declarations: the
    top-level fields of an object type, whether each is optional, and the JSON types its
    declared type allows."""

    def __init__(self, text: str) -> None:
        # Comments carry braces and colons in prose; drop them first.
        self.text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)

    def body(self, name: str) -> str:
        match = re.search(rf"declare type {name} = ", self.text)
        assert match is not None, f"no type {name} in sdk.d.ts"
        return self.text[match.end() : self._end(match.end())].strip()

    def _end(self, start: int) -> int:
        depth = 0
        for i in range(start, len(self.text)):
            ch = self.text[i]
            if ch in "{<(":
                depth += 1
            elif ch in "}>)":
                depth -= 1
            elif ch == ";" and depth == 0:
                return i
        raise AssertionError("unterminated declaration")

    def fields(self, name: str) -> dict[str, tuple[bool, str]]:
        """Field -> (optional, declared type) of an object type."""
        body = self.body(name)
        assert body.startswith("{") and body.endswith("}"), f"{name} is not an object type"
        fields: dict[str, tuple[bool, str]] = {}
        depth, start = 0, 1
        inner = body[1:-1]
        for i, ch in enumerate(inner + ";"):
            if ch in "{<(":
                depth += 1
            elif ch in "}>)":
                depth -= 1
            elif ch == ";" and depth == 0:
                member = inner[start - 1 : i].strip()
                start = i + 2
                found = re.match(r"(\w+)(\??):\s*(.*)$", member, flags=re.S)
                if found:
                    fields[found[1]] = (found[2] == "?", found[3].strip())
        return fields

    def json_types(self, declared: str) -> set[str]:
        """The JSON types a declared type admits ("any" when it cannot tell)."""
        types: set[str] = set()
        for part in _top_level_union(declared):
            if part in ("string", "number", "boolean", "null"):
                types.add(part)
            elif part == "UUID":  # node's crypto UUID: a template string type
                types.add("string")
            elif part.endswith("[]") or part.startswith("Array<"):
                types.add("array")
            elif part.startswith(("{", "Record<")):
                types.add("object")
            elif part.startswith("'"):
                types.add("string")
            elif re.fullmatch(r"\w+", part) and re.search(rf"declare type {part} = ", self.text):
                body = self.body(part)
                types |= {"object"} if body.startswith("{") else self.json_types(body)
            else:
                types.add("any")
        return types

    def literals(self, declared: str) -> set[str] | None:
        """The string values a union of string literals allows (None: not such a union)."""
        parts = _top_level_union(declared)
        if not all(p.startswith("'") for p in parts):
            return None
        return {p.strip("'") for p in parts}


def _top_level_union(declared: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in declared:
        if ch in "{<(":
            depth += 1
        elif ch in "}>)":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def check(types: Declarations, name: str, frame: dict[str, Any]) -> list[str]:
    """How `frame` breaks the SDK's type `name`: a required field missing, or a value of
    a JSON type (or a literal) the type does not allow."""
    problems = []
    for field, (optional, declared) in types.fields(name).items():
        if field not in frame:
            if not optional:
                problems.append(f"{name}.{field}: required, missing")
            continue
        allowed = types.json_types(declared)
        got = json_type(frame[field])
        if "any" not in allowed and got not in allowed:
            problems.append(f"{name}.{field}: {got}, the type allows {sorted(allowed)}")
        literals = types.literals(declared)
        if literals is not None and frame[field] not in literals:
            problems.append(f"{name}.{field}: {frame[field]!r} not in {sorted(literals)}")
    return problems


@pytest.fixture(scope="module")
def sdk_types() -> Declarations:
    path = ensure_agent_sdk() / "node_modules" / "@anthropic-ai" / "claude-agent-sdk" / "sdk.d.ts"
    return Declarations(path.read_text(encoding="utf-8"))


def test_a_synthesized_result_is_an_sdk_result_error(sdk_types: Declarations) -> None:
    frame = protocol.synthesized_result(
        session_id="s", duration_ms=1, terminal_reason="cli_exited", message="m"
    ).data
    fields = sdk_types.fields("SDKResultError")
    assert not fields["errors"][0] and sdk_types.json_types(fields["errors"][1]) == {"array"}
    # `terminal_reason` is typed as the CLI's own reasons; the supervisor's are its own
    # (docs/protocol.md lists them), so only its JSON type is held to the SDK's.
    problems = check(sdk_types, "SDKResultError", {**frame, "terminal_reason": "completed"})
    assert problems == []
    assert json_type(frame["terminal_reason"]) == "string"
    # What it leaves out of the CLI's own result, the SDK's type does not require.
    for field in protocol.SYNTHESIZED_RESULT_OMITS:
        assert field not in fields or fields[field][0], field


def test_the_shape_check_sees_what_the_sdk_would_choke_on(sdk_types: Declarations) -> None:
    frame = protocol.synthesized_result(
        session_id="s", duration_ms=1, terminal_reason="completed", message="m"
    ).data
    broken = {k: v for k, v in frame.items() if k != "errors"} | {"num_turns": "0"}
    assert check(sdk_types, "SDKResultError", broken) == [
        "SDKResultError.num_turns: string, the type allows ['number']",
        "SDKResultError.errors: required, missing",
    ]


def test_control_answers_are_sdk_control_responses(sdk_types: Declarations) -> None:
    ok = protocol.control_success("r").data
    error = protocol.control_error("r", "m").data
    assert check(sdk_types, "SDKControlResponse", ok) == []
    assert check(sdk_types, "ControlResponse", ok["response"]) == []
    assert check(sdk_types, "ControlErrorResponse", error["response"]) == []
    assert check(sdk_types, "SDKControlInterruptResponse", ok["response"]["response"]) == []
