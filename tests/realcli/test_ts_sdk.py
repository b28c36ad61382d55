"""The official TypeScript SDK (`@anthropic-ai/claude-agent-sdk`) as a client of the wrapper.

A small node program (ts_sdk_driver.mjs) runs the SDK with the wrapper as
`pathToClaudeCodeExecutable`, exactly as a user's program would, and reports every SDK
message and every throw as a JSON line. The SDK is the pinned one that scripts/test
installs next to the pinned CLI. Issue 8: interrupting a stopped CLI made this SDK throw
(`Cannot read properties of undefined (reading 'map')`) on the supervisor's result, and
the session was dead.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from conftest import cli_of
from wrapper_harness import Wrapper

from supervisor.testing.claude_install import ensure_agent_sdk

from .conftest import (
    WRAPPER,
    long_tool,
    seconds_until_gone,
    stubborn_tool,
    wait_for_file,
    wrapper_env,
)

pytestmark = pytest.mark.real_cli

DRIVER = Path(__file__).with_name("ts_sdk_driver.mjs")
Event = dict[str, Any]


@pytest.fixture(scope="session")
def sdk_module() -> Path:
    return ensure_agent_sdk() / "node_modules" / "@anthropic-ai" / "claude-agent-sdk" / "sdk.mjs"


class Driver:
    """The node program running the SDK: send it commands, await what it reports."""

    def __init__(self, process: Wrapper) -> None:
        self.node = process
        self._taken: dict[str, int] = {}

    @classmethod
    async def start(
        cls, sdk_module: Path, executable: Path, env: dict[str, str], workdir: Path
    ) -> Driver:
        node = shutil.which("node")
        assert node is not None, "node is missing: the TypeScript SDK tests need Node.js 18+"
        env = {
            **env,
            "SDK_MODULE": str(sdk_module),
            "CLAUDE_EXECUTABLE": str(executable),
            "SDK_CWD": str(workdir),
        }
        return cls(await Wrapper.start([], env=env, executable=(node, str(DRIVER)), cwd=workdir))

    async def do(self, command: str, **fields: Any) -> None:
        await self.node.send({"do": command, **fields})

    async def next(self, kind: str, timeout: float = 60) -> Event:
        """The next event of `kind` (an event name, or `result` for a result message) not
        taken yet, whenever it arrived: a result may come before the interrupt's answer."""

        def matches(event: Event) -> bool:
            if kind == "result":
                return bool(event["event"] == "message" and event["message"]["type"] == "result")
            return bool(event["event"] == kind)

        wanted = self._taken.get(kind, 0) + 1
        with trio.move_on_after(timeout):
            while True:
                assert self.errors() == [], f"the SDK threw: {self.errors()[0]['stack']}"
                found = [e for e in self.node.frames if matches(e)]
                if len(found) >= wanted:
                    self._taken[kind] = wanted
                    return found[wanted - 1]
                if await self.node.next_frame() is None:
                    break
        seen = [e["event"] + "/" + str(e.get("message", {}).get("type")) for e in self.node.frames]
        raise AssertionError(f"no {kind} #{wanted} from the SDK; it reported: {seen}")

    async def result(self, timeout: float = 60) -> dict[str, Any]:
        message: dict[str, Any] = (await self.next("result", timeout))["message"]
        return message

    def errors(self) -> list[Event]:
        return [e for e in self.node.frames if e["event"] == "error"]

    async def finish(self) -> None:
        """Ends the prompt stream (the program has nothing more to say); the SDK then
        ends the CLI and the program exits."""
        await self.node.close_stdin()
        await self.next("exit")
        assert await self.node.wait(30) == 0

    async def kill(self) -> None:
        await self.node.kill()


def the_cli_under(driver: Driver) -> psutil.Process:
    """The real CLI the SDK started through the wrapper (node → wrapper → helper → CLI)."""
    node = psutil.Process(driver.node.process.pid)
    [wrapper] = [p for p in node.children() if str(WRAPPER) in " ".join(p.cmdline())]
    [helper] = wrapper.children()
    return cli_of(helper)


@pytest.fixture
async def wrapped(
    sdk_module: Path, claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> Any:
    driver = await Driver.start(sdk_module, WRAPPER, wrapper_env(claude_cli, cli_env), workdir)
    try:
        yield driver
    finally:
        await driver.kill()


async def test_a_query_completes(wrapped: Driver) -> None:
    await wrapped.do("query", text="hello")
    result = await wrapped.result()
    assert result["subtype"] == "success" and result["result"] == "reply #1 to: hello"
    await wrapped.finish()


async def test_interrupt_during_a_tool_call_ends_the_turn(wrapped: Driver, workdir: Path) -> None:
    await wrapped.do("query", text=long_tool(workdir / "started"))
    await wait_for_file(workdir / "started")
    await wrapped.do("interrupt")
    await wrapped.next("interrupted", 30)
    result = await wrapped.result()
    assert result["is_error"] and result["terminal_reason"] == "aborted_tools"
    await wrapped.do("query", text="and now?")
    assert (await wrapped.result())["result"] == "reply #2 to: and now?"
    # The cancel's report comes after the cancelled turn's result: the first message the
    # program reads after it.
    messages = [e["message"] for e in wrapped.node.frames if e["event"] == "message"]
    after = messages[messages.index(result) + 1]
    assert (after["type"], after["subtype"]) == ("system", "supervisor_cancel")
    assert after["report"]["path"] == "interrupt"
    await wrapped.finish()


async def test_interrupt_of_a_stopped_cli_does_not_kill_the_session(
    wrapped: Driver, workdir: Path
) -> None:
    await wrapped.do("query", text="first")
    first = await wrapped.result()
    await wrapped.do("query", text=long_tool(workdir / "started"))
    await wait_for_file(workdir / "started")
    the_cli_under(wrapped).send_signal(signal.SIGSTOP)
    await wrapped.do("interrupt")
    await wrapped.next("interrupted", 30)
    # Usually the supervisor's own, for the killed CLI; the kill rung's SIGCONT may let the
    # CLI write its own first. Either way the SDK must take it (the synthesized frame's
    # shape is checked against the SDK's types in test_frame_shapes_live.py).
    result = await wrapped.result()
    assert result["is_error"]
    assert isinstance(result["errors"], list) and result["errors"]
    await wrapped.do("query", text="still there?")
    after = await wrapped.result()
    assert not after["is_error"] and after["session_id"] == first["session_id"]
    assert wrapped.errors() == []
    await wrapped.finish()


async def close_mid_tool(driver: Driver, workdir: Path) -> tuple[float, bool]:
    """close() while a tool that ignores SIGTERM runs: seconds until every process of
    the session is gone, and whether the node program exited on its own."""
    marker = workdir / "stubborn"
    await driver.do("query", text=stubborn_tool(marker))
    await wait_for_file(marker)
    await driver.do("close")
    await driver.next("closing", 10)
    gone = await seconds_until_gone(keep=[driver.node.process.pid], timeout=60)
    with trio.move_on_after(30):
        await driver.node.process.wait()
    return gone, driver.node.process.returncode is not None


async def test_close_during_a_stubborn_tool_leaves_nothing_bare_and_wrapped(
    sdk_module: Path,
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    timings = {}
    for name, executable, env in (
        ("bare CLI", claude_cli, cli_env),
        ("wrapped", WRAPPER, wrapper_env(claude_cli, cli_env)),
    ):
        driver = await Driver.start(sdk_module, executable, env, workdir)
        try:
            timings[name], exited = await close_mid_tool(driver, workdir)
            assert exited and driver.errors() == []
        finally:
            await driver.kill()
        (workdir / "stubborn").unlink()
    with capsys.disabled():  # shown in every run's output, not only on failure
        print(
            "\nTypeScript SDK close() with a tool ignoring SIGTERM, until the whole tree is gone: "
            + json.dumps({k: round(v, 2) for k, v in timings.items()})
        )
    # Both SDKs send SIGTERM after ending stdin, then SIGKILL later; generous bounds only.
    assert timings["wrapped"] < 30
