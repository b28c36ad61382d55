"""Supervise the Claude Code CLI: cancel or supersede a running turn, never orphan a tool.

The library in three names: `open_session()` runs one supervised CLI session,
`Session.send()` gives a `Turn`, and `Session.cancel()` climbs the ladder (in-band
interrupt, SIGINT, tree kill, respawn with --resume) and returns a `CancelReport`.
See docs/library.md.
"""

from ._errors import (
    CliNotFoundError,
    SessionClosedError,
    SessionFailedError,
    SupervisorError,
)
from ._framing import DEFAULT_MAX_LINE_BYTES
from ._policy import EscalationPolicy
from ._report import CancelReport, Step
from ._session import Session, Turn, find_claude, open_session

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "CancelReport",
    "CliNotFoundError",
    "EscalationPolicy",
    "Session",
    "SessionClosedError",
    "SessionFailedError",
    "Step",
    "SupervisorError",
    "Turn",
    "find_claude",
    "open_session",
]
