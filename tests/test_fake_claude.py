"""Tests of the fake Claude Code CLI, driven directly over pipes.

Every test gives the fakes it starts a unique FAKE_TEST_TOKEN in their
environment; the ``fakes`` fixture kills whatever still carries that token when
the test ends (escapees, stubborn children, crashed fakes' tools...), so no test
leaves a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.testing import fake_claude

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0

Frame = dict[str, Any]


def processes_with_token(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries FAKE_TEST_TOKEN=token."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FAKE_TEST_TOKEN") == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_gone(pid: int) -> bool:
    """True once a process no longer runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Fake:
    """One fake CLI process with its stdout read line by line in the background."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.testing.fake_claude", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_chunks: list[bytes] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8").rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_chunks.append(raw)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode("utf-8", errors="replace")

    def send(self, frame: Frame) -> None:
        self.send_line(json.dumps(frame))

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def user(self, text: str) -> None:
        self.send({"type": "user", "message": {"role": "user", "content": text}})

    def control(self, subtype: str, request_id: str = "req-1") -> None:
        self.send(
            {"type": "control_request", "request_id": request_id, "request": {"subtype": subtype}}
        )

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def next_line(self, timeout: float = TIMEOUT) -> str | None:
        """The next stdout line, or None at EOF."""
        return self.lines.get(timeout=timeout)

    def next_frame(self, timeout: float = TIMEOUT) -> Frame:
        line = self.next_line(timeout)
        assert line is not None, f"stdout closed; stderr: {self.stderr()}"
        frame = json.loads(line)
        assert isinstance(frame, dict)
        return frame

    def frames_until(self, kind: str, timeout: float = TIMEOUT) -> list[Frame]:
        """Frames up to and including the first one of type ``kind``."""
        frames = []
        while True:
            frame = self.next_frame(timeout)
            frames.append(frame)
            if frame["type"] == kind:
                return frames

    def result(self) -> Frame:
        return self.frames_until("result")[-1]

    def wait_for_tool_use(self) -> str:
        """Read until the tool_use frame; return its id."""
        while True:
            frame = self.next_frame()
            if frame["type"] == "assistant":
                block = frame["message"]["content"][0]
                if block["type"] == "tool_use":
                    return str(block["id"])

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def assert_no_more_output(self) -> None:
        assert self.next_line() is None


FakeFactory = Callable[..., Fake]


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def fakes(token: str, config_dir: Path) -> Iterator[FakeFactory]:
    """Start fakes carrying this test's token; kill every process with it afterwards."""
    started: list[Fake] = []

    def start(*args: str, **env_extra: str) -> Fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_CLAUDE_")}
        env.update(CLAUDE_CONFIG_DIR=str(config_dir), FAKE_TEST_TOKEN=token, **env_extra)
        fake = Fake(args, env)
        started.append(fake)
        return fake

    yield start

    for fake in started:
        if fake.proc.poll() is None:
            fake.proc.kill()
        fake.proc.wait(timeout=TIMEOUT)
        for stream in (fake.proc.stdin, fake.proc.stdout, fake.proc.stderr):
            if stream is not None:
                stream.close()
    leftovers = processes_with_token(token)
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=TIMEOUT)
    assert wait_until(lambda: not processes_with_token(token))


def transcript_entries(config_dir: Path, session_id: str) -> list[Frame]:
    path = config_dir / "fake-sessions" / f"{session_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def tool_tree(fake: Fake) -> tuple[int, list[int]]:
    """The tool's pid and the pids of its process group (itself included)."""
    (tool,) = psutil.Process(fake.pid).children()
    group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == tool.pid]
    return tool.pid, group


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# --------------------------------------------------------------------------
# Normal operation


def test_normal_turn(fakes: FakeFactory, config_dir: Path) -> None:
    fake = fakes("-p", "--verbose", "--output-format", "stream-json", "--session-id", "s-1")
    fake.control("initialize", "init-1")
    response = fake.next_frame()
    assert response["type"] == "control_response"
    assert response["response"]["subtype"] == "success"
    assert response["response"]["request_id"] == "init-1"
    assert response["response"]["response"]["fake"] is True

    fake.user("hello")
    init, assistant, result = fake.frames_until("result")
    assert init["type"] == "system" and init["subtype"] == "init"
    assert init["session_id"] == "s-1"
    assert init["tools"] == ["Bash"]
    assert assistant["message"]["content"] == [{"type": "text", "text": "working on: hello"}]
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == "reply #1 to: hello"
    assert result["terminal_reason"] == "completed"
    assert result["fake_history"] == ["hello"]
    assert result["session_id"] == "s-1"

    fake.send(
        {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "b"}]}}
    )
    frames = fake.frames_until("result")
    assert [f["type"] for f in frames] == ["system", "assistant", "result"]  # init every turn
    assert frames[-1]["fake_history"] == ["hello", "b"]

    fake.close_stdin()
    assert fake.wait() == 0
    assert transcript_entries(config_dir, "s-1") == [
        {"user": "hello"},
        {"assistant": "reply #1 to: hello", "interrupted": False},
        {"user": "b"},
        {"assistant": "reply #2 to: b", "interrupted": False},
    ]


def test_tool_turn_completes(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("run [[fake: tool=0.2, deep=2]]")
    frames = fake.frames_until("result")
    tool_use = frames[2]["message"]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "Bash"
    tool_result = frames[3]["message"]["content"][0]
    assert tool_result == {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "done"}
    assert frames[-1]["subtype"] == "success"
    assert frames[-1]["duration_ms"] >= 200


def test_control_requests(fakes: FakeFactory) -> None:
    fake = fakes()
    for subtype in ("set_model", "set_permission_mode", "set_max_thinking_tokens", "interrupt"):
        fake.control(subtype, f"r-{subtype}")
        response = fake.next_frame()["response"]
        assert response["subtype"] == "success"
        assert response["request_id"] == f"r-{subtype}"
    fake.control("frobnicate", "r-x")
    response = fake.next_frame()["response"]
    assert response == {
        "subtype": "error",
        "request_id": "r-x",
        "error": "Unsupported control request subtype: frobnicate",
    }
    fake.close_stdin()
    assert fake.wait() == 0
    fake.assert_no_more_output()  # an idle interrupt does nothing else


def test_a_silent_turn_never_starts_but_control_requests_are_answered(
    fakes: FakeFactory,
) -> None:
    fake = fakes()
    fake.user("[[fake: silent]]")
    fake.control("interrupt", "r-i")
    answer = fake.next_frame()  # the very first frame: the turn wrote nothing
    assert answer["type"] == "control_response" and answer["response"]["request_id"] == "r-i"
    fake.proc.send_signal(signal.SIGINT)
    assert fake.wait() == 0
    fake.assert_no_more_output()


def test_frames_during_a_turn_merge_into_one_turn(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("first [[fake: stream=0.5]]")
    fake.user("b")
    fake.user("c")
    first = fake.result()
    assert first["fake_history"] == ["first [[fake: stream=0.5]]"]
    merged = fake.result()
    assert merged["fake_history"][-1] == "b\nc"
    assert merged["result"] == "reply #2 to: b\nc"
    fake.close_stdin()
    assert fake.wait() == 0
    fake.assert_no_more_output()


def test_eof_finishes_the_running_turn(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("slow [[fake: stream=0.3]]")
    fake.user("pending")
    fake.close_stdin()
    assert fake.result()["subtype"] == "success"
    assert fake.result()["fake_history"][-1] == "pending"
    assert fake.wait() == 0


def test_control_requests_are_answered_during_a_turn(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("busy [[fake: tool=30]]")
    fake.wait_for_tool_use()
    fake.control("set_model", "during")
    response = fake.next_frame(timeout=2)
    assert response["response"]["request_id"] == "during"


def test_bad_stdin_line_is_ignored(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.send_line("this is { not json")
    fake.user("still fine")
    assert fake.result()["subtype"] == "success"
    fake.close_stdin()
    assert fake.wait() == 0
    assert "not JSON" in fake.stderr()


def test_start_delay(fakes: FakeFactory) -> None:
    started = time.monotonic()
    fake = fakes("--fake-start-delay", "0.5")
    fake.user("hi")
    fake.result()
    assert time.monotonic() - started >= 0.5


# --------------------------------------------------------------------------
# Interrupts and signals


def test_interrupt_during_tool(fakes: FakeFactory, token: str, config_dir: Path) -> None:
    fake = fakes("--session-id", "s-int")
    fake.user("work [[fake: tool=60, escapee, stubborn, deep=3]]")
    tool_use_id = fake.wait_for_tool_use()
    tool_pid, group = tool_tree(fake)
    assert len(group) == 1 + 1 + 3  # the tool, the stubborn child, the chain
    escapees = [
        p.pid
        for p in processes_with_token(token)
        if p.pid not in group and p.pid != fake.pid and os.getsid(p.pid) != os.getsid(tool_pid)
    ]
    assert len(escapees) == 1

    fake.control("interrupt", "int-1")
    frames = fake.frames_until("result")
    assert frames[0]["type"] == "control_response"
    assert frames[0]["response"]["response"] == {"still_queued": []}
    notice = frames[-2]
    assert notice["type"] == "user"
    assert notice["message"]["content"][0]["text"] == "[Request interrupted by user for tool use]"
    result = frames[-1]
    assert result["subtype"] == "error_during_execution"
    assert result["is_error"] is True
    assert result["terminal_reason"] == "aborted_tools"
    assert not any(f["type"] == "user" and "tool_result" in str(f) for f in frames)
    assert tool_use_id == "toolu_1"

    assert wait_until(lambda: all(is_gone(pid) for pid in group))
    assert not is_gone(escapees[0]), "the setsid escapee must survive the interrupt"

    fake.user("next")
    result = fake.result()
    assert result["subtype"] == "success"
    assert result["fake_history"] == ["work [[fake: tool=60, escapee, stubborn, deep=3]]", "next"]
    assert transcript_entries(config_dir, "s-int")[1]["interrupted"] is True


def test_interrupt_during_stream(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("think [[fake: stream=30]]")
    assert fake.next_frame()["subtype"] == "init"
    fake.control("interrupt")
    frames = fake.frames_until("result")
    assert [f["type"] for f in frames] == ["control_response", "user", "result"]
    assert frames[1]["message"]["content"][0]["text"] == "[Request interrupted by user]"
    assert frames[-1]["terminal_reason"] == "aborted_streaming"
    fake.close_stdin()
    assert fake.wait() == 0


def test_ignore_interrupt(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: tool=0.5, ignore_interrupt]]")
    fake.wait_for_tool_use()
    fake.control("interrupt")
    assert fake.next_frame()["type"] == "control_response"
    assert fake.result()["subtype"] == "success"


def test_mute_interrupt(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: stream=0.5, mute_interrupt]]")
    fake.control("interrupt")
    frames = fake.frames_until("result")
    assert "control_response" not in [f["type"] for f in frames]
    assert frames[-1]["subtype"] == "success"


def test_env_directives_apply_to_every_turn(fakes: FakeFactory) -> None:
    fake = fakes(FAKE_CLAUDE_DIRECTIVES="stream=30, ignore_interrupt")
    fake.user("one [[fake: stream=0]]")
    assert fake.result()["subtype"] == "success"
    fake.user("two")
    fake.control("interrupt")
    frames = fake.frames_until("control_response", timeout=2)
    assert frames[-1]["response"]["subtype"] == "success"
    with pytest.raises(queue.Empty):
        fake.next_line(timeout=0.5)  # the turn goes on streaming


def test_sigint_during_tool(fakes: FakeFactory) -> None:
    fake = fakes("--fake-sigint-exit-delay", "0.3")
    fake.user("work [[fake: tool=60, stubborn]]")
    fake.wait_for_tool_use()
    _, group = tool_tree(fake)
    fake.proc.send_signal(signal.SIGINT)
    frames = fake.frames_until("result")
    assert frames[-2]["message"]["content"][0]["text"] == (
        "[Request interrupted by user for tool use]"
    )
    assert frames[-1]["subtype"] == "error_during_execution"
    assert frames[-1]["terminal_reason"] == "aborted_tools"
    result_at = time.monotonic()
    assert fake.wait() == 0
    assert time.monotonic() - result_at >= 0.2
    assert wait_until(lambda: all(is_gone(pid) for pid in group))


def test_sigint_during_stream(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("think [[fake: stream=30]]")
    assert fake.next_frame()["subtype"] == "init"
    fake.proc.send_signal(signal.SIGINT)
    assert fake.result()["terminal_reason"] == "aborted_streaming"
    assert fake.wait() == 0


def test_sigint_while_idle(fakes: FakeFactory) -> None:
    fake = fakes("--fake-sigint-exit-delay", "0")
    fake.control("initialize")
    fake.next_frame()
    sent = time.monotonic()
    fake.proc.send_signal(signal.SIGINT)
    assert fake.wait() == 0
    assert time.monotonic() - sent < 2
    fake.assert_no_more_output()


def test_ignore_sigint(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: stream=0.5, ignore_sigint]]")
    assert fake.next_frame()["subtype"] == "init"
    fake.proc.send_signal(signal.SIGINT)
    assert fake.result()["subtype"] == "success"
    assert fake.proc.poll() is None
    fake.close_stdin()
    assert fake.wait() == 0


def test_wedge(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: wedge]]")
    fake.frames_until("assistant")
    process = psutil.Process(fake.pid)
    assert wait_until(lambda: process.status() == psutil.STATUS_STOPPED)
    fake.control("initialize")
    fake.proc.send_signal(signal.SIGINT)
    with pytest.raises(queue.Empty):
        fake.next_line(timeout=0.5)
    fake.proc.kill()
    assert fake.wait() == -signal.SIGKILL


# --------------------------------------------------------------------------
# Resume


def test_resume_restores_history(fakes: FakeFactory, config_dir: Path) -> None:
    first = fakes("--session-id", "s-res")
    first.user("one")
    first.user("[[fake: stream=30]] two")
    first.result()  # "two" starts streaming right after this result
    first.control("interrupt")
    assert first.result()["terminal_reason"] == "aborted_streaming"
    first.close_stdin()
    assert first.wait() == 0

    second = fakes("-p", "--resume", "s-res", "--fake-resume-delay", "0.1")
    second.user("three")
    init = second.next_frame()
    assert init["session_id"] == "s-res"
    result = second.result()
    assert result["session_id"] == "s-res"
    assert result["fake_history"] == ["one", "[[fake: stream=30]] two", "three"]
    assert result["result"] == "reply #3 to: three"
    second.close_stdin()
    assert second.wait() == 0
    assert [e["user"] for e in transcript_entries(config_dir, "s-res") if "user" in e] == [
        "one",
        "[[fake: stream=30]] two",
        "three",
    ]


def test_resume_of_unknown_session_fails(fakes: FakeFactory) -> None:
    fake = fakes("--resume", "no-such-session")
    assert fake.wait() == 1  # without waiting for stdin to close
    assert "No conversation found with session ID: no-such-session" in fake.stderr()
    failure = fake.next_frame()  # the real CLI writes this result before it exits
    assert failure["type"] == "result" and failure["is_error"] is True
    assert failure["errors"] == ["No conversation found with session ID: no-such-session"]
    fake.assert_no_more_output()


def test_no_session_persistence_leaves_nothing_to_resume(
    fakes: FakeFactory, config_dir: Path
) -> None:
    first = fakes("--session-id", "s-np", "--no-session-persistence")
    first.user("one")
    assert first.result()["subtype"] == "success"
    first.close_stdin()
    assert first.wait() == 0
    assert not (config_dir / "fake-sessions" / "s-np.jsonl").exists()
    again = fakes("--resume", "s-np")
    assert again.wait() == 1
    assert "No conversation found with session ID: s-np" in again.stderr()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_fail_resume(fakes: FakeFactory, how: str) -> None:
    first = fakes("--session-id", "s-fail")
    first.user("one")
    first.result()
    first.close_stdin()
    assert first.wait() == 0

    if how == "flag":
        fake = fakes("--resume", "s-fail", "--fake-fail-resume")
    else:
        fake = fakes("--resume", "s-fail", FAKE_CLAUDE_FAIL_RESUME="1")
    assert fake.wait() == 1
    assert "No conversation found with session ID: s-fail" in fake.stderr()


# --------------------------------------------------------------------------
# Other misbehaviour


def test_crash(fakes: FakeFactory, token: str) -> None:
    fake = fakes()
    fake.user("[[fake: tool=60, crash]]")
    fake.wait_for_tool_use()
    assert fake.wait() == 3
    fake.assert_no_more_output()
    # The tool outlives the crash; the fixture reaps it by token.
    assert len(processes_with_token(token)) == 1


def test_garbage(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: garbage]]")
    fake.frames_until("assistant")
    assert fake.next_line() == "this is not json {"
    assert fake.next_frame()["type"] == "result"


def test_huge(fakes: FakeFactory) -> None:
    fake = fakes()
    fake.user("[[fake: huge=3000000]]")
    assistant = fake.frames_until("assistant")[-1]
    assert len(assistant["message"]["content"][0]["text"]) == 3_000_000
    assert fake.next_frame()["subtype"] == "success"


# --------------------------------------------------------------------------
# Parsing, in process


def test_parse_args_is_lenient() -> None:
    options = fake_claude.parse_args(
        [
            "-p",
            "--verbose",
            "--input-format",
            "stream-json",
            "--model",
            "opus",
            "--append-system-prompt",
            "--odd",
            "--unknown-flag",
            "value",
            "--bare-unknown",
            "--resume=abc",
            "--fake-sigint-exit-delay",
            "1.5",
            "prompt text",
        ],
        {"FAKE_CLAUDE_SIGINT_EXIT_DELAY": "9", "FAKE_CLAUDE_START_DELAY": "2"},
    )
    assert options.resume == "abc"
    assert options.sigint_exit_delay == 1.5  # the flag wins
    assert options.start_delay == 2.0
    assert options.fail_resume is False


def test_parse_args_rejects_bad_values() -> None:
    with pytest.raises(fake_claude.UsageError):
        fake_claude.parse_args(["--fake-start-delay", "soon"], {})
    with pytest.raises(fake_claude.UsageError):
        fake_claude.parse_args(["--session-id", "../escape"], {})


def test_directives() -> None:
    base = fake_claude.directives_from_env("ignore_interrupt, tool=5")
    d = fake_claude.directives_for_text(
        "x [[fake: tool=1.5, escapee, deep=2]] y [[fake: ignore_interrupt=0, huge=10]]", base
    )
    assert d.tool == 1.5
    assert d.escapee is True
    assert d.deep == 2
    assert d.ignore_interrupt is False
    assert d.huge == 10
    assert fake_claude.directives_for_text("plain", base) == base
