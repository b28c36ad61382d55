"""The installer of the pinned npm packages, with a stand-in `npm` (no network).

The real installs are exercised by every real-CLI test run; here the care around them:
one install per version, nothing half-built left behind, errors that say what to do,
and a word to the user before a long download.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.testing.claude_install import AGENT_SDK_PINNED_VERSION, ensure_agent_sdk

FAKE_NPM = """#!/bin/sh
echo "$@" >> "{calls}"
if [ "$1" = config ]; then echo "{cache}"; exit 0; fi
if [ -n "$FAKE_NPM_FAIL" ]; then echo "npm ERR! 404 Not Found" >&2; exit 1; fi
while [ "$1" != --prefix ]; do shift; done
sdk="$2/node_modules/@anthropic-ai/claude-agent-sdk"
mkdir -p "$sdk"
echo '{{"version": "{version}"}}' > "$sdk/package.json"
echo 'export {{}}' > "$sdk/sdk.mjs"
"""


@pytest.fixture
def npm_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "npm-calls"
    npm = bin_dir / "npm"
    npm.write_text(
        FAKE_NPM.format(calls=calls, cache=tmp_path / "npm-cache", version=AGENT_SDK_PINNED_VERSION)
    )
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def installs(calls: Path) -> list[str]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line for line in lines if line.startswith("install")]


def test_the_sdk_is_installed_once_and_said_so(npm_calls: Path, tmp_path: Path) -> None:
    said: list[str] = []
    root = tmp_path / "cache"
    prefix = ensure_agent_sdk(root=root, progress=said.append)
    assert prefix == root / f"agent-sdk-{AGENT_SDK_PINNED_VERSION}"
    assert (prefix / "node_modules/@anthropic-ai/claude-agent-sdk/sdk.mjs").is_file()
    assert said[0].startswith("Installing the TypeScript SDK") and str(prefix) in said[0]
    [install] = installs(npm_calls)
    assert "--omit=optional" in install  # not its own copy of the CLI
    assert ensure_agent_sdk(root=root) == prefix
    assert len(installs(npm_calls)) == 1  # found in the cache: no second install
    assert sorted(p.name for p in root.iterdir()) == [
        f".agent-sdk-{AGENT_SDK_PINNED_VERSION}.lock",
        f"agent-sdk-{AGENT_SDK_PINNED_VERSION}",
    ]


def test_a_failed_install_leaves_nothing_and_says_what_to_do(
    npm_calls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError) as failure:
        ensure_agent_sdk(root=root)
    message = str(failure.value)
    assert f"npm install @anthropic-ai/claude-agent-sdk@{AGENT_SDK_PINNED_VERSION}" in message
    assert "404 Not Found" in message  # npm's own words
    assert "npm view @anthropic-ai/claude-agent-sdk versions" in message  # what to do
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_no_npm_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm anywhere
    with pytest.raises(RuntimeError, match=r"Install Node\.js and npm"):
        ensure_agent_sdk(root=tmp_path / "cache")
