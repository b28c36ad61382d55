"""A tiny stand-in CLI for the relay benchmark: stream-json out as fast as a pipe takes it.

    python benchmarks/flood_cli.py [CLI ARGS...]      (the arguments are ignored)

Reads user frames on stdin; the text of each one is a command, answered by frames shaped
like the real CLI's (`system/init`, `assistant`, then one `result`):

``flood SIZE COUNT``   COUNT assistant lines of about SIZE bytes each, written in big batches
``pace COUNT USEC``    COUNT small assistant lines, one every USEC microseconds, each carrying
                       ``"t"``: time.perf_counter_ns() when it was written (CLOCK_MONOTONIC,
                       the same clock the measuring process reads)
``echo``               the result at once

A `control_request` gets a success `control_response` (the wrapper's readiness probe).
Standard library only, so that the CLI itself costs as little as possible.
"""

from __future__ import annotations

import json
import os
import sys
import time

SESSION = "00000000-0000-4000-8000-00000000bench"
BATCH = 256 * 1024


def line(frame: dict[str, object]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def assistant(text: str, **extra: object) -> dict[str, object]:
    return {
        "type": "assistant",
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        "session_id": SESSION,
        **extra,
    }


INIT = line({"type": "system", "subtype": "init", "session_id": SESSION, "tools": []})


def result(text: str) -> bytes:
    return line(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": text,
            "session_id": SESSION,
        }
    )


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(1, view)
        view = view[written:]


def flood(size: int, count: int) -> None:
    empty = len(line(assistant("")))
    one = line(assistant("x" * max(0, size - empty)))
    per_batch = max(1, BATCH // len(one))
    batch = one * per_batch
    left = count
    while left >= per_batch:
        write_all(batch)
        left -= per_batch
    if left:
        write_all(one * left)


def pace(count: int, interval_us: int) -> None:
    interval = interval_us * 1000
    next_at = time.perf_counter_ns()
    for index in range(count):
        wait = next_at - time.perf_counter_ns()
        if wait > 300_000:
            time.sleep((wait - 200_000) / 1e9)  # sleep most of the gap, spin the rest
        while time.perf_counter_ns() < next_at:
            pass
        write_all(line(assistant("tick", t=time.perf_counter_ns(), i=index)))
        next_at += interval


def main() -> int:
    for raw in sys.stdin.buffer:
        try:
            frame = json.loads(raw)
        except ValueError:
            continue
        if frame.get("type") == "control_request":
            answer = {"subtype": "success", "request_id": frame.get("request_id"), "response": {}}
            write_all(line({"type": "control_response", "response": answer}))
            continue
        if frame.get("type") != "user":
            continue
        content = frame.get("message", {}).get("content", "")
        words = str(content).split()
        write_all(INIT)
        if words[:1] == ["flood"]:
            flood(int(words[1]), int(words[2]))
        elif words[:1] == ["pace"]:
            pace(int(words[1]), int(words[2]))
        write_all(result("done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
