"""The session pool with the real Claude Code CLI: chats keep their history through
eviction, resume, and a move to another host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import stray_processes

from supervisor import (
    ChatEvicted,
    EscalationPolicy,
    PoolEvent,
    SessionPool,
    TranscriptLost,
    Turn,
    claude_transcript_path,
)
from supervisor.testing.fake_api import FakeMessagesAPI, typed_user_texts

from .conftest import ARGS

pytestmark = pytest.mark.real_cli

POLICY = EscalationPolicy(interrupt_timeout=2, sigint_timeout=4, kill_timeout=1)
WORDS = {"a": "tangerine", "b": "marmalade", "c": "quokka", "d": "zeppelin"}


async def answer(turn: Turn) -> dict[str, Any]:
    with trio.fail_after(120):
        return await turn.result()


async def test_chats_keep_their_history_through_eviction_and_resume(
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    api: FakeMessagesAPI,
    process_audit: str,
) -> None:
    events: list[PoolEvent] = []
    async with SessionPool(
        ARGS,
        claude=claude_cli,
        env=cli_env,
        cwd=workdir,
        policy=POLICY,
        max_active=2,
        on_event=events.append,
    ) as pool:
        for key, word in WORDS.items():
            first = await answer(await pool.send(key, f"remember the word {word}"))
            assert first["subtype"] == "success"
            assert first["session_id"] == pool.session_id(key)
        # Four chats, two CLIs: the first chats were evicted to make room.
        assert {e.key for e in events if isinstance(e, ChatEvicted)} >= {"a", "b"}
        for key, word in WORDS.items():
            result = await answer(await pool.send(key, "what was the word?"))
            assert result["subtype"] == "success"
            assert result["session_id"] == pool.session_id(key)
            texts = typed_user_texts(api.requests[-1])
            assert texts == [f"remember the word {word}", "what was the word?"]
        assert pool.stats.resumes >= 2 and pool.stats.failed_resumes == 0
        # The CLI keeps each transcript where the pool's export looks for it.
        config_dir = Path(cli_env["HOME"]) / ".claude"
        for key in WORDS:
            session_id = pool.session_id(key)
            assert session_id is not None
            assert claude_transcript_path(config_dir, str(workdir), session_id).is_file()
    assert stray_processes(process_audit, []) == []


async def test_a_chat_moves_to_another_host_with_its_history(
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    api: FakeMessagesAPI,
    tmp_path: Path,
) -> None:
    async with SessionPool(ARGS, claude=claude_cli, env=cli_env, cwd=workdir) as pool:
        await answer(await pool.send("a", "remember the word tangerine"))
        exported = await pool.export_chat("a")
    other_home, other_work = tmp_path / "other-home", tmp_path / "other.work"
    other_home.mkdir()
    other_work.mkdir()
    async with SessionPool(
        ARGS, claude=claude_cli, env=api.env(other_home), cwd=other_work
    ) as pool:
        await pool.import_chat(exported, cwd=other_work)
        result = await answer(await pool.send("a", "what was the word?"))
        assert result["subtype"] == "success"
        assert result["session_id"] == exported.session_id
        texts = typed_user_texts(api.requests[-1])
        assert texts == ["remember the word tangerine", "what was the word?"]


async def test_a_lost_transcript_starts_a_new_session(
    claude_cli: Path,
    cli_env: dict[str, str],
    workdir: Path,
    api: FakeMessagesAPI,
    tmp_path: Path,
) -> None:
    store = tmp_path / "chats.db"
    async with SessionPool(ARGS, claude=claude_cli, env=cli_env, cwd=workdir, store=store) as pool:
        await answer(await pool.send("a", "remember the word tangerine"))
        old = pool.session_id("a")
    assert old is not None
    claude_transcript_path(Path(cli_env["HOME"]) / ".claude", str(workdir), old).unlink()
    events: list[PoolEvent] = []
    async with SessionPool(
        ARGS, claude=claude_cli, env=cli_env, cwd=workdir, store=store, on_event=events.append
    ) as pool:
        result = await answer(await pool.send("a", "what was the word?"))
        assert result["subtype"] == "success"
        new = pool.session_id("a")
        assert new != old and result["session_id"] == new
        assert typed_user_texts(api.requests[-1]) == ["what was the word?"]
        lost = [e for e in events if isinstance(e, TranscriptLost)]
        assert [(e.old_session_id, e.new_session_id) for e in lost] == [(old, new)]
