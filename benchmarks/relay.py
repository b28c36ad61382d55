"""Relay: what the `claude-supervisor` executable costs between a parent and the CLI.

Both sides run benchmarks/flood_cli.py, a stand-in CLI that writes stream-json as fast
as the pipe takes it: the baseline is a direct pipe to it, the subject the same CLI
under `claude-supervisor`. Trials alternate between the two. Measured here, with one
reader for both: throughput of floods of ~200-byte frames and of 1 MB frames, the
latency each frame of a 1 kHz stream gains (the CLI stamps each frame with
CLOCK_MONOTONIC when it writes it; the reader stamps it on arrival), a one-frame echo
round trip, and the wrapper's peak resident memory (VmHWM) over all the bursts.

The wrapper asks for a 1 MiB pipe to its parent (`_process.widen_pipe`), where a direct
pipe keeps the kernel's 64 KiB: the floods are also run on a direct pipe widened the
same way, so that what the relay costs can be told from what the wider pipe gains.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from .common import (
    STREAM_ARGS,
    Json,
    Progress,
    bench_env,
    clean_up,
    comparison,
    group_arguments,
    interleaved,
    ms_since,
    now_ns,
    quantile,
    summary,
    write_group,
)

FLOOD_CLI = Path(__file__).resolve().parent / "flood_cli.py"
WIDE = "direct pipe, 1 MiB"
WIDE_BYTES = 1 << 20  # what the wrapper asks for its own pipe to the parent


def wrapper_command() -> list[str]:
    """The installed executable, next to this interpreter (as a user runs it)."""
    exe = Path(sys.executable).parent / "claude-supervisor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "supervisor"]


class Pipe:
    """A stream-json process on pipes, read in big chunks; each line stamped on arrival."""

    def __init__(
        self, command: list[str], env: dict[str, str], cwd: Path | None = None, widen: int = 0
    ) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env, cwd=cwd
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        if widen:
            fcntl.fcntl(self._out, fcntl.F_SETPIPE_SZ, widen)
        self._buffer = b""
        self._at = 0  # where the next line starts in `_buffer` (slicing it off per line
        # would make the reader quadratic in the read's size, and the reader the bottleneck)
        self._stamp = 0

    def send(self, text: str) -> int:
        return self.write({"type": "user", "message": {"role": "user", "content": text}})

    def write(self, frame: Json) -> int:
        """Writes one frame; returns the time just before the write."""
        data = json.dumps(frame).encode() + b"\n"
        start = now_ns()
        os.write(self._in, data)
        return start

    def until(self, wanted: Callable[[Json], bool]) -> tuple[int, Json]:
        """Reads frames until one is `wanted`: (its arrival time, the frame)."""
        while True:
            newline = self._buffer.find(b"\n", self._at)
            if newline < 0:
                chunk = os.read(self._out, 1 << 20)
                self._stamp = now_ns()
                if not chunk:
                    raise RuntimeError("the CLI's output ended before the frame awaited")
                self._buffer, self._at = self._buffer[self._at :] + chunk, 0
                continue
            raw, self._at = self._buffer[self._at : newline + 1], newline + 1
            frame = json.loads(raw)
            if isinstance(frame, dict) and wanted(frame):
                return self._stamp, frame

    def turn(self, on_line: Callable[[bytes, int], None] | None = None) -> tuple[int, int, int]:
        """Reads until the turn's result: (result arrival ns, bytes, lines) of the turn."""
        total = lines = 0
        while True:
            newline = self._buffer.find(b"\n", self._at)
            if newline < 0:
                chunk = os.read(self._out, 1 << 20)
                stamp = now_ns()
                if not chunk:
                    raise RuntimeError("the CLI's output ended before the result")
                self._buffer, self._at = self._buffer[self._at :] + chunk, 0
                self._stamp = stamp
                continue
            raw, self._at = self._buffer[self._at : newline + 1], newline + 1
            total += len(raw)
            lines += 1
            if on_line is not None:
                on_line(raw, self._stamp)
            if len(raw) < 4096 and b"result" in raw:
                frame = json.loads(raw)
                if frame.get("type") == "result":
                    return self._stamp, total, lines

    def peak_rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), in MB."""
        for text in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if text.startswith("VmHWM:"):
                return int(text.split()[1]) / 1024
        return float("nan")

    def rss_mb(self) -> float:
        for text in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if text.startswith("VmRSS:"):
                return int(text.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def flood_trial(pipe: Pipe, size: int, count: int) -> tuple[float, float]:
    """(MB/s, frames/s) of one flood turn, from the user frame written to the result."""
    start = pipe.send(f"flood {size} {count}")
    end, total, lines = pipe.turn()
    seconds = (end - start) / 1e9
    return total / seconds / 1e6, lines / seconds


def pace_trial(pipe: Pipe, count: int) -> list[float]:
    """Per-frame latency (µs) of a 1 kHz stream: written by the CLI to read here."""
    latencies: list[float] = []

    def on_line(raw: bytes, stamp: int) -> None:
        if b'"tick"' in raw:
            sent = json.loads(raw)["t"]
            latencies.append((stamp - sent) / 1000)

    pipe.send(f"pace {count} 1000")
    pipe.turn(on_line)
    return latencies


def echo_trial(pipe: Pipe) -> float:
    start = pipe.send("echo")
    end, _total, _lines = pipe.turn()
    return ms_since(start, end)


def main() -> None:
    options = group_arguments(__doc__.split("\n\n")[0] if __doc__ else None)
    progress = Progress("relay")
    quick = options.quick
    small_count = 20_000 if quick else 100_000
    big_count = 100 if quick else 200
    paced = 1000 if quick else 2000
    trials = 3 if quick else 5
    echoes = 100 if quick else 500
    token = uuid.uuid4().hex
    env = bench_env(token)
    comparisons: list[Json] = []
    series: Json = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        shim = Path(tmp) / "claude"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FLOOD_CLI}" "$@"\n')
        shim.chmod(0o755)
        pipes = {
            "direct pipe": Pipe([str(shim), *STREAM_ARGS], env),
            "claude-supervisor": Pipe(
                [*wrapper_command(), "--claude", str(shim), "--", *STREAM_ARGS], env
            ),
        }
        try:
            for pipe in pipes.values():
                echo_trial(pipe)  # started and answering
            idle_rss = pipes["claude-supervisor"].rss_mb()
            wide = Pipe([str(shim), *STREAM_ARGS], env, widen=WIDE_BYTES)
            echo_trial(wide)
            floods = {**pipes, WIDE: wide}

            for label, size, count, minimum in (
                ("small-frame flood (~200 B)", 200, small_count, 0.5),
                ("1 MB frames", 1 << 20, big_count, 0.8),
            ):
                rates: dict[str, list[float]] = {name: [] for name in floods}
                frames: dict[str, list[float]] = {name: [] for name in floods}
                steps = list(interleaved(list(floods), trials))
                for done, (_round, name, warmup) in enumerate(steps, 1):
                    progress.trial(f"{label} via {name}", done, len(steps))
                    mbps, fps = flood_trial(floods[name], size, count)
                    if not warmup:
                        rates[name].append(mbps)
                        frames[name].append(fps)
                base = summary("direct pipe", rates["direct pipe"])
                subject = summary("claude-supervisor", rates["claude-supervisor"])
                share = subject["median"] / base["median"]
                comp = comparison(
                    f"relay throughput, {label}",
                    "MB/s",
                    base,
                    subject,
                    target=f">= {minimum:.0%} of a direct pipe",
                    met=share >= minimum,
                    value=f"{share:.1%} of a direct pipe",
                    note=f"frames/s: direct {quantile(frames['direct pipe'], 0.5):.0f}, "
                    f"wrapper {quantile(frames['claude-supervisor'], 0.5):.0f}",
                )
                progress.result(comp)
                comparisons.append(comp)
                wide_base = summary(WIDE, rates[WIDE])
                comp = comparison(
                    f"relay throughput, {label}, against a pipe as wide as the wrapper's",
                    "MB/s",
                    wide_base,
                    subject,
                    value=f"{subject['median'] / wide_base['median']:.1%} of a 1 MiB pipe",
                )
                progress.result(comp)
                comparisons.append(comp)
            wide.close()

            latency: dict[str, list[float]] = {name: [] for name in pipes}
            steps = list(interleaved(list(pipes), max(2, trials - 2)))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                progress.trial(f"1 kHz stream via {name}", done, len(steps))
                samples = pace_trial(pipes[name], paced)
                if not warmup:
                    latency[name].extend(samples)
            base = summary("direct pipe", latency["direct pipe"], keep=False)
            subject = summary("claude-supervisor", latency["claude-supervisor"], keep=False)
            added_p50 = subject["median"] - base["median"]
            added_p99 = subject["p99"] - base["p99"]
            comp = comparison(
                "per-frame latency, 1 kHz stream",
                "µs",
                base,
                subject,
                target="p99 added latency < 200 µs",
                met=added_p99 < 200,
                value=f"added p50 {added_p50:.0f} µs, p99 {added_p99:.0f} µs",
            )
            progress.result(comp)
            comparisons.append(comp)
            series["paced_latency_us"] = {
                name: [round(v, 1) for v in values] for name, values in latency.items()
            }

            rtts: dict[str, list[float]] = {name: [] for name in pipes}
            steps = list(interleaved(list(pipes), echoes, warmup=5))
            for done, (_round, name, warmup) in enumerate(steps, 1):
                if done % 50 == 0 or done == len(steps):
                    progress.trial("echo round trips", done, len(steps))
                rtt = echo_trial(pipes[name])
                if not warmup:
                    rtts[name].append(rtt)
            base = summary("direct pipe", rtts["direct pipe"])
            subject = summary("claude-supervisor", rtts["claude-supervisor"])
            comp = comparison(
                "echo round trip (one frame in, result out)",
                "ms",
                base,
                subject,
                target="within 2x of a direct pipe",
                met=subject["median"] <= 2 * base["median"],
                value=f"{subject['median'] / base['median']:.1f}x",
            )
            progress.result(comp)
            comparisons.append(comp)

            peak = pipes["claude-supervisor"].peak_rss_mb()
            series["wrapper_memory_mb"] = {"idle_rss": idle_rss, "peak_rss": peak}
            progress.say(f"  wrapper RSS: {idle_rss:.1f} MB idle, peak {peak:.1f} MB (VmHWM)")
        finally:
            for pipe in pipes.values():
                pipe.close()
            clean_up(token, progress)
    write_group(options.out, "relay", comparisons, series)


if __name__ == "__main__":
    main()
