"""A hostile tool: a chain of processes, each forking the next link, which `setsid()`s
itself, while the link before it exits.

Run as a script: `fork_chain.py LINKS MARKER [stubborn]`. The first link writes MARKER
once it runs; the last link sleeps. With `stubborn`, every link ignores SIGTERM (and so
keeps forking while a kill waits for it to exit). At any moment only a link or two are
alive, and each is re-parented (to the nearest subreaper) as soon as its parent exits, so
a kill that lists the tree once and waits for that listing to be gone misses the links
forked after it.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(links: int, marker: str, stubborn: bool) -> None:
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    for _ in range(links):
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
    time.sleep(300)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["stubborn"])
