"""Drives the `claude-supervisor` executable as a subprocess over pipes, as a parent would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

STREAM_ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
FAST_FLAGS = ["--interrupt-timeout", "0.5", "--sigint-timeout", "2", "--kill-timeout", "0.5"]
#: For a cancel meant to end in-band (`path == "interrupt"`): a healthy CLI answers in
#: milliseconds, but a loaded 2-core machine can miss a 0.5 s deadline, so these tests get
#: one it cannot miss, and the unanswered-interrupt shortcut off (ack deadline >= it).
#: Tests that mean to climb keep FAST_FLAGS. Given after FAST_FLAGS, these win.
IN_BAND_FLAGS = ["--interrupt-timeout", "30", "--interrupt-ack-timeout", "30"]

Frame = dict[str, Any]


def user(text: str | list[Any]) -> Frame:
    return {"type": "user", "message": {"role": "user", "content": text}}


class Wrapper:
    """One running wrapper: write frames, read frames, signal it, wait for its exit."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.frames: list[Frame] = []
        self._buffer = b""
        self.raw_lines: list[bytes] = []

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        executable: Sequence[str] = (sys.executable, "-m", "supervisor"),
        cwd: Path | None = None,
    ) -> Wrapper:
        process = await trio.lowlevel.open_process(
            [*executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        return cls(process)

    async def send(self, *frames: Frame | bytes) -> None:
        assert self.process.stdin is not None
        for frame in frames:
            data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
            await self.process.stdin.send_all(data)

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.process.send_signal(signum)

    async def next_frame(self) -> Frame | None:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        self.raw_lines.append(line)
        frame: Frame = json.loads(line)
        self.frames.append(frame)
        return frame

    async def expect(self, predicate: Callable[[Frame], bool], timeout: float = 20) -> Frame:
        """Reads until a frame matches; fails with what was seen if none does in time."""
        with trio.move_on_after(timeout):
            while (frame := await self.next_frame()) is not None:
                if predicate(frame):
                    return frame
        raise AssertionError(f"no matching frame; saw: {[_brief(f) for f in self.frames]}")

    async def results(self, count: int, timeout: float = 20) -> list[Frame]:
        return [await self.expect(is_result, timeout) for _ in range(count)]

    async def read_to_end(self, timeout: float = 20) -> list[Frame]:
        with trio.fail_after(timeout):
            while await self.next_frame() is not None:
                pass
        return self.frames

    async def wait(self, timeout: float = 20) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def is_result(frame: Frame) -> bool:
    return frame.get("type") == "result"


def is_tool_use(frame: Frame) -> bool:
    """An assistant frame that calls a tool (the fake sends it once the tool runs)."""
    if frame.get("type") != "assistant":
        return False
    content = (frame.get("message") or {}).get("content") or []
    return any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content)


def is_system(subtype: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("type") == "system" and frame.get("subtype") == subtype


def _brief(frame: Frame) -> str:
    return f"{frame.get('type')}/{frame.get('subtype')}"


def supervisor_argv(fake_claude: Path, *extra: str) -> list[str]:
    return ["--claude", str(fake_claude), *FAST_FLAGS, *extra, "--", *STREAM_ARGS]


def environ(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
