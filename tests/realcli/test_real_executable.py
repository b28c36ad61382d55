"""The drop-in executable in front of the real Claude Code CLI, driven over pipes."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio
from conftest import cli_of, processes_with_token
from wrapper_harness import (
    FAST_FLAGS,
    IN_BAND_FLAGS,
    Wrapper,
    is_result,
    is_system,
    is_tool_use,
    user,
)

from supervisor.testing.fake_api import FakeMessagesAPI, typed_user_texts

from .conftest import ARGS, long_tool, wait_for_file

pytestmark = pytest.mark.real_cli


@pytest.fixture
async def wrapper(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Wrapper]:
    flags = [*FAST_FLAGS, "--sigint-timeout", "4", *getattr(request, "param", ())]
    argv = ["--claude", str(claude_cli), *flags, "--", *ARGS]
    w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
    try:
        yield w
    finally:
        try:
            if w.process.returncode is None:
                await w.close_stdin()
                await w.wait(30)
        finally:
            await w.kill()


def the_cli(wrapper: Wrapper) -> psutil.Process:
    [helper] = psutil.Process(wrapper.process.pid).children()
    return cli_of(helper)


@pytest.mark.parametrize("wrapper", [IN_BAND_FLAGS], ids=["in_band"], indirect=True)
async def test_cancel_turn_in_band(wrapper: Wrapper, workdir: Path) -> None:
    await wrapper.send(user(long_tool(workdir / "started")))
    await wrapper.expect(is_tool_use)
    await wait_for_file(workdir / "started")
    await wrapper.send({"type": "cancel_turn", "request_id": "c1"})
    result = await wrapper.expect(is_result)
    assert result["terminal_reason"] == "aborted_tools"
    assert "supervisor" not in result  # the CLI's own result, relayed
    notice = await wrapper.expect(is_system("supervisor_cancel"))
    assert notice["report"]["path"] == "interrupt" and notice["request_ids"] == ["c1"]
    assert notice["trigger"] == "request"


async def test_wedged_cli_is_killed_and_the_session_resumes(
    wrapper: Wrapper, workdir: Path, api: FakeMessagesAPI
) -> None:
    await wrapper.send(user("first"))
    first = await wrapper.expect(is_result)
    await wrapper.send(user(long_tool(workdir / "started", escapee=True)))
    await wait_for_file(workdir / "started")
    the_cli(wrapper).send_signal(signal.SIGSTOP)
    await wrapper.send({"type": "cancel_turn"})
    result = await wrapper.expect(is_result)
    # The supervisor's result, or the CLI's own if the kill rung's SIGCONT let it act on
    # the interrupt before dying: either way an error result of the same session.
    assert result["terminal_reason"] in ("cancelled", "aborted_tools") and result["is_error"]
    assert result["session_id"] == first["session_id"]
    report = (await wrapper.expect(is_system("supervisor_cancel")))["report"]
    assert report["path"] == "kill" and report["respawned"] is True
    assert report["processes_killed"] >= 3
    await wrapper.send(user("after"))
    after = await wrapper.expect(is_result)
    assert after["session_id"] == first["session_id"]
    assert "first" in typed_user_texts(api.requests[-1])


async def test_each_user_frame_gets_one_result(wrapper: Wrapper, workdir: Path) -> None:
    await wrapper.send(user(long_tool(workdir / "started", seconds=1)), user("b"), user("c"))
    results = await wrapper.results(3, timeout=60)
    assert [r["result"] for r in results[1:]] == ["reply #2 to: b", "reply #3 to: c"]


async def test_supersede_turn(wrapper: Wrapper, workdir: Path) -> None:
    await wrapper.send(user(long_tool(workdir / "started")))
    await wait_for_file(workdir / "started")
    await wrapper.send(user("queued"), {"type": "supersede_turn", "content": "instead"})
    cancelled, first, second = await wrapper.results(3, timeout=60)
    assert cancelled["is_error"] is True
    assert first["result"].endswith("to: instead")
    assert second["result"].endswith("to: queued")


async def test_sdk_style_interrupt_is_answered_when_the_cli_is_wedged(
    wrapper: Wrapper, workdir: Path
) -> None:
    await wrapper.send(user(long_tool(workdir / "started")))
    await wait_for_file(workdir / "started")
    the_cli(wrapper).send_signal(signal.SIGSTOP)
    await wrapper.send(
        {"type": "control_request", "request_id": "sdk-1", "request": {"subtype": "interrupt"}}
    )
    answer = await wrapper.expect(lambda f: f.get("type") == "control_response")
    assert answer["response"] == {
        "subtype": "success",
        "request_id": "sdk-1",
        "response": {"still_queued": []},  # the CLI's own interrupt receipt's shape
    }
    # The answer may come before the turn's result: the kill rung's SIGCONT lets the
    # stopped CLI read the interrupt and answer it as it dies, as a live CLI would.
    if not any(is_result(f) for f in wrapper.frames):
        await wrapper.expect(is_result)
    notice = await wrapper.expect(is_system("supervisor_cancel"), timeout=60)
    assert notice["report"]["path"] == "kill"


async def test_sigint_to_the_wrapper_cancels_the_turn(wrapper: Wrapper, workdir: Path) -> None:
    await wrapper.send(user(long_tool(workdir / "started")))
    await wait_for_file(workdir / "started")
    wrapper.signal(signal.SIGINT)
    assert (await wrapper.expect(is_result))["is_error"] is True
    notice = await wrapper.expect(is_system("supervisor_cancel"))
    assert notice["trigger"] == notice["report"]["trigger"] == "sigint"
    await wrapper.send(user("still here"))
    assert (await wrapper.expect(is_result))["result"].endswith("to: still here")


async def test_stdin_eof_exits_with_the_clis_code(wrapper: Wrapper) -> None:
    await wrapper.send(user("only"))
    await wrapper.close_stdin()
    frames = await wrapper.read_to_end(30)
    assert [f["result"] for f in frames if is_result(f)] == ["reply #1 to: only"]
    assert await wrapper.wait() == 0


async def test_sigint_rung_through_the_wrapper(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, api: FakeMessagesAPI
) -> None:
    """A 1 ms interrupt deadline: the CLI misses it, as a busy one would; SIGINT follows."""
    argv = ["--claude", str(claude_cli), "--interrupt-timeout", "0.001", "--", *ARGS]
    w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
    try:
        await w.send(user("first"))
        first = await w.expect(is_result)
        await w.send(user(long_tool(workdir / "started")))
        await wait_for_file(workdir / "started")
        await w.send({"type": "cancel_turn"})
        assert (await w.expect(is_result))["is_error"] is True
        report = (await w.expect(is_system("supervisor_cancel")))["report"]
        assert report["path"] == "sigint" and report["respawned"] is True
        await w.send(user("after"))
        after = await w.expect(is_result)
        assert after["session_id"] == first["session_id"]
        assert "first" in typed_user_texts(api.requests[-1])
    finally:
        await w.close_stdin()
        await w.wait(30)


async def test_a_session_without_persistence_survives_a_kill_as_a_new_one(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, api: FakeMessagesAPI
) -> None:
    """`--no-session-persistence` keeps no transcript: the resume after the kill fails, and
    the session goes on as a new CLI session, saying the history was lost."""
    args = [*ARGS, "--no-session-persistence"]
    argv = ["--claude", str(claude_cli), *FAST_FLAGS, "--sigint-timeout", "4", "--", *args]
    w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
    try:
        await w.send(user("remember the first turn"))
        first = await w.expect(is_result, timeout=60)
        await w.send(user(long_tool(workdir / "started")))
        await wait_for_file(workdir / "started")
        the_cli(w).send_signal(signal.SIGSTOP)
        await w.send({"type": "cancel_turn"})
        cancelled = await w.expect(is_result, timeout=60)
        # The supervisor's result, or the CLI's own: the kill rung's SIGCONT may let the
        # stopped CLI act on the interrupt before it dies.
        assert cancelled["terminal_reason"] in ("cancelled", "aborted_tools")
        lost = await w.expect(is_system("supervisor_error"), timeout=60)
        assert lost["error"]["code"] == "session_lost"
        assert lost["error"]["session_id"] == first["session_id"]
        assert "history is lost" in lost["error"]["message"]
        assert "No conversation found" in lost["error"]["message"]
        assert "--no-session-persistence" in lost["error"]["message"]
        report = (await w.expect(is_system("supervisor_cancel"), timeout=60))["report"]
        assert report["path"] == "kill" and report["respawned"] is True
        await w.send(user("after"))
        after = await w.expect(is_result, timeout=60)
        assert after["is_error"] is False and after["result"].endswith("to: after")
        assert after["session_id"] != first["session_id"]
        assert typed_user_texts(api.requests[-1]) == ["after"]  # a new conversation
        await w.close_stdin()
        assert await w.wait(30) == 0
    finally:
        await w.kill()


async def test_sigterm_after_stdin_eof_stops_a_stubborn_tool_within_kill_timeout(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, process_audit: str
) -> None:
    """An SDK's close (stdin EOF, then SIGTERM) through the wrapper: SIGTERM means "now".

    The CLI gets SIGTERM as it would from the SDK, the tool ignores it and is SIGKILLed
    after kill_timeout; a long exit_timeout shows that no graceful wait comes first.
    """
    marker = workdir / "started"
    stubborn = (
        "python3 -c 'import signal, time, pathlib; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f'pathlib.Path("{marker}").touch(); time.sleep(300)\''
    )
    argv = ["--claude", str(claude_cli), "--kill-timeout", "1", "--exit-timeout", "60"]
    w = await Wrapper.start([*argv, "--", *ARGS], env=cli_env, cwd=workdir)
    try:
        await w.send(user(f"[[api: bash={stubborn}]]"))
        await wait_for_file(marker)
        await w.close_stdin()
        w.signal(signal.SIGTERM)
        started = trio.current_time()
        frames = await w.read_to_end(30)
        assert await w.wait(30) == 128 + signal.SIGTERM
        assert trio.current_time() - started < 1 + 5  # kill_timeout + a generous margin
        left = [p for p in processes_with_token(process_audit) if p.status() != "zombie"]
        assert left == []
        [result] = [f for f in frames if is_result(f)]
        assert result["is_error"] is True
    finally:
        await w.kill()


async def test_unreadable_content_is_answered_and_never_reaches_the_cli(
    wrapper: Wrapper, workdir: Path, api: FakeMessagesAPI
) -> None:
    """The real CLI neither answers nor fails on such content: forwarded, it would hold
    every turn behind it."""
    await wrapper.send(user(long_tool(workdir / "started", seconds=2)))
    await wait_for_file(workdir / "started")
    await wrapper.send(
        user(123),  # type: ignore[arg-type]
        {"type": "supersede_turn", "content": [None]},
        user("good"),
    )
    results = await wrapper.results(4, timeout=60)
    reasons = [r.get("terminal_reason") for r in results]
    # The supersede with bad content cancelled nothing; its result comes in its place.
    assert reasons == ["completed", "invalid_content", "invalid_content", "completed"]
    assert results[-1]["result"].endswith("to: good")
    errors = [f for f in wrapper.frames if is_system("supervisor_error")(f)]
    assert [e["error"]["code"] for e in errors] == ["invalid_content", "invalid_content"]
    assert typed_user_texts(api.requests[-1])[-1] == "good"


async def test_the_clis_lines_pass_the_smallest_max_line_bytes(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path
) -> None:
    """With a 1 KiB cap, the real CLI's system/init (~2.8 KB) and result (~2 KB plus the
    answer) are over it: they are relayed whole, and the result still ends its turn."""
    argv = ["--claude", str(claude_cli), "--max-line-bytes", "1024", "--", *ARGS]
    w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
    try:
        prompt = "y" * 800
        await w.send(user(prompt), user("next"))
        await w.close_stdin()
        frames = await w.read_to_end(60)
        assert await w.wait(30) == 0
        sizes = {f.get("type"): len(raw) for f, raw in zip(frames, w.raw_lines, strict=True)}
        assert sizes["system"] > 1024 and sizes["result"] > 1024
        assert [f["result"] for f in frames if is_result(f)] == [
            "reply #1 to: " + prompt,
            "reply #2 to: next",
        ]
        assert not [f for f in frames if f.get("subtype") == "supervisor_error"]
    finally:
        await w.kill()
