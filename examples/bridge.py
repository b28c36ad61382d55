"""A small multi-chat bridge: one Claude Code session per chat, over stdin and stdout.

Each line on stdin is `<chat>: <message>`, for example `chat-a: hello`; each answer is
printed as `<chat>: <answer>` once it comes. Chats run at once, at most `--max-active`
CLIs at a time; a chat whose CLI was closed (evicted, idle) is resumed on its next
message, with its history. `<chat>: /cancel` cancels the chat's running turn. At end of
input the bridge waits for every answer, then closes every CLI.

Run it with no account against the bundled fake CLI:

    printf 'a: hello\\nb: hi\\na: again\\n' | \\
        python examples/bridge.py --claude "python -m supervisor.testing.fake_claude"

(`--claude` takes a command line; the default is the `claude` on PATH.) With
`--store chats.db`, a restarted bridge resumes its chats.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import trio

import supervisor

CLAUDE_ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]


def say(line: str) -> None:
    print(line, flush=True)


def on_event(event: supervisor.PoolEvent) -> None:
    """What the operator should know: a chat that lost its history, a CLI that failed."""
    if isinstance(event, supervisor.TranscriptLost):
        print(f"{event.key}: (history lost; a new conversation starts)", file=sys.stderr)
    elif isinstance(event, supervisor.ChatFailed):
        print(f"{event.key}: (the CLI failed: {event.message})", file=sys.stderr)


async def deliver(key: str, turn: supervisor.Turn) -> None:
    result = await turn.result()
    text = str(result.get("result", "")).replace("\n", " ")
    say(f"{key}: {'(error) ' if result.get('is_error') else ''}{text}")


async def bridge(pool: supervisor.SessionPool, nursery: trio.Nursery) -> None:
    async for line in trio.wrap_file(sys.stdin):
        key, sep, message = line.rstrip("\n").partition(":")
        key, message = key.strip(), message.strip()
        if not sep or not key or not message:
            print(f"ignored (not `<chat>: <message>`): {line.rstrip()}", file=sys.stderr)
            continue
        if message == "/cancel":
            report = await pool.cancel(key)
            say(f"{key}: (cancelled: {report.path if report else 'nothing was running'})")
            continue
        try:
            turn = await pool.send(key, message)
        except supervisor.QueueFullError as exc:
            say(f"{key}: (not sent: {exc})")  # the sender is told; nothing is dropped quietly
            continue
        nursery.start_soon(deliver, key, turn)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claude", default=None, help="the CLI's command line")
    parser.add_argument("--max-active", type=int, default=4)
    parser.add_argument("--max-queued", type=int, default=10)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--store", default=None, help="a SQLite file to keep chats in")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        claude: Path | None = None
        if options.claude is not None and len(shlex.split(options.claude)) == 1:
            claude = Path(options.claude)
        elif options.claude is not None:
            # The pool runs one executable: wrap the command line in a tiny script.
            claude = Path(scratch) / "claude"
            claude.write_text(f'#!/bin/sh\nexec {options.claude} "$@"\n')
            claude.chmod(0o755)
        async with (
            supervisor.SessionPool(
                CLAUDE_ARGS,
                claude=claude,
                max_active=options.max_active,
                max_queued=options.max_queued,
                idle_timeout=options.idle_timeout,
                store=options.store,
                on_event=on_event,
            ) as pool,
            trio.open_nursery() as nursery,
        ):
            await bridge(pool, nursery)
        # The nursery waited for every answer; the pool then closed every CLI.


if __name__ == "__main__":
    trio.run(main)
