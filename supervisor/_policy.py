"""How long each step of the cancel ladder may take before the next one starts.

The defaults come from what the real CLI does (see docs/architecture.md): the in-band
interrupt ends a turn in well under 100 ms when the CLI is healthy, and after SIGINT the
CLI prints its result and exits about 1.5 s later, so each deadline leaves room for a
healthy CLI on a loaded machine while keeping a wedged one from holding a user for long.
"""

from __future__ import annotations

import math

import attrs

from ._grace import KILL_TIMEOUT
from ._grace import REAP_GRACE as REAP_GRACE
from ._grace import TREE_GRACE as TREE_GRACE


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _optional_seconds(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{attribute.name} must be a positive number of seconds or None (off), not {value!r}"
        )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


@attrs.frozen
class EscalationPolicy:
    """Deadlines, in seconds, for each step of the ladder and for the session's life cycle,
    and the watchdog's limits after which the supervisor starts the ladder by itself."""

    #: After the in-band interrupt, how long to wait for the turn's `result`.
    interrupt_timeout: float = attrs.field(default=1.5, converter=float, validator=_positive_finite)
    #: After SIGINT, how long to wait for the CLI to exit.
    sigint_timeout: float = attrs.field(default=3.0, converter=float, validator=_positive_finite)
    #: After SIGTERM to every process of the tree, how long before SIGKILL.
    kill_timeout: float = attrs.field(
        default=KILL_TIMEOUT, converter=float, validator=_positive_finite
    )
    #: After stdin EOF on close, how long the CLI may take to exit before the ladder.
    exit_timeout: float = attrs.field(default=3.0, converter=float, validator=_positive_finite)
    #: After a respawn, how long the resumed CLI may take to answer its first control
    #: request. Resuming a very large transcript can take minutes, hence the generous value.
    ready_timeout: float = attrs.field(default=60.0, converter=float, validator=_positive_finite)
    #: After a turn is sent to the CLI, how long it may stay silent (not a single frame)
    #: before the turn counts as never started and is cancelled through the ladder. The
    #: real CLI prints `system/init` within about a second of a user frame; the margin is
    #: for slow machines and for MCP servers the CLI starts with its first turn.
    start_timeout: float = attrs.field(default=60.0, converter=float, validator=_positive_finite)
    #: After the in-band interrupt, how long the CLI may take to acknowledge it (its
    #: `control_response`) before the ladder skips SIGINT and kills the tree: SIGINT is
    #: handled on the same event loop as the interrupt, so a CLI that cannot answer the
    #: one will not act on the other. Measured on 2.1.328 on a loaded 2-core machine:
    #: median 5 ms, worst 33 ms (docs/configuration.md). A value not shorter than
    #: `interrupt_timeout` turns the shortcut off (a stopped CLI is still killed at once).
    interrupt_ack_timeout: float = attrs.field(
        default=0.5, converter=float, validator=_positive_finite
    )
    #: The stall watchdog (None: off): cancel the running turn when the CLI has written
    #: nothing for this long while no tool call is running.
    stall_timeout: float | None = attrs.field(
        default=None, converter=_float_or_none, validator=_optional_seconds
    )
    #: The turn timeout (None: off): cancel a turn that has run this long, tools included.
    turn_timeout: float | None = attrs.field(
        default=None, converter=_float_or_none, validator=_optional_seconds
    )

    #: How long SIGKILLed processes may take to disappear before the supervisor gives up
    #: on the tree (a process stuck in the kernel, e.g. on a dead NFS mount).
    @property
    def reap_timeout(self) -> float:
        return self.kill_timeout + REAP_GRACE
