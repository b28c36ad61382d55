"""examples/bridge.py, run as a user would, against the fake CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import stray_processes

BRIDGE = Path(__file__).resolve().parent.parent / "examples" / "bridge.py"


def run_bridge(fake_claude: Path, store: Path, lines: list[str]) -> list[str]:
    command = [sys.executable, str(BRIDGE), "--claude", str(fake_claude)]
    done = subprocess.run(
        [*command, "--max-active", "2", "--store", str(store)],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_bridge_answers_each_chat_and_resumes_after_a_restart(
    fake_claude: Path, home: Path, process_audit: str
) -> None:
    store = home / "chats.db"
    out = run_bridge(
        fake_claude, store, ["chat-a: hello", "chat-b: hi", "chat-c: hey", "chat-a: again"]
    )
    assert sorted(out) == [
        "chat-a: reply #1 to: hello",
        "chat-a: reply #2 to: again",
        "chat-b: reply #1 to: hi",
        "chat-c: reply #1 to: hey",
    ]
    # A chat's answers come in order.
    assert out.index("chat-a: reply #1 to: hello") < out.index("chat-a: reply #2 to: again")
    assert stray_processes(process_audit, []) == []
    # A restarted bridge resumes its chats from the store, with their history.
    assert run_bridge(fake_claude, store, ["chat-b: still there?"]) == [
        "chat-b: reply #2 to: still there?"
    ]
    assert stray_processes(process_audit, []) == []
