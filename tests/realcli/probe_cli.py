"""Probe the real Claude Code CLI against the fake Messages API and print what it does.

Not a test (pytest does not collect it): a reproducible record of how the findings in
``docs/compatibility.md`` ("Observed behaviour of Claude Code <version>") were
measured, so they can be re-checked when the pinned CLI version moves. Run::

    .venv/bin/python tests/realcli/probe_cli.py                 # all probes
    .venv/bin/python tests/realcli/probe_cli.py c e f --frames  # some, with every frame
    CLAUDE_SUPERVISOR_TEST_CLI_VERSION=2.1.400 .venv/bin/python tests/realcli/probe_cli.py

Each probe starts the CLI (``-p --input-format stream-json --output-format stream-json
--verbose --allowedTools Bash``) with a fresh HOME and cwd, drives it through stdin,
timestamps every stdout frame, and prints a short verdict. Timings are wall-clock on
the machine at hand: treat them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI, last_user_message, typed_user_texts

Frame = dict[str, Any]

LONG_TOOL = 'python3 -c "import time; time.sleep(300)"'
"""A tool call that keeps running (plain ``sleep N`` is refused by the CLI)."""

SHOW_FRAMES = False


def user_frame(text: str | list[dict[str, Any]]) -> Frame:
    """A stream-json user message, as the supervisor would write it."""
    return {"type": "user", "message": {"role": "user", "content": text}}


def control(subtype: str, request_id: str, **fields: Any) -> Frame:
    """A stream-json control request."""
    return {
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": subtype, **fields},
    }


def kind(frame: Frame) -> str:
    """A short label for a frame: ``type`` plus ``subtype`` where there is one."""
    label = str(frame.get("type"))
    sub = frame.get("subtype")
    if sub is None and isinstance(frame.get("response"), dict):
        sub = frame["response"].get("subtype")
    return f"{label}/{sub}" if sub else label


class CLI:
    """One CLI process with a reader thread that timestamps and keeps every frame."""

    def __init__(
        self,
        exe: Path,
        api: FakeMessagesAPI,
        *,
        home: Path | None = None,
        cwd: Path | None = None,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="probe-home-"))
        self.cwd = cwd or Path(tempfile.mkdtemp(prefix="probe-cwd-"))
        # Only folders made here are removed by kill(); a caller's are the caller's.
        self._own_dirs = [d for d, given in ((self.home, home), (self.cwd, cwd)) if given is None]
        args = [
            str(exe),
            *STREAM_JSON_ARGS,
            *(extra_args or []),
        ]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=api.env(self.home, **(extra_env or {})),
        )
        self.frames: list[tuple[float, Frame]] = []
        self.stderr: list[str] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def now(self) -> float:
        """Seconds since spawn."""
        return time.monotonic() - self.t0

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                frame = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            with self._cond:
                self.frames.append((self.now(), frame))
                self._cond.notify_all()
            if SHOW_FRAMES:
                print(f"    {self.now():7.3f} < {line[:400]}")
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def send(self, frame: Frame) -> float:
        """Write one frame; returns the time it was sent."""
        assert self.proc.stdin is not None
        sent = self.now()
        if SHOW_FRAMES:
            print(f"    {sent:7.3f} > {json.dumps(frame)}")
        self.proc.stdin.write((json.dumps(frame) + "\n").encode())
        self.proc.stdin.flush()
        return sent

    def close_stdin(self) -> float:
        """Close stdin (EOF); returns when."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        return self.now()

    def wait_frame(
        self, pred: Callable[[Frame], bool], timeout: float = 20.0, *, start: int = 0
    ) -> tuple[float, Frame] | None:
        """The first frame at index >= *start* matching *pred*, waiting up to *timeout*."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, f in self.frames[start:]:
                    if pred(f):
                        return t, f
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[0].is_alive()):
                    return None
                self._cond.wait(min(left, 0.1))

    def wait_result(self, start: int = 0, timeout: float = 20.0) -> tuple[float, Frame] | None:
        """The next ``result`` frame at index >= *start*."""
        return self.wait_frame(lambda f: f.get("type") == "result", timeout, start=start)

    def mark(self) -> int:
        """Current frame count, to wait only for frames that come later."""
        with self._cond:
            return len(self.frames)

    def since(self, start: int) -> list[tuple[float, Frame]]:
        """Frames received after *start*."""
        with self._cond:
            return list(self.frames[start:])

    def wait_exit(self, timeout: float) -> int | None:
        """Exit code, or None if still running after *timeout*."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def descendants(self) -> list[psutil.Process]:
        """The CLI's live descendants (tool shells and their children)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """Kill the CLI and every descendant (listed first, before they are orphaned)."""
        procs = self.descendants()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc.wait(10)
        for t in self._threads:
            t.join(5)
        for folder in self._own_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def find_python_tool(cli: CLI, timeout: float = 15.0) -> psutil.Process | None:
    """The tool's ``python3`` process among the CLI's descendants, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in cli.descendants():
            with contextlib.suppress(psutil.Error):
                cmd = p.cmdline()
                if cmd and "python3" in os.path.basename(cmd[0]) and "time.sleep" in " ".join(cmd):
                    return p
        time.sleep(0.05)
    return None


def _status(proc: psutil.Process | None) -> str:
    """A process's state for reports: ``gone``, ``zombie``, ``running``, ..."""
    if proc is None:
        return "not found"
    try:
        return f"pid {proc.pid} {proc.status()} (ppid {proc.ppid()})"
    except psutil.NoSuchProcess:
        return f"pid {proc.pid} gone"


def summary(frames: list[tuple[float, Frame]], t_ref: float) -> list[str]:
    """One line per frame: time after *t_ref* and the frame's kind (plus useful bits)."""
    out = []
    for t, f in frames:
        extra = ""
        if f.get("type") == "result":
            extra = f" subtype={f.get('subtype')} is_error={f.get('is_error')}"
            extra += f" terminal_reason={f.get('terminal_reason')} result={f.get('result')!r}"
        elif f.get("type") in ("assistant", "user"):
            content = f.get("message", {}).get("content")
            if isinstance(content, list):
                extra = " " + ",".join(str(b.get("type")) for b in content)
                texts = [b.get("text") for b in content if b.get("type") == "text"]
                if texts:
                    extra += f" {texts!r}"[:160]
            else:
                extra = f" {content!r}"[:160]
        elif f.get("type") == "control_response":
            extra = " " + json.dumps(f.get("response"))[:200]
        out.append(f"+{(t - t_ref) * 1000:7.0f} ms  {kind(f)}{extra}")
    return out


def show(title: str, lines: list[str]) -> None:
    """Print a block of results."""
    print(f"  {title}")
    for line in lines:
        print(f"    {line}")


Probe = Callable[[Path, FakeMessagesAPI], None]
PROBES: dict[str, tuple[str, Probe]] = {}


def probe(key: str, title: str) -> Callable[[Probe], Probe]:
    """Register a probe under a letter."""

    def deco(fn: Probe) -> Probe:
        PROBES[key] = (title, fn)
        return fn

    return deco


@contextlib.contextmanager
def running(exe: Path, api: FakeMessagesAPI, **kw: Any) -> Iterator[CLI]:
    """A CLI that is killed (with its tree) at the end, whatever happens."""
    cli = CLI(exe, api, **kw)
    try:
        yield cli
    finally:
        cli.kill()


def turn(cli: CLI, text: str, timeout: float = 30.0) -> tuple[float, Frame | None, int]:
    """Send a user frame, wait for its result: (sent time, result frame, start mark)."""
    start = cli.mark()
    sent = cli.send(user_frame(text))
    got = cli.wait_result(start, timeout)
    return sent, (got[1] if got else None), start


@probe("a", "control_request with an unknown subtype")
def probe_unknown_control(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        for phase in ("before any turn", "idle after a turn"):
            if phase.startswith("idle"):
                turn(cli, "first")
            start = cli.mark()
            sent = cli.send(control("supervisor_ping", f"ping-{phase[:4]}"))
            got = cli.wait_frame(lambda f: f.get("type") == "control_response", 5, start=start)
            if got is None:
                show(phase, [f"no control_response in 5 s; alive={cli.proc.poll() is None}"])
            else:
                show(phase, [f"after {(got[0] - sent) * 1000:.0f} ms: {json.dumps(got[1])}"])
        _, res, _ = turn(cli, "after ping")
        result = res and res.get("result")
        show("next turn", [f"alive={cli.proc.poll() is None} result={result!r}"])
        start = cli.mark()
        cli.send(user_frame(f"[[api: bash={LONG_TOOL}]]"))
        find_python_tool(cli)
        sent = cli.send(control("supervisor_ping", "ping-busy"))
        got = cli.wait_frame(lambda f: f.get("type") == "control_response", 5, start=start)
        lines = [f"after {(got[0] - sent) * 1000:.0f} ms: {json.dumps(got[1])}" if got else "none"]
        lines.append(f"turn still running: {cli.wait_result(start, 1.0) is None}")
        show("during a tool call", lines)


@probe("b", "interrupt while idle")
def probe_idle_interrupt(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        for phase in ("before any turn", "idle after a turn"):
            if phase.startswith("idle"):
                turn(cli, "first")
            start = cli.mark()
            sent = cli.send(control("interrupt", f"int-{phase[:4]}"))
            got = cli.wait_frame(lambda f: f.get("type") == "control_response", 5, start=start)
            time.sleep(0.5)
            lines = [f"answer after {(got[0] - sent) * 1000:.0f} ms" if got else "no answer"]
            lines += summary(cli.since(start), sent)
            show(phase, lines)
            sent, _, start2 = turn(cli, f"turn after idle interrupt ({phase})")
            show("  next turn", summary(cli.since(start2), sent))
        start = cli.mark()
        sent = cli.send(control("interrupt", "int-race"))
        cli.send(user_frame("sent right after an idle interrupt"))
        cli.wait_result(start, 15)
        show("interrupt and a user frame back to back", summary(cli.since(start), sent))


@probe("c", "system/init once per process or per turn")
def probe_init(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        ids = []
        for i in range(3):
            _, res, _ = turn(cli, f"turn {i}")
            ids.append(res and res.get("session_id"))
        inits = [(t, f) for t, f in cli.frames if kind(f) == "system/init"]
        show(
            "3 turns",
            [
                f"system/init frames: {len(inits)} at {[round(t, 3) for t, _ in inits]} s",
                f"init session_ids: {sorted({str(f.get('session_id')) for _, f in inits})}",
                f"result session_ids: {ids}",
                f"init keys: {sorted(inits[0][1].keys()) if inits else None}",
                f"capabilities: {inits[0][1].get('capabilities') if inits else None}",
            ],
        )


@probe("d", "frames of a text turn and a Bash tool turn")
def probe_frames(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        sent, res, start = turn(cli, "hello")
        show("text turn", summary(cli.since(start), sent))
        sent, res, start = turn(cli, "[[api: bash=echo hi there]]")
        show("bash turn", summary(cli.since(start), sent))
        frames = cli.since(start)
        for _, f in frames:
            if f.get("type") == "user":
                show("tool_result frame", [json.dumps(f)[:1200]])
        if res:
            show("result frame", [json.dumps(res)[:4000]])
            show("result keys", [", ".join(sorted(res.keys()))])


@probe("e", "--resume with an unknown id and a known id")
def probe_resume(exe: Path, api: FakeMessagesAPI) -> None:
    for bogus in (str(uuid.uuid4()), "not-a-uuid"):
        with running(exe, api, extra_args=["--resume", bogus]) as cli:
            code = cli.wait_exit(5)
            lines = [f"no stdin written: exit={code} at {cli.now():.3f} s after spawn"]
            if code is None:
                sent = cli.send(user_frame("hello"))
                code = cli.wait_exit(15)
                lines.append(f"after a user frame: exit={code} at +{cli.now() - sent:.3f} s")
            for _, f in cli.frames:
                brief = {k: f.get(k) for k in ("type", "subtype", "is_error", "session_id")}
                lines.append(f"stdout frame: {json.dumps(brief)} errors={f.get('errors')}")
            lines += [f"stdout non-JSON: {line}" for line in cli.bad_lines]
            lines += [f"stderr: {line}" for line in cli.stderr]
            show(f"--resume {bogus}", lines)

    home = Path(tempfile.mkdtemp(prefix="probe-home-"))
    cwd = Path(tempfile.mkdtemp(prefix="probe-cwd-"))
    first = CLI(exe, api, home=home, cwd=cwd)
    try:
        _, res1, _ = turn(first, "one")
        _, res2, _ = turn(first, "two")
        first.close_stdin()
        first.wait_exit(15)
    finally:
        first.kill()
    sid = str(res1 and res1.get("session_id"))
    n_before = api.request_count
    second = CLI(exe, api, home=home, cwd=cwd, extra_args=["--resume", sid])
    try:
        start = second.mark()
        t_init = second.send(control("initialize", "i1", hooks=None))
        got = second.wait_frame(lambda f: f.get("type") == "control_response", 10, start=start)
        sent, res3, start = turn(second, "three")
        inits = [f for _, f in second.since(start) if kind(f) == "system/init"]
        req = api.requests[n_before] if api.request_count > n_before else {}
        first_frame = second.since(start)[0][0] - sent if second.since(start) else None
        show(
            f"--resume {sid} (known)",
            [
                f"initialize answered {got and round((got[0] - t_init) * 1000)} ms after sending",
                f"session_id before: {sid} / {res2 and res2.get('session_id')}",
                f"after resume: init session_id={inits[0].get('session_id') if inits else None}",
                f"after resume: result session_id={res3 and res3.get('session_id')}",
                f"result={res3 and res3.get('result')!r} (N counts typed user turns)",
                f"typed user texts in the API request after resume: {typed_user_texts(req)}",
                f"first frame {first_frame and round(first_frame * 1000)} ms after the user frame",
            ],
        )
        second.close_stdin()
        second.wait_exit(15)
    finally:
        second.kill()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)


@probe("f", "environment and process group of the Bash tool's process")
def probe_env(exe: Path, api: FakeMessagesAPI) -> None:
    token = f"abc-{uuid.uuid4()}"
    with running(exe, api, extra_env={"FAKE_TEST_TOKEN": token}) as cli:
        cli.send(user_frame(f"[[api: bash={LONG_TOOL}]]"))
        tool = find_python_tool(cli)
        if tool is None:
            show("tool", ["python3 tool process not found"])
            return
        env = read_environ(tool.pid)
        keys = ["FAKE_TEST_TOKEN", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "HOME"]
        keys += sorted(k for k in env if k.startswith("CLAUDE"))
        lines = [f"{k}={env.get(k)!r}" for k in keys]
        lines.append(f"CLI pid={cli.proc.pid} pgid={os.getpgid(cli.proc.pid)} ")
        lines[-1] += f"sid={os.getsid(cli.proc.pid)}"
        for p in cli.descendants():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                lines.append(
                    f"descendant pid={p.pid} ppid={p.ppid()} pgid={os.getpgid(p.pid)} "
                    f"sid={os.getsid(p.pid)} cmd={' '.join(p.cmdline())[:70]!r}"
                )
        show("tool process (python3 under the tool's bash)", lines)
        cli.send(control("interrupt", "int-f"))
        cli.wait_result(0, 10)

        detached = 'setsid -f python3 -c "import time; time.sleep(120)" >/dev/null 2>&1'
        _, res, _ = turn(cli, f"[[api: bash={detached}; echo started]]")
        time.sleep(0.5)
        lines = [f"turn result={res and res.get('result')!r}"]
        for pid in pids_with_env("FAKE_TEST_TOKEN", token):
            if pid == cli.proc.pid:
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                env = read_environ(pid)
                lines.append(
                    f"carries the token: pid={pid} ppid={proc.ppid()} "
                    f"cmd={' '.join(proc.cmdline())[:60]!r} CLAUDE_PID={env.get('CLAUDE_PID')} "
                    f"is descendant of CLI: {proc in cli.descendants()}"
                )
                proc.kill()
        show("setsid -f grandchild (found by scanning /proc/*/environ)", lines)


TRAP_TOOL = """\
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def note(signum, frame):
    log.write(f"{time.time():.3f} {signal.Signals(signum).name}\\n")
for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    signal.signal(s, note)
log.write(f"{time.time():.3f} start {os.getpid()}\\n")
while True:
    time.sleep(0.01)
"""
"""A tool that logs and ignores SIGHUP/SIGINT/SIGTERM, to see what the CLI sends."""


def _trap_run(cli: CLI, stop: Callable[[], object]) -> list[str]:
    """Start TRAP_TOOL as the turn's tool, call *stop*, report signals and time of death."""
    (cli.cwd / "trap.py").write_text(TRAP_TOOL)
    log = cli.cwd / "trap.log"
    cli.send(user_frame(f"[[api: bash=python3 trap.py {log}]]"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and " start " not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.02)
    time.sleep(0.2)
    pid = int(log.read_text().split(" start ")[1].split()[0])
    proc = psutil.Process(pid)
    t0 = time.time()
    stop()
    died = None
    while time.time() - t0 < 15:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                died = time.time()
                break
        except psutil.NoSuchProcess:
            died = time.time()
            break
        time.sleep(0.005)
    lines = []
    for line in log.read_text().splitlines():
        stamp, what = line.split(" ", 1)
        if not what.startswith("start"):
            lines.append(f"tool got {what} at +{(float(stamp) - t0) * 1000:.0f} ms")
    lines.append(f"tool dead at +{(died - t0) * 1000:.0f} ms" if died else "tool still alive")
    return lines


@probe("g", "SIGINT and in-band interrupt during a tool call or a model stream")
def probe_interrupts(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame(f"[[api: bash={LONG_TOOL}]]"))
        tool = find_python_tool(cli)
        sent = cli.send(control("interrupt", "int1"))
        res = cli.wait_result(start, 10)
        time.sleep(0.5)
        lines = summary([(t, f) for t, f in cli.since(start) if t >= sent], sent)
        lines.append(f"tool process 0.5 s after result: {_status(tool)}")
        lines.append(f"CLI alive: {cli.proc.poll() is None}")
        if res:
            lines.append(f"result keys: {', '.join(sorted(res[1].keys()))}")
            lines.append(f"result errors: {res[1].get('errors')}")
        show("in-band interrupt during a tool call", lines)
        _, res2, _ = turn(cli, "after interrupt")
        show("  next turn", [f"result={res2 and res2.get('result')!r}"])
        show("  its user message to the API", [json.dumps(last_user_message(api.last_request()))])

    with running(exe, api) as cli:
        show(
            "in-band interrupt, tool ignores SIGTERM",
            _trap_run(cli, lambda: cli.send(control("interrupt", "int-trap"))),
        )

    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame("[[api: stall]]"))
        api.wait_for_stall(15)
        time.sleep(0.3)
        sent = cli.send(control("interrupt", "int2"))
        cli.wait_result(start, 10)
        show(
            "in-band interrupt during a stalled model stream",
            summary([(t, f) for t, f in cli.since(start) if t >= sent], sent),
        )

    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame(f"[[api: bash={LONG_TOOL}]]"))
        tool = find_python_tool(cli)
        time.sleep(0.2)
        sent = cli.now()
        cli.proc.send_signal(signal.SIGINT)
        code = cli.wait_exit(15)
        exited = cli.now()
        lines = summary([(t, f) for t, f in cli.since(start) if t >= sent], sent)
        lines.append(f"exit code {code} after {(exited - sent) * 1000:.0f} ms")
        lines.append(f"tool process after exit: {_status(tool)}")
        lines += [f"stderr: {line}" for line in cli.stderr[-5:]]
        show("SIGINT during a tool call", lines)

    with running(exe, api) as cli:
        lines = _trap_run(cli, lambda: cli.proc.send_signal(signal.SIGINT))
        code = cli.wait_exit(15)
        lines.append(f"CLI exit code {code}")
        show("SIGINT, tool ignores SIGTERM", lines)

    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame("[[api: stall]]"))
        api.wait_for_stall(15)
        sent = cli.now()
        cli.proc.send_signal(signal.SIGINT)
        code = cli.wait_exit(15)
        lines = summary([(t, f) for t, f in cli.since(start) if t >= sent], sent)
        lines.append(f"exit code {code} after {(cli.now() - sent) * 1000:.0f} ms")
        show("SIGINT during a stalled model stream", lines)


@probe("h", "stdin EOF")
def probe_eof(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        turn(cli, "one")
        sent = cli.close_stdin()
        code = cli.wait_exit(15)
        show("idle after one turn", [f"exit code {code} after {(cli.now() - sent) * 1000:.0f} ms"])
    with running(exe, api) as cli:
        time.sleep(1.0)
        sent = cli.close_stdin()
        code = cli.wait_exit(15)
        lines = [f"exit code {code} after {(cli.now() - sent) * 1000:.0f} ms"]
        lines += [f"frame {kind(f)}" for _, f in cli.frames]
        show("before any turn", lines)
    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame("[[api: slow=2]]"))
        sent = cli.close_stdin()
        code = cli.wait_exit(15)
        lines = summary(cli.since(start), sent)
        lines.append(f"exit code {code} after {(cli.now() - sent) * 1000:.0f} ms")
        show("EOF right after a user frame (a 2 s slow turn)", lines)


@probe("i", "user frame with content as a list of blocks")
def probe_blocks(exe: Path, api: FakeMessagesAPI) -> None:
    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame([{"type": "text", "text": "hi"}]))
        res = cli.wait_result(start, 15)
        lines = [f"result={res and res[1].get('result')!r}"]
        cli.send(user_frame([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]))
        res = cli.wait_result(cli.mark(), 15)
        lines.append(f"two text blocks: result={res and res[1].get('result')!r}")
        show("content [{type: text, text: hi}]", lines)


@probe("j", "API errors: which fail the turn promptly, which are retried")
def probe_api_errors(exe: Path, api: FakeMessagesAPI) -> None:
    for directive in ("[[api: error]]", "[[api: error=400]]", "[[api: error=529]]"):
        with running(exe, api) as cli:
            n0 = api.request_count
            sent, res, start = turn(cli, directive)
            lines = summary(cli.since(start), sent)[-1:]
            lines.append(f"requests for this turn: {api.request_count - n0}")
            lines.append(f"api_error_status={res and res.get('api_error_status')}")
            show(directive, lines)
    with running(exe, api) as cli:
        start = cli.mark()
        cli.send(user_frame("[[api: error=500:retry]]"))
        time.sleep(5)
        retries = [f for _, f in cli.since(start) if kind(f) == "system/api_retry"]
        lines = [f"{len(retries)} system/api_retry frames in 5 s"]
        lines += [json.dumps(retries[0])[:600]] if retries else []
        sent = cli.send(control("interrupt", "int-retry"))
        cli.wait_result(start, 10)
        lines += summary([(t, f) for t, f in cli.since(start) if t >= sent], sent)
        show("500 without x-should-retry, then an in-band interrupt", lines)


def read_environ(pid: int) -> dict[str, str]:
    """The environment of a process, from ``/proc/<pid>/environ`` (Linux)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


def pids_with_env(key: str, value: str) -> list[int]:
    """Every process whose environment has ``key=value`` (readable ones only)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if read_environ(proc.pid).get(key) == value:
                found.append(proc.pid)
    return found


def main() -> int:
    """Run the chosen probes (all by default) against one fake API."""
    global SHOW_FRAMES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "probes", nargs="*", help=f"probe letters (default: all of {''.join(PROBES)})"
    )
    parser.add_argument("--frames", action="store_true", help="print every frame as it comes")
    parser.add_argument("--version", default=None, help="CLI version (default: pinned)")
    args = parser.parse_args()
    SHOW_FRAMES = args.frames
    exe = ensure_claude(args.version)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    print(f"claude: {exe} ({version.stdout.strip()})")
    with FakeMessagesAPI() as api:
        print(f"fake api: {api.url}")
        for key in args.probes or list(PROBES):
            title, fn = PROBES[key]
            print(f"\n[{key}] {title}")
            t0 = time.monotonic()
            fn(exe, api)
            print(f"  ({time.monotonic() - t0:.1f} s)")
        others = sorted({(e.method, e.path.split("?")[0]) for e in api.log})
        print(f"\nendpoints the CLI called: {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
