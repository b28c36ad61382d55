"""The exceptions the library raises; each message says what to do about it."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class of everything this package raises on purpose."""


class CliNotFoundError(SupervisorError):
    """The Claude Code CLI executable could not be found."""


class SessionFailedError(SupervisorError):
    """The CLI could not be started or resumed; the session cannot go on."""


class SessionClosedError(SupervisorError):
    """The session was used after it was closed."""
