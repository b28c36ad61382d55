"""Random mixes of good turns and content the real CLI cannot read, through the wrapper.

The real CLI neither answers nor fails on a user frame such as `"content": 123` or
`[null]`: forwarded, such a frame would hold every turn behind it. Whatever the mix and
the order (user frames and supersedes, sent back to back as a parent may), every frame
gets exactly one result, the unreadable ones an `invalid_content` result of their own,
and the last turn a real answer from the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wrapper_harness import FAST_FLAGS, Wrapper, is_result, is_system, user

from .conftest import ARGS

pytestmark = pytest.mark.real_cli

EXAMPLES = 4 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 40

unreadable = st.sampled_from(
    [123, None, [1, 2, 3], ["s"], [None], [{"type": "text"}], [{"type": "text", "text": 5}]]
)
steps = st.one_of(
    st.tuples(st.just("send"), st.just("")),
    st.tuples(st.just("supersede"), st.just("")),
    st.tuples(st.just("bad send"), unreadable),
    st.tuples(st.just("bad supersede"), unreadable),
)


def frame_for(kind: str, content: Any, number: int) -> dict[str, Any]:
    if kind == "send":
        return user(f"turn {number}")
    if kind == "supersede":
        return {"type": "supersede_turn", "content": f"turn {number}"}
    if kind == "bad send":
        return {"type": "user", "message": {"role": "user", "content": content}}
    return {"type": "supersede_turn", "content": content}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(steps, min_size=1, max_size=6))
async def test_unreadable_content_never_holds_the_queue(
    claude_cli: Path, cli_env: dict[str, str], workdir: Path, script: list[tuple[str, Any]]
) -> None:
    argv = ["--claude", str(claude_cli), *FAST_FLAGS, "--sigint-timeout", "4", "--", *ARGS]
    w = await Wrapper.start(argv, env=cli_env, cwd=workdir)
    try:
        frames = [frame_for(kind, content, i) for i, (kind, content) in enumerate(script)]
        frames.append(user("last"))
        await w.send(*frames)
        results = await w.results(len(frames), timeout=120)
        bad = sum(kind.startswith("bad") for kind, _ in script)
        invalid = [r for r in results if r.get("terminal_reason") == "invalid_content"]
        assert len(invalid) == bad
        errors = [f for f in w.frames if is_system("supervisor_error")(f)]
        assert [e["error"]["code"] for e in errors] == ["invalid_content"] * bad
        last = results[-1]
        assert last["is_error"] is False and last["result"].endswith("to: last")
        await w.close_stdin()
        await w.read_to_end(30)
        assert await w.wait(30) == 0
        assert sum(is_result(f) for f in w.frames) == len(frames)
    finally:
        await w.kill()
