"""Supervise the Claude Code CLI: cancel or supersede a running turn, never orphan a tool.

The library in three names: `open_session()` runs one supervised CLI session,
`Session.send()` gives a `Turn`, and `Session.cancel()` climbs the ladder (in-band
interrupt, SIGINT, tree kill, respawn with --resume) and returns a `CancelReport`.
See docs/library.md.

The names are loaded on first use (PEP 562): the `claude-supervisor` executable imports
this package before it can ignore SIGINT, and trio alone takes a tenth of a second to
import, a window in which a parent's SIGINT would otherwise kill the wrapper.
"""

from __future__ import annotations

# typing.TYPE_CHECKING, without importing typing: the executable imports this package
# before it starts the CLI (`_cli.early_start`). Type checkers know the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._errors import (
        CliNotFoundError,
        SessionClosedError,
        SessionFailedError,
        SupervisorError,
    )
    from ._framing import DEFAULT_MAX_LINE_BYTES
    from ._policy import EscalationPolicy
    from ._pool import (
        ChatBusyError,
        ChatEvicted,
        ChatExport,
        ChatFailed,
        ChatStarted,
        PoolEvent,
        PoolStats,
        QueueFullError,
        SessionPool,
        TranscriptLost,
        claude_transcript_path,
    )
    from ._report import CancelReport, Step
    from ._session import Session, Turn, find_claude, open_session

_WHERE = {
    "CliNotFoundError": "._errors",
    "SessionClosedError": "._errors",
    "SessionFailedError": "._errors",
    "SupervisorError": "._errors",
    "DEFAULT_MAX_LINE_BYTES": "._framing",
    "EscalationPolicy": "._policy",
    "CancelReport": "._report",
    "Step": "._report",
    "Session": "._session",
    "Turn": "._session",
    "find_claude": "._session",
    "open_session": "._session",
    "ChatBusyError": "._pool",
    "ChatEvicted": "._pool",
    "ChatExport": "._pool",
    "ChatFailed": "._pool",
    "ChatStarted": "._pool",
    "PoolEvent": "._pool",
    "PoolStats": "._pool",
    "QueueFullError": "._pool",
    "SessionPool": "._pool",
    "TranscriptLost": "._pool",
    "claude_transcript_path": "._pool",
}

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "CancelReport",
    "ChatBusyError",
    "ChatEvicted",
    "ChatExport",
    "ChatFailed",
    "ChatStarted",
    "CliNotFoundError",
    "EscalationPolicy",
    "PoolEvent",
    "PoolStats",
    "QueueFullError",
    "Session",
    "SessionClosedError",
    "SessionFailedError",
    "SessionPool",
    "Step",
    "SupervisorError",
    "TranscriptLost",
    "Turn",
    "claude_transcript_path",
    "find_claude",
    "open_session",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
