"""What every benchmark group shares: statistics, comparisons, progress, clean-up.

Each group runs in its own process (``python -m benchmarks.<group>``) and writes one JSON
document; ``benchmarks.run`` merges them into ``benchmarks/results/latest.json``. Timers
are ``time.perf_counter_ns`` in the measuring process only: nothing under test is asked
how long it took.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
STREAM_ARGS = ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
#: Every process a benchmark starts carries this variable (set to a per-run token), so
#: leftovers are found by it, never by name.
TOKEN_VARIABLE = "CLAUDE_SUPERVISOR_BENCH_TOKEN"

Json = dict[str, Any]


def now_ns() -> int:
    return time.perf_counter_ns()


def ms_since(start_ns: int, end_ns: int | None = None) -> float:
    return ((end_ns if end_ns is not None else now_ns()) - start_ns) / 1e6


# ---------------------------------------------------------------------- statistics


def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation (q=0.5: the median)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(label: str, samples: Sequence[float], *, keep: bool = True) -> Json:
    """Median, p90 and p99 of one side of a comparison (and the samples, for plots)."""
    out: Json = {
        "label": label,
        "n": len(samples),
        "median": quantile(samples, 0.5),
        "p90": quantile(samples, 0.9),
        "p99": quantile(samples, 0.99),
        "min": min(samples) if samples else math.nan,
        "max": max(samples) if samples else math.nan,
    }
    if keep:
        out["samples"] = [round(s, 4) for s in samples]
    return out


def comparison(
    name: str,
    unit: str,
    baseline: Json,
    subject: Json,
    *,
    target: str | None = None,
    met: bool | None = None,
    value: str | None = None,
    note: str | None = None,
) -> Json:
    """One A/B comparison. `ratio` is subject median / baseline median."""
    base = baseline["median"]
    ratio = subject["median"] / base if base and not math.isnan(base) else math.nan
    return {
        "name": name,
        "unit": unit,
        "baseline": baseline,
        "subject": subject,
        "ratio": ratio,
        "target": target,
        "met": met,
        "measured": value,
        "note": note,
    }


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


# ------------------------------------------------------------------------ progress


class Progress:
    """One line per step on stderr: which benchmark, how many trials are left."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{self.group} {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def trial(self, what: str, done: int, total: int) -> None:
        self.say(f"{what}: trial {done}/{total} ({total - done} left)")

    def result(self, comp: Json) -> None:
        unit = comp["unit"]
        a, b = comp["baseline"], comp["subject"]
        line = (
            f"  {comp['name']}: {a['label']} {fmt(a['median'], unit)} (p90 {fmt(a['p90'], unit)})"
            f" | {b['label']} {fmt(b['median'], unit)} (p90 {fmt(b['p90'], unit)})"
            f" | ratio {comp['ratio']:.2f}"
        )
        if comp["target"]:
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[comp["met"]]
            line += f"\n    target: {comp['target']}: {comp['measured']} -> {verdict}"
        if comp["note"]:
            line += f"\n    ({comp['note']})"
        self.say(line)


def interleaved(
    variants: Sequence[str], trials: int, warmup: int = 1
) -> Iterable[tuple[int, str, bool]]:
    """(round, variant, is_warmup) in A, B, A, B... order; the first rounds are dropped."""
    for round_no in range(warmup + trials):
        for variant in variants:
            yield round_no, variant, round_no < warmup


# ------------------------------------------------------------------------ processes


def bench_env(token: str, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env[TOKEN_VARIABLE] = token
    return env


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def with_token(token: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Live processes carrying this run's token (ours excluded)."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(TOKEN_VARIABLE) == token and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_all(procs: Iterable[psutil.Process]) -> int:
    """SIGKILL these processes (psutil checks their creation time: no pid reuse)."""
    killed = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
            killed.append(proc)
    psutil.wait_procs(killed, timeout=5)
    reap_children()
    return len(killed)


def reap_children() -> None:
    """Reap exited children of this process (orphans adopted as a subreaper included)."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def clean_up(token: str, progress: Progress) -> None:
    """Never leave a process behind: kill whatever still carries the token."""
    leftovers = with_token(token)
    if leftovers:
        progress.say(f"cleaning up {len(leftovers)} leftover process(es)")
        kill_all(leftovers)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# ----------------------------------------------------------------------- group CLI


def group_arguments(description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer trials, smaller N")
    parser.add_argument("--out", type=Path, required=True, help="write the group's JSON here")
    return parser.parse_args()


def write_group(path: Path, group: str, comparisons: list[Json], series: Json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"group": group, "comparisons": comparisons, "series": series}))
