"""How long a tree being killed is given: the deadlines the hub needs, standard library only.

A module of their own because the executable reads them before it imports attrs (its
early start, `_cli.early_start`), and the hub without it; `_policy` is where they are
used and explained with the rest of the ladder.
"""

from __future__ import annotations

#: After SIGTERM to every process of the tree, how long before SIGKILL
#: (`EscalationPolicy.kill_timeout`'s default).
KILL_TIMEOUT = 1.0

#: The one owner of the "grace after the kill" (every other such delay derives from it):
#: how long, after `kill_timeout`, SIGKILLed processes may take to disappear before the
#: supervisor gives up on the tree (a process stuck in the kernel, e.g. on a dead NFS
#: mount).
REAP_GRACE = 5.0

#: The helper's own kill rounds stop this much earlier (one second under `REAP_GRACE`),
#: so that its report reaches the session before the session gives up waiting.
TREE_GRACE = REAP_GRACE - 1.0
