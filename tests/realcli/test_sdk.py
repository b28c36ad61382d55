"""The official Python SDK (`claude-agent-sdk`) as a client of the drop-in executable.

The SDK is pointed at the wrapper with `cli_path`, exactly as a user would: it then
passes the CLI's arguments only, so the wrapper takes its own settings from
`CLAUDE_SUPERVISOR_*` variables and finds the real CLI through
`CLAUDE_SUPERVISOR_CLAUDE`. The SDK runs on anyio, so it runs here under trio.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookMatcher,
    ResultMessage,
    SystemMessage,
    query,
)
from conftest import cli_of

from .conftest import (
    WRAPPER,
    long_tool,
    seconds_until_gone,
    stubborn_tool,
    wait_for_file,
    wrapper_env,
)

pytestmark = pytest.mark.real_cli


def options(claude_cli: Path, cli_env: dict[str, str], workdir: Path, **extra: Any) -> Any:
    return ClaudeAgentOptions(
        cli_path=str(WRAPPER),
        env=wrapper_env(claude_cli, cli_env),
        cwd=str(workdir),
        allowed_tools=["Bash"],
        **extra,
    )


async def stop_the_cli() -> None:
    """SIGSTOPs the CLI the SDK started through the wrapper (found by parentage:
    this test → the wrapper → its helper → the helper's first child), and waits until
    the kernel shows it stopped (SIGSTOP is delivered asynchronously): a wedged CLI, not
    one about to be, which the wrapper could find still running and then wait out the
    interrupt deadline these tests set far out."""
    [wrapper] = [p for p in psutil.Process().children() if str(WRAPPER) in " ".join(p.cmdline())]
    [helper] = wrapper.children()
    cli = cli_of(helper)
    cli.send_signal(signal.SIGSTOP)
    with trio.fail_after(10):
        while cli.status() != psutil.STATUS_STOPPED:
            await trio.sleep(0.005)


async def response(client: Any) -> list[Any]:
    with trio.fail_after(60):
        return [message async for message in client.receive_response()]


async def test_a_query_completes(claude_cli: Path, cli_env: dict[str, str], workdir: Path) -> None:
    with trio.fail_after(60):
        messages = [
            m async for m in query(prompt="hello", options=options(claude_cli, cli_env, workdir))
        ]
    result = messages[-1]
    assert isinstance(result, ResultMessage)
    assert result.result == "reply #1 to: hello" and not result.is_error


async def test_interrupt_during_a_tool_call_ends_the_turn(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with ClaudeSDKClient(options=options(claude_cli, cli_env, workdir)) as client:
        await client.query(long_tool(workdir / "started"))
        await wait_for_file(workdir / "started")
        with trio.fail_after(30):
            await client.interrupt()
        result = (await response(client))[-1]
        assert isinstance(result, ResultMessage) and result.is_error
        await client.query("and now?")
        messages = await response(client)
        # The cancel's report comes after the cancelled turn's result: first of the next read.
        notice = messages[0]
        assert isinstance(notice, SystemMessage) and notice.subtype == "supervisor_cancel"
        assert notice.data["report"]["path"] == "interrupt"
        after = messages[-1]
        assert isinstance(after, ResultMessage) and after.result == "reply #2 to: and now?"


async def test_interrupt_returns_and_a_result_arrives_with_a_wedged_cli(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    async with ClaudeSDKClient(options=options(claude_cli, cli_env, workdir)) as client:
        await client.query("first")
        first = (await response(client))[-1]
        await client.query(long_tool(workdir / "started"))
        await wait_for_file(workdir / "started")
        await stop_the_cli()
        with trio.fail_after(30):  # the SDK itself would wait 60 s, then give up
            await client.interrupt()
        result = (await response(client))[-1]
        assert isinstance(result, ResultMessage) and result.is_error
        await client.query("still there?")
        after = (await response(client))[-1]
        assert isinstance(after, ResultMessage) and not after.is_error
        assert after.session_id == first.session_id


async def test_hooks_from_initialize_survive_a_respawn(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    commands: list[str] = []

    async def pre_tool_use(hook_input: Any, tool_use_id: str | None, context: Any) -> Any:
        commands.append(hook_input["tool_input"]["command"])
        return {}

    hooks = {"PreToolUse": [HookMatcher(matcher="Bash", hooks=[pre_tool_use])]}
    opts = options(claude_cli, cli_env, workdir, hooks=hooks)
    async with ClaudeSDKClient(options=opts) as client:
        await client.query(long_tool(workdir / "started"))
        await wait_for_file(workdir / "started")
        assert len(commands) == 1
        await stop_the_cli()
        with trio.fail_after(30):
            await client.interrupt()
        await response(client)
        # The respawned CLI was given the SDK's initialize again: its hook still fires.
        await client.query("[[api: bash=echo after-respawn]]")
        result = (await response(client))[-1]
        assert isinstance(result, ResultMessage) and not result.is_error
        assert commands[-1] == "echo after-respawn"


async def test_close_during_a_stubborn_tool_leaves_nothing_bare_and_wrapped(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timings = {}
    bare = ClaudeAgentOptions(
        cli_path=str(claude_cli), env=cli_env, cwd=str(workdir), allowed_tools=["Bash"]
    )
    for name, opts in (("bare CLI", bare), ("wrapped", options(claude_cli, cli_env, workdir))):
        marker = workdir / "stubborn"
        client = ClaudeSDKClient(options=opts)
        await client.connect()
        try:
            await client.query(stubborn_tool(marker))
            await wait_for_file(marker)
        finally:
            # Watched from the moment disconnect() starts, while it runs.
            async def watch(name: str = name) -> None:
                timings[name] = await seconds_until_gone(keep=[], timeout=60)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with trio.fail_after(60):
                    await client.disconnect()
        marker.unlink()
    with capsys.disabled():  # shown in every run's output, not only on failure
        print(
            "\nPython SDK disconnect() with a tool ignoring SIGTERM, until the whole tree is gone: "
            + json.dumps({k: round(v, 2) for k, v in timings.items()})
        )
    # The SDK ends stdin, sends SIGTERM 5 s later, SIGKILL 5 s after; generous bounds only.
    assert timings["wrapped"] < 30
