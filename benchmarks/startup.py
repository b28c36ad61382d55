"""Start-up: the real CLI bare against the same CLI under `claude-supervisor`.

Each trial starts a process (alternating bare and wrapped, same HOME, warmed up by a
dropped first round), writes an `initialize` control request at once, and stamps the
arrival of its `control_response` (the CLI reads its input) and, after a first user
frame, of `system/init` (the CLI printed it only then). Both from the moment before the
process is started. The CLI talks to the fake Messages API on loopback. Also
`claude-supervisor --help` against `python -c pass`: the floor of any Python program.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from supervisor.testing import STREAM_JSON_ARGS
from supervisor.testing.claude_install import ensure_claude
from supervisor.testing.fake_api import FakeMessagesAPI

from .common import (
    TOKEN_VARIABLE,
    Json,
    Progress,
    clean_up,
    comparison,
    group_arguments,
    interleaved,
    ms_since,
    now_ns,
    summary,
    write_group,
)
from .relay import Pipe, wrapper_command

INITIALIZE = {
    "type": "control_request",
    "request_id": "bench-init",
    "request": {"subtype": "initialize", "hooks": None},
}


def start_trial(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(ms to the initialize answer, ms to system/init) from before the process start."""
    start = now_ns()
    pipe = Pipe(command, env, cwd)
    try:
        pipe.write(INITIALIZE)
        answered, _ = pipe.until(lambda f: f.get("type") == "control_response")
        pipe.send("hello")
        init, _ = pipe.until(lambda f: f.get("type") == "system" and f.get("subtype") == "init")
        pipe.until(lambda f: f.get("type") == "result")
    finally:
        pipe.close()
    return ms_since(start, answered), ms_since(start, init)


def run_trial(command: list[str]) -> float:
    start = now_ns()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return ms_since(start)


def main() -> None:
    options = group_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    progress = Progress("startup")
    trials = 4 if options.quick else 12
    token = uuid.uuid4().hex
    claude = str(ensure_claude())
    comparisons: list[Json] = []
    series: Json = {}
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp, FakeMessagesAPI() as api:
        root = Path(tmp)
        (root / "home").mkdir()
        (root / "work").mkdir()
        env = api.env(root / "home", **{TOKEN_VARIABLE: token})
        args = list(STREAM_JSON_ARGS)
        commands = {
            "bare CLI": [claude, *args],
            "claude-supervisor": [*wrapper_command(), "--claude", claude, "--", *args],
        }
        try:
            answers: dict[str, list[float]] = {name: [] for name in commands}
            inits: dict[str, list[float]] = {name: [] for name in commands}
            steps = list(interleaved(list(commands), trials))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                progress.trial(f"start-up, {name}", done, len(steps))
                answer, init = start_trial(commands[name], env, root / "work")
                if not warmup:
                    answers[name].append(answer)
                    inits[name].append(init)
            for label, samples in (
                ("initialize answered", answers),
                ("system/init (after the first user frame)", inits),
            ):
                base = summary("bare CLI", samples["bare CLI"])
                subject = summary("claude-supervisor", samples["claude-supervisor"])
                added = subject["median"] - base["median"]
                comp = comparison(
                    f"start-up to {label}",
                    "ms",
                    base,
                    subject,
                    target="within +50 ms of the bare CLI",
                    met=added <= 50,
                    value=f"+{added:.0f} ms",
                )
                progress.result(comp)
                comparisons.append(comp)

            runs: dict[str, list[float]] = {"python -c pass": [], "claude-supervisor --help": []}
            programs = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "claude-supervisor --help": [*wrapper_command(), "--help"],
            }
            steps = list(interleaved(list(programs), trials * 3))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                if done % 10 == 0 or done == len(steps):
                    progress.trial("--help vs python -c pass", done, len(steps))
                elapsed = run_trial(programs[name])
                if not warmup:
                    runs[name].append(elapsed)
            comp = comparison(
                "process start to exit",
                "ms",
                summary("python -c pass", runs["python -c pass"]),
                summary("claude-supervisor --help", runs["claude-supervisor --help"]),
            )
            progress.result(comp)
            comparisons.append(comp)
        finally:
            clean_up(token, progress)
    write_group(options.out, "startup", comparisons, series)


if __name__ == "__main__":
    main()
