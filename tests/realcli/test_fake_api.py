"""Smoke tests: the real Claude Code CLI completes turns against the fake Messages API.

Why: every real-CLI test of the supervisor stands on two pieces, the pinned CLI from
npm (``ensure_claude``) and the fake API that scripts the model. If the CLI moves (a new
version, ``CLAUDE_SUPERVISOR_TEST_CLI_VERSION``) and stops talking to the fake, these
small tests say so directly, instead of a supervisor test failing for an unrelated
reason. The CLI is driven directly here (subprocess, stream-json), with no supervisor.
The tests marked ``real_cli`` run the CLI; the others check the fake alone over HTTP
(fast, and they pin down the protocol details the CLI relies on).

Each test gets its own HOME and cwd, and leaves no process behind: the CLI and its
tool processes carry a unique environment token (the CLI passes its environment on to
its tools, even to detached grandchildren), and the teardown ends the CLI and then
kills, and reports as a failure, any process that still carries the token. This is the
same idea as the suite-wide audit in ``tests/conftest.py``, kept here so the smoke test
stands on its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI, typed_user_texts

Frame = dict[str, Any]
TOKEN_VAR = "FAKE_API_TEST_TOKEN"


class StreamJsonCLI:
    """The CLI in ``-p`` stream-json mode, read line by line with timeouts."""

    def __init__(self, exe: Path, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [
                str(exe),
                *STREAM_JSON_ARGS,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._buf = b""
        self.frames: list[Frame] = []

    def send_user(self, content: str | list[dict[str, Any]]) -> None:
        """Write one user frame."""
        frame = {"type": "user", "message": {"role": "user", "content": content}}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(frame) + "\n").encode())
        self.proc.stdin.flush()

    def next_frame(self, deadline: float) -> Frame:
        """The next stdout frame; fails the test at *deadline* or at EOF."""
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no frame from the CLI in time; frames so far: {self.frames}")
            if self._sel.select(left):
                chunk = self.proc.stdout.read(65536)
                if not chunk:
                    pytest.fail(f"CLI closed stdout (exit {self.proc.poll()}); {self.frames}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        if not line.strip():
            return self.next_frame(deadline)
        frame: Frame = json.loads(line)
        self.frames.append(frame)
        return frame

    def turn(self, content: str | list[dict[str, Any]], timeout: float = 30.0) -> list[Frame]:
        """Send a user frame and return the frames up to and including its ``result``."""
        self.send_user(content)
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            frame = self.next_frame(deadline)
            frames.append(frame)
            if frame.get("type") == "result":
                return frames

    def finish(self, timeout: float = 15.0) -> int | None:
        """Close stdin (the CLI then exits) and wait; None if it did not exit in time."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _processes_with_token(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries our token (the CLI and its tools)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
            carries = f"{TOKEN_VAR}={token}".encode() in environ.split(b"\0")
            if carries and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@pytest.fixture(scope="session")
def claude_exe() -> Path:
    """The pinned CLI, installed on first use (fails loudly if npm cannot install it)."""
    return ensure_claude()


@pytest.fixture
def fake_api() -> Iterator[FakeMessagesAPI]:
    """A fresh fake API per test, so its request log belongs to that test alone."""
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture
def cli(claude_exe: Path, fake_api: FakeMessagesAPI, tmp_path: Path) -> Iterator[StreamJsonCLI]:
    """A CLI with its own HOME and cwd; at teardown nothing it started may survive."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    token = uuid.uuid4().hex
    proc = StreamJsonCLI(claude_exe, fake_api.env(home, **{TOKEN_VAR: token}), cwd)
    try:
        yield proc
    finally:
        code = proc.finish()
        if code is None:
            proc.proc.kill()
            proc.proc.wait(10)
        leftovers = _processes_with_token(token)
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(leftovers, timeout=5)
        assert code is not None, "the CLI did not exit within 15 s of stdin EOF"
        assert not leftovers, f"processes left running after the test: {leftovers}"


def _kinds(frames: list[Frame]) -> list[str]:
    return [
        f"{f.get('type')}/{f.get('subtype')}" if f.get("subtype") else f["type"] for f in frames
    ]


@pytest.mark.real_cli
def test_text_turn(cli: StreamJsonCLI, fake_api: FakeMessagesAPI) -> None:
    frames = cli.turn("hello")
    assert _kinds(frames) == ["system/init", "assistant", "result/success"]
    result = frames[-1]
    assert result["is_error"] is False
    assert result["result"] == "reply #1 to: hello"
    assert result["session_id"] == frames[0]["session_id"]
    assert fake_api.request_count == 1
    assert fake_api.last_user_texts() == ["hello"]

    # A second turn in the same process sees the first one (N counts typed user turns).
    frames = cli.turn([{"type": "text", "text": "again"}])
    assert frames[-1]["result"] == "reply #2 to: again"
    assert frames[-1]["session_id"] == result["session_id"]
    assert typed_user_texts(fake_api.last_request()) == ["hello", "again"]


@pytest.mark.real_cli
def test_bash_tool_turn(cli: StreamJsonCLI, fake_api: FakeMessagesAPI) -> None:
    frames = cli.turn("[[api: bash=echo tool-output-42]]")
    assert _kinds(frames) == ["system/init", "assistant", "user", "assistant", "result/success"]
    tool_use = frames[1]["message"]["content"][0]
    assert tool_use["type"] == "tool_use"
    assert tool_use["name"] == "Bash"
    assert tool_use["input"]["command"] == "echo tool-output-42"
    tool_result = frames[2]["message"]["content"][0]
    assert tool_result["type"] == "tool_result"
    assert tool_result["tool_use_id"] == tool_use["id"]
    assert "tool-output-42" in str(tool_result["content"])
    assert frames[-1]["result"] == "tool done"
    assert [h.scenario for h in fake_api.handled] == ["bash", "tool_done"]


@pytest.mark.real_cli
def test_stall_until_released(cli: StreamJsonCLI, fake_api: FakeMessagesAPI) -> None:
    cli.send_user("[[api: stall]]")
    fake_api.wait_for_stall(timeout=30)
    fake_api.release_stalls()
    deadline = time.monotonic() + 30
    while (frame := cli.next_frame(deadline)).get("type") != "result":
        pass
    assert frame["is_error"] is False
    assert frame["result"] == "stalling released"


@pytest.mark.real_cli
def test_api_error_fails_turn_promptly(cli: StreamJsonCLI, fake_api: FakeMessagesAPI) -> None:
    frames = cli.turn("[[api: error]]", timeout=15)
    result = frames[-1]
    assert result["is_error"] is True
    assert result["terminal_reason"] == "api_error"
    assert fake_api.request_count == 1


# --------------------------------------------------------------------------------------
# The fake alone, over plain HTTP
# --------------------------------------------------------------------------------------

REMINDER = {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>"}


def _post(
    api: FakeMessagesAPI, body: dict[str, Any], path: str = "/v1/messages?beta=true"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(api.host, api.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse a server-sent event stream into (event name, data) pairs."""
    out = []
    for chunk in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def _text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"].get("text", "") for e, d in events if e == "content_block_delta")


def _request(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "stream": True, "max_tokens": 10, "messages": list(messages)}


def test_fake_streams_reply_counting_typed_user_turns() -> None:
    with FakeMessagesAPI() as api:
        body = _request(
            {"role": "user", "content": [REMINDER, {"type": "text", "text": "one"}]},
            {"role": "assistant", "content": "reply #1 to: one"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "old"},
                    REMINDER,
                    {"type": "text", "text": "two"},
                ],
            },
            {"role": "system", "content": "# Environment"},
        )
        status, headers, raw = _post(api, body)
        assert status == 200
        assert headers["content-type"] == "text/event-stream"
        events = _events(raw)
        assert [e for e, _ in events] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert _text_of(events) == "reply #2 to: two"
        assert events[4][1]["delta"]["stop_reason"] == "end_turn"
        assert api.last_user_texts() == ["one", "two"]
        assert api.wait_for_requests(1, timeout=1) == body


def test_fake_bash_then_tool_done() -> None:
    with FakeMessagesAPI() as api:
        asked = {"role": "user", "content": "[[api: bash=echo hi]]"}
        events = _events(_post(api, _request(asked))[2])
        start = events[1][1]["content_block"]
        assert start["type"] == "tool_use"
        assert start["name"] == "Bash"
        deltas = [d["delta"] for e, d in events if e == "content_block_delta"]
        partial = "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
        assert json.loads(partial) == {"command": "echo hi", "description": "fake api tool"}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        assert api.wait_for_scenario("bash", timeout=1).tool_use_id == start["id"]
        result = {"type": "tool_result", "tool_use_id": start["id"], "content": "hi"}
        body = _request(
            asked,
            {"role": "assistant", "content": [start]},
            {"role": "user", "content": [result, REMINDER]},
        )
        assert _text_of(_events(_post(api, body)[2])) == "tool done"


def test_fake_stall_release_and_close() -> None:
    with FakeMessagesAPI() as api:
        got: list[bytes] = []
        stalled = _request({"role": "user", "content": "[[api: stall]]"})
        worker = threading.Thread(target=lambda: got.append(_post(api, stalled)[2]))
        worker.start()
        api.wait_for_stall(timeout=10)
        assert api.stalled_count == 1
        api.release_stalls()
        worker.join(10)
        assert _text_of(_events(got[0])) == "stalling released"
        assert api.handled[0].completed

    api = FakeMessagesAPI()
    api.rearm_stalls()
    worker = threading.Thread(target=lambda: _post(api, stalled))
    worker.start()
    api.wait_for_stall(timeout=10)
    started = time.monotonic()
    api.close()  # cuts the stalled stream and joins the handler thread
    assert time.monotonic() - started < 5
    worker.join(10)
    assert not worker.is_alive()
    assert api.handled[0].completed is False


def test_fake_error_and_other_endpoints() -> None:
    with FakeMessagesAPI() as api:
        status, headers, raw = _post(api, _request({"role": "user", "content": "[[api: error]]"}))
        assert status == 500
        assert headers["x-should-retry"] == "false"
        assert json.loads(raw)["error"]["type"] == "api_error"
        status, _, raw = _post(api, _request({"role": "user", "content": "[[api: error=400]]"}))
        assert (status, json.loads(raw)["error"]["type"]) == (400, "invalid_request_error")
        status, _, raw = _post(api, {"messages": []}, "/v1/messages/count_tokens")
        assert status == 200 and json.loads(raw)["input_tokens"] >= 1
        assert _post(api, {}, "/v1/unknown")[0] == 404
        whole = _request({"role": "user", "content": "hi"}) | {"stream": False}
        status, _, raw = _post(api, whole)
        assert json.loads(raw)["content"] == [{"type": "text", "text": "reply #1 to: hi"}]
        with pytest.raises(TimeoutError):
            api.wait_for_requests(99, timeout=0.1)


def test_fake_slow_spreads_the_reply() -> None:
    with FakeMessagesAPI() as api:
        started = time.monotonic()
        raw = _post(api, _request({"role": "user", "content": "[[api: slow=0.5]] a b c"}))[2]
        assert time.monotonic() - started >= 0.4
        events = _events(raw)
        assert len([e for e, _ in events if e == "content_block_delta"]) > 3
        assert _text_of(events) == "reply #1 to: [[api: slow=0.5]] a b c"


def test_env_points_the_cli_at_the_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "real-secret")
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("CLAUDE_CODE_SESSION_ID", "outer")
    monkeypatch.setenv("CLAUDE_SUPERVISOR_TEST_TOKEN", "audit")
    with FakeMessagesAPI() as api:
        env = api.env(tmp_path, EXTRA="x")
    assert env["ANTHROPIC_BASE_URL"] == api.url
    assert env["ANTHROPIC_API_KEY"] == "sk-test"
    assert env["HOME"] == str(tmp_path)
    assert env["PATH"] == os.environ["PATH"]
    assert env["EXTRA"] == "x"
    assert "ANTHROPIC_AUTH_TOKEN" not in env and "CLAUDECODE" not in env
    assert "CLAUDE_CODE_SESSION_ID" not in env
    assert env["CLAUDE_SUPERVISOR_TEST_TOKEN"] == "audit"  # the audit must see the CLI
