"""Install a pinned Claude Code CLI from npm into a project-local cache, for tests.

Why this exists: the supervisor's real-CLI tests must run the actual ``claude``
binary (its stream-json framing, interrupt handling and signal behaviour are what we
supervise), but CLI behaviour changes between releases. So tests pin one version and
install it themselves, into a git-ignored folder inside the repository, instead of
relying on whatever ``claude`` happens to be on ``PATH``.

Layout::

    <cache root>/<version>/node_modules/.bin/claude
    <cache root>/.<version>.lock     # fcntl lock serialising installers

The cache root defaults to ``<repo>/.cache/claude`` (``.cache/`` is git-ignored); the
environment variable ``CLAUDE_SUPERVISOR_CLI_CACHE`` overrides it. The version defaults
to :data:`PINNED_VERSION`; ``CLAUDE_SUPERVISOR_TEST_CLI_VERSION`` overrides it, so the
whole real-CLI suite can be pointed at another release without editing code.

The install goes into a temporary sibling directory that is renamed into place only
after ``npm install`` succeeded and the binary answered ``--version``: a crashed or
interrupted install never leaves a half-populated version directory that a later
caller would mistake for a good one. A file lock makes parallel callers (pytest-xdist
workers, two terminals) wait for one installer instead of racing npm.

Failures raise :class:`RuntimeError` that says what failed and what to do: tests that
need the real CLI must fail loudly, never skip silently.

Run ``python -m supervisor.testing.claude_install [--version V]`` to install and print
the executable's path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "PACKAGE",
    "PINNED_VERSION",
    "VERSION_ENV",
    "default_cache_root",
    "ensure_claude",
    "resolve_version",
]

PACKAGE = "@anthropic-ai/claude-code"
"""The npm package that ships the ``claude`` CLI."""

PINNED_VERSION = "2.1.328"
"""The CLI version the test-suite is written against (see docs/compatibility.md)."""

VERSION_ENV = "CLAUDE_SUPERVISOR_TEST_CLI_VERSION"
"""Environment variable that overrides :data:`PINNED_VERSION`."""

CACHE_ENV = "CLAUDE_SUPERVISOR_CLI_CACHE"
"""Environment variable that overrides the cache root directory."""

# npm versions and dist-tags: letters, digits, dots, dashes, plus signs. Checking this
# keeps the version usable as a directory name and out of any shell-like parsing.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")

_NPM_TIMEOUT_S = 600.0
_VERSION_CHECK_TIMEOUT_S = 60.0


def _repo_root() -> Path | None:
    """Return the repository root holding this file, or None for an installed package.

    The file lives at ``<repo>/supervisor/testing/claude_install.py``; a
    ``pyproject.toml`` two levels up confirms we are in a source checkout rather than
    in ``site-packages`` (where writing a cache would be wrong).
    """
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return None


def default_cache_root() -> Path:
    """Return the directory under which each CLI version gets its own folder.

    Order: ``$CLAUDE_SUPERVISOR_CLI_CACHE``; else ``<repo>/.cache/claude`` in a source
    checkout; else ``$XDG_CACHE_HOME/claude-supervisor/claude`` (``~/.cache`` default),
    so an installed copy of the package still has somewhere sensible to write.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    repo = _repo_root()
    if repo is not None:
        return repo / ".cache" / "claude"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "claude-supervisor" / "claude"


def resolve_version(version: str | None = None) -> str:
    """Return the version to use: the argument, else ``$CLAUDE_SUPERVISOR_TEST_CLI_VERSION``,
    else :data:`PINNED_VERSION`. Raises ValueError for a string that is not a plain
    npm version or tag (it becomes a directory name)."""
    chosen = version or os.environ.get(VERSION_ENV) or PINNED_VERSION
    if not _VERSION_RE.match(chosen):
        raise ValueError(f"not a valid npm version or tag for {PACKAGE}: {chosen!r}")
    return chosen


def _bin_path(version_dir: Path) -> Path:
    """Where npm puts the ``claude`` launcher inside one version's prefix."""
    return version_dir / "node_modules" / ".bin" / "claude"


def _installed_version(version_dir: Path) -> str | None:
    """Read the version npm actually installed, or None if the tree is incomplete."""
    manifest = version_dir / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = data.get("version") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def _is_complete(version_dir: Path) -> bool:
    """True if *version_dir* holds a finished install (launcher present and executable)."""
    exe = _bin_path(version_dir)
    return exe.exists() and os.access(exe, os.X_OK) and _installed_version(version_dir) is not None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on *lock_path* for the duration of the block.

    The lock is released by the kernel if the process dies, so a killed installer never
    blocks the next one.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _tail(text: str, limit: int = 4000) -> str:
    """The last *limit* characters of a tool's output, enough to diagnose without flooding."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _run_npm(npm: str, prefix: Path, version: str) -> None:
    """Run ``npm install`` of the CLI into *prefix*; raise RuntimeError on failure."""
    spec = f"{PACKAGE}@{version}"
    cmd = [
        npm,
        "install",
        "--prefix",
        str(prefix),
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--no-package-lock",
        "--loglevel=error",
        # The native binary arrives as an optional dependency: never let a user-level
        # `omit=optional` config drop it.
        "--include=optional",
        spec,
    ]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`npm install {spec}` did not finish within {_NPM_TIMEOUT_S:.0f} s. "
            "Check access to the npm registry (`npm config get registry`) and retry."
        ) from exc
    except OSError as exc:
        raise RuntimeError(f"could not run npm ({npm}): {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"`npm install {spec}` failed with exit code {proc.returncode}.\n"
            f"stderr:\n{_tail(proc.stderr)}\n"
            "Check that the version exists (`npm view @anthropic-ai/claude-code versions`), "
            "that the npm registry is reachable, or set "
            f"{VERSION_ENV} to another version."
        )


def _check_runs(exe: Path, version: str) -> None:
    """Run ``claude --version`` to prove the launcher and its native binary work.

    The native binary comes from a platform-specific optional dependency; if npm skipped
    it the launcher exists but cannot run, which we want to find out here, not in the
    middle of a test.
    """
    try:
        proc = subprocess.run(
            [str(exe), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_CHECK_TIMEOUT_S,
            check=False,
            env={**os.environ, "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(
            f"installed {PACKAGE}@{version} but `{exe} --version` failed: {exc}. "
            "The platform binary (optional dependency) may be missing for this OS/arch."
        ) from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"installed {PACKAGE}@{version} but `{exe} --version` exited with "
            f"{proc.returncode}: {_tail(proc.stderr or proc.stdout)}"
        )


def ensure_claude(version: str | None = None, root: Path | None = None) -> Path:
    """Install ``@anthropic-ai/claude-code@<version>`` if needed; return the ``claude`` path.

    *version* defaults to ``$CLAUDE_SUPERVISOR_TEST_CLI_VERSION`` or
    :data:`PINNED_VERSION`. *root* is the cache root (one sub-folder per version);
    it defaults to :func:`default_cache_root`. Already-installed versions return at
    once (no network). Safe to call from parallel processes.

    Raises RuntimeError if npm is missing or the install fails, with what to do next.
    """
    ver = resolve_version(version)
    cache_root = (root if root is not None else default_cache_root()).resolve()
    version_dir = cache_root / ver
    if _is_complete(version_dir):
        return _bin_path(version_dir)

    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm was not found on PATH, so {PACKAGE}@{ver} cannot be installed for the "
            "real-CLI tests. Install Node.js and npm (e.g. `apt-get install nodejs npm`), "
            f"or pre-install the CLI under {version_dir}."
        )

    with _locked(cache_root / f".{ver}.lock"):
        # Another process may have finished the install while we waited for the lock.
        if _is_complete(version_dir):
            return _bin_path(version_dir)
        if version_dir.exists():
            # Not complete, yet present: left over from a manual copy or an old layout.
            # We hold the lock, so nobody else is using it; replace it.
            shutil.rmtree(version_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{ver}-", dir=cache_root))
        try:
            _run_npm(npm, tmp, ver)
            got = _installed_version(tmp)
            if got is None or not _bin_path(tmp).exists():
                raise RuntimeError(
                    f"`npm install {PACKAGE}@{ver}` succeeded but left no "
                    f"node_modules/.bin/claude under {tmp}; the package layout may have "
                    "changed. Inspect the package or pin another version."
                )
            if ver[0].isdigit() and got != ver:
                raise RuntimeError(f"asked npm for {PACKAGE}@{ver} but it installed {got}")
            # The .bin entry is a relative symlink, so it survives the rename below.
            _check_runs(_bin_path(tmp), ver)
            # mkdtemp makes the folder private (0700); the cache is shared with the user's
            # other tools, so give it the usual permissions before it goes live.
            tmp.chmod(0o755)
            os.rename(tmp, version_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _bin_path(version_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: install (if needed) and print the executable's path."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.testing.claude_install",
        description=f"Install {PACKAGE} into the project-local cache and print its path.",
    )
    parser.add_argument(
        "--version",
        default=None,
        help=f"CLI version (default: ${VERSION_ENV} or {PINNED_VERSION})",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="cache root (default: <repo>/.cache/claude)"
    )
    args = parser.parse_args(argv)
    try:
        path = ensure_claude(args.version, args.root)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
