"""Record the real CLI's own frames of the kinds the supervisor also writes in its name.

The supervisor promises that what it writes for the CLI (a synthesized `result`, the
answer to an interrupt, an error answer to a control request) looks exactly like the
CLI's own frame of that kind, so the official SDKs parse it. The promise is checked
against frames recorded from the real CLI, committed under `tests/data/cli_frames/`
(tests/test_frame_shapes.py), and against a live CLI in tests/realcli/test_frame_shapes_live.py,
so a CLI bump that adds or retypes a field is caught. Re-record after a bump with::

    cd tests && ../.venv/bin/python -m realcli.cli_frames    # writes tests/data/cli_frames/

Not a test itself (pytest does not collect it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI

from .probe_cli import CLI, LONG_TOOL, control, find_python_tool, running, turn, user_frame

DATA = Path(__file__).resolve().parents[1] / "data" / "cli_frames"

#: Frame kinds recorded: file stem -> what it is.
KINDS = {
    "result_success": "the result of a plain turn",
    "result_error_during_execution": "the result of a turn interrupted during a tool call",
    "control_response_success": "the answer to an in-band interrupt",
    "control_response_error": "the answer to a control request the CLI refuses",
}

Frame = dict[str, Any]


def _wait(cli: CLI, start: int, what: str, **match: Any) -> Frame:
    def pred(frame: Frame) -> bool:
        response = frame.get("response")
        inner = response if isinstance(response, dict) else {}
        return all(frame.get(k) == v or inner.get(k) == v for k, v in match.items())

    got = cli.wait_frame(pred, 30, start=start)
    if got is None:
        raise RuntimeError(f"the CLI wrote no {what} within 30 s; stderr: {cli.stderr[-5:]}")
    frame: Frame = got[1]
    return frame


def record(exe: Path, api: FakeMessagesAPI) -> dict[str, Frame]:
    """Drive one real CLI through a plain turn, a refused control request and an
    interrupted tool call, and return one frame of each kind in `KINDS`."""
    frames: dict[str, Frame] = {}
    with running(exe, api) as cli:
        _, result, _ = turn(cli, "hello")
        if result is None:
            raise RuntimeError(f"the CLI wrote no result within 30 s; stderr: {cli.stderr[-5:]}")
        frames["result_success"] = result
        start = cli.mark()
        cli.send(control("supervisor_no_such_request", "refused-1"))
        frames["control_response_error"] = _wait(
            cli, start, "error answer", type="control_response", request_id="refused-1"
        )
        start = cli.mark()
        cli.send(user_frame(f"[[api: bash={LONG_TOOL}]]"))
        if find_python_tool(cli, 30) is None:
            raise RuntimeError("the CLI did not start the long tool within 30 s")
        cli.send(control("interrupt", "interrupt-1"))
        frames["control_response_success"] = _wait(
            cli, start, "interrupt answer", type="control_response", request_id="interrupt-1"
        )
        frames["result_error_during_execution"] = _wait(
            cli, start, "error result", type="result", subtype="error_during_execution"
        )
    return frames


def main() -> int:
    exe = ensure_claude()
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    with FakeMessagesAPI() as api:
        frames = record(exe, api)
    DATA.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        path = DATA / f"{name}.json"
        path.write_text(json.dumps(frame, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{path}: {KINDS[name]}")
    (DATA / "VERSION").write_text(version.stdout.split()[0] + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
