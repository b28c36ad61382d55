"""Install a pinned Claude Code CLI from npm into a project-local cache, for tests.

Why this exists: the supervisor's real-CLI tests must run the actual ``claude``
binary (its stream-json framing, interrupt handling and signal behaviour are what we
supervise), but CLI behaviour changes between releases. So tests pin one version and
install it themselves, into a git-ignored folder inside the repository, instead of
relying on whatever ``claude`` happens to be on ``PATH``.

It also installs the official TypeScript SDK (``@anthropic-ai/claude-agent-sdk``, pinned
to :data:`AGENT_SDK_PINNED_VERSION`) next to it, with the same care, for the tests that
drive the wrapper from the SDK as ``pathToClaudeCodeExecutable``. Its own copy of the
CLI (an optional dependency) is left out: the tests point it at the pinned CLI.

Layout::

    <cache root>/<version>/node_modules/.bin/claude
    <cache root>/.<version>.lock     # fcntl lock serialising installers
    <cache root>/agent-sdk-<version>/node_modules/@anthropic-ai/claude-agent-sdk/
    <cache root>/.agent-sdk-<version>.lock

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

Run ``python -m supervisor.testing.claude_install [--version V] [--agent-sdk]`` to install
and print the executable's path (and the SDK's folder); it says what it downloads, where,
and how far it got.
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
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "AGENT_SDK_PACKAGE",
    "AGENT_SDK_PINNED_VERSION",
    "CACHE_ENV",
    "PACKAGE",
    "PINNED_VERSION",
    "VERSION_ENV",
    "default_cache_root",
    "ensure_agent_sdk",
    "ensure_claude",
    "resolve_version",
]

PACKAGE = "@anthropic-ai/claude-code"
"""The npm package that ships the ``claude`` CLI."""

PINNED_VERSION = "2.1.328"
"""The CLI version the test-suite is written against (see docs/compatibility.md)."""

AGENT_SDK_PACKAGE = "@anthropic-ai/claude-agent-sdk"
"""The official TypeScript SDK, driven by the tests with the wrapper as its CLI."""

AGENT_SDK_PINNED_VERSION = "0.3.328"
"""The TypeScript SDK release that goes with :data:`PINNED_VERSION` (same patch number)."""

VERSION_ENV = "CLAUDE_SUPERVISOR_TEST_CLI_VERSION"
"""Environment variable that overrides :data:`PINNED_VERSION`."""

CACHE_ENV = "CLAUDE_SUPERVISOR_CLI_CACHE"
"""Environment variable that overrides the cache root directory."""

# npm versions and dist-tags: letters, digits, dots, dashes, plus signs. Checking this
# keeps the version usable as a directory name and out of any shell-like parsing.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")

_NPM_TIMEOUT_S = 600.0
_PROGRESS_EVERY_S = 5.0

#: Where progress lines go: a callable taking one line, or None for silence.
Progress = Callable[[str], None] | None
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


def _folder_mb(folder: Path) -> float:
    """How much npm has written so far under *folder* (the download's progress)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total / 1e6


def _npm_cache(npm: str) -> Path | None:
    """npm's download cache, where tarballs land while they download (None if unknown)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(
            [npm, "config", "get", "cache"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_CHECK_TIMEOUT_S,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
    return None


def _run_npm(
    npm: str, prefix: Path, spec: str, extra: Sequence[str] = (), progress: Progress = None
) -> None:
    """Run ``npm install <spec>`` into *prefix*; raise RuntimeError on failure.

    npm shows no progress when its output is not a terminal, so *progress* is told every
    few seconds how many megabytes have arrived: npm downloads into its cache first and
    unpacks into *prefix* after, so both are counted.
    """
    cache = _npm_cache(npm) if progress is not None else None
    cache_before = _folder_mb(cache) if cache is not None else 0.0
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
        *extra,
        spec,
    ]
    started = time.monotonic()
    try:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True
            )
            try:
                while True:
                    try:
                        returncode = proc.wait(_PROGRESS_EVERY_S)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = time.monotonic() - started
                        if elapsed > _NPM_TIMEOUT_S:
                            raise
                        if progress is not None:
                            got = _folder_mb(prefix)
                            if cache is not None:
                                got += max(0.0, _folder_mb(cache) - cache_before)
                            progress(f"  {spec}: {got:.0f} MB after {elapsed:.0f} s")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            stderr = err.read()
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`npm install {spec}` did not finish within {_NPM_TIMEOUT_S:.0f} s. "
            "Check access to the npm registry (`npm config get registry`) and retry."
        ) from exc
    except OSError as exc:
        raise RuntimeError(f"could not run npm ({npm}): {exc}") from exc
    if returncode != 0:
        package = spec.rsplit("@", 1)[0]
        raise RuntimeError(
            f"`npm install {spec}` failed with exit code {returncode}.\n"
            f"stderr:\n{_tail(stderr)}\n"
            f"Check that the version exists (`npm view {package} versions`), "
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


def _npm_or_fail(what: str, where: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm was not found on PATH, so {what} cannot be installed for the "
            "real-CLI tests. Install Node.js and npm (e.g. `apt-get install nodejs npm`), "
            f"or pre-install it under {where}."
        )
    return npm


def _install(
    cache_root: Path,
    name: str,
    complete: Callable[[Path], bool],
    build: Callable[[Path], None],
) -> Path:
    """Build `<cache_root>/<name>` once, safely: under a lock, in a temporary sibling that
    is renamed into place only when *build* succeeded and *complete* says it is whole."""
    target = cache_root / name
    if complete(target):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / f".{name}.lock"):
        # Another process may have finished the install while we waited for the lock.
        if complete(target):
            return target
        if target.exists():
            # Not complete, yet present: left over from a manual copy or an old layout.
            # We hold the lock, so nobody else is using it; replace it.
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_root))
        try:
            build(tmp)
            # mkdtemp makes the folder private (0700); the cache is shared with the user's
            # other tools, so give it the usual permissions before it goes live.
            tmp.chmod(0o755)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def ensure_claude(
    version: str | None = None, root: Path | None = None, progress: Progress = None
) -> Path:
    """Install ``@anthropic-ai/claude-code@<version>`` if needed; return the ``claude`` path.

    *version* defaults to ``$CLAUDE_SUPERVISOR_TEST_CLI_VERSION`` or
    :data:`PINNED_VERSION`. *root* is the cache root (one sub-folder per version);
    it defaults to :func:`default_cache_root`. Already-installed versions return at
    once (no network). Safe to call from parallel processes. *progress*, if given, is
    told what is installed where, and how far the download got.

    Raises RuntimeError if npm is missing or the install fails, with what to do next.
    """
    ver = resolve_version(version)
    cache_root = (root if root is not None else default_cache_root()).resolve()
    version_dir = cache_root / ver
    if _is_complete(version_dir):
        return _bin_path(version_dir)
    npm = _npm_or_fail(f"{PACKAGE}@{ver}", version_dir)

    def build(tmp: Path) -> None:
        if progress is not None:
            progress(
                f"Installing the Claude Code CLI {PACKAGE}@{ver} for the real-CLI tests "
                f"into {version_dir} (a download of a few hundred MB, once)"
            )
        # The native binary arrives as an optional dependency: never let a user-level
        # `omit=optional` config drop it.
        _run_npm(npm, tmp, f"{PACKAGE}@{ver}", ["--include=optional"], progress)
        got = _installed_version(tmp)
        if got is None or not _bin_path(tmp).exists():
            raise RuntimeError(
                f"`npm install {PACKAGE}@{ver}` succeeded but left no "
                f"node_modules/.bin/claude under {tmp}; the package layout may have "
                "changed. Inspect the package or pin another version."
            )
        if ver[0].isdigit() and got != ver:
            raise RuntimeError(f"asked npm for {PACKAGE}@{ver} but it installed {got}")
        # The .bin entry is a relative symlink, so it survives the rename.
        _check_runs(_bin_path(tmp), ver)

    return _bin_path(_install(cache_root, ver, _is_complete, build))


def _agent_sdk_package(prefix: Path) -> Path:
    return prefix / "node_modules" / "@anthropic-ai" / "claude-agent-sdk"


def _agent_sdk_version(prefix: Path) -> str | None:
    try:
        data = json.loads((_agent_sdk_package(prefix) / "package.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    found = data.get("version") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def ensure_agent_sdk(
    version: str | None = None, root: Path | None = None, progress: Progress = None
) -> Path:
    """Install ``@anthropic-ai/claude-agent-sdk@<version>`` if needed; return the folder
    holding its ``node_modules`` (run node scripts there, or set ``NODE_PATH`` to its
    ``node_modules``, to import it).

    *version* defaults to :data:`AGENT_SDK_PINNED_VERSION`; *root* and *progress* are as
    for :func:`ensure_claude`, and so is the care (lock, temporary folder, rename). The
    SDK's own CLI binary is not installed (`--omit=optional`): the tests give it the
    wrapper, which runs the pinned CLI.
    """
    ver = version or AGENT_SDK_PINNED_VERSION
    if not _VERSION_RE.match(ver):
        raise ValueError(f"not a valid npm version or tag for {AGENT_SDK_PACKAGE}: {ver!r}")
    cache_root = (root if root is not None else default_cache_root()).resolve()
    name = f"agent-sdk-{ver}"
    spec = f"{AGENT_SDK_PACKAGE}@{ver}"

    def complete(prefix: Path) -> bool:
        return (
            _agent_sdk_version(prefix) is not None
            and (_agent_sdk_package(prefix) / "sdk.mjs").is_file()
        )

    def build(tmp: Path) -> None:
        if progress is not None:
            progress(
                f"Installing the TypeScript SDK {spec} for the SDK tests into "
                f"{cache_root / name} (about 70 MB, once)"
            )
        _run_npm(npm, tmp, spec, ["--omit=optional"], progress)
        got = _agent_sdk_version(tmp)
        if got is None or not complete(tmp):
            raise RuntimeError(
                f"`npm install {spec}` succeeded but left no "
                f"node_modules/@anthropic-ai/claude-agent-sdk/sdk.mjs under {tmp}; the "
                "package layout may have changed. Inspect the package or pin another version."
            )
        if ver[0].isdigit() and got != ver:
            raise RuntimeError(f"asked npm for {spec} but it installed {got}")

    if complete(cache_root / name):
        return cache_root / name
    npm = _npm_or_fail(spec, cache_root / name)
    return _install(cache_root, name, complete, build)


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
    parser.add_argument(
        "--agent-sdk",
        action="store_true",
        help=f"also install {AGENT_SDK_PACKAGE}@{AGENT_SDK_PINNED_VERSION} and print its folder",
    )
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        path = ensure_claude(args.version, args.root, progress=say)
        print(path)
        if args.agent_sdk:
            print(ensure_agent_sdk(root=args.root, progress=say))
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
