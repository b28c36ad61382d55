"""Runs every benchmark group, merges their results, renders the page. See benchmarks/README.md.

    python -m benchmarks.run [--quick] [--only GROUP,...]

A full run writes benchmarks/results/latest.json and docs/benchmarks.md with its plots
in docs/benchmarks/; a quick run writes benchmarks/results/quick.json, quick.md and
quick/ (git-ignored), so that the committed page always shows a full run. With
--only, the other groups' results of the previous run of the same kind are kept. Each group
runs in its own process, so that one group's memory, subreaper status or leftovers
cannot colour another's numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .common import ROOT, Json
from .render import render, targets

GROUPS = ["startup", "relay", "cancel", "treekill", "sessions"]
ABOUT = {
    "cancel": "Real CLI 2.1.328 (pinned) on loopback against `FakeMessagesAPI`; a long Bash "
    "tool call is cancelled. The bare CLI is ready when its `result` arrives; the wrapper when "
    "its `supervisor_cancel` frame arrives, the library when `cancel()` returns. The kill rows "
    "stop the CLI with SIGSTOP so that only the kill rung can end the turn (asserted from "
    "each report's `path`), against a bridge that kills the CLI's process group and respawns it "
    "with `--resume` (ready: the new CLI answers `initialize`). The tool leaves a `setsid` "
    "escapee; what each side leaves running is counted.",
    "relay": "`benchmarks/flood_cli.py` (a stand-in CLI that writes as fast as the pipe "
    "takes) read directly, against the same through `claude-supervisor`. Latency: the CLI "
    "stamps each frame of a 1 kHz stream with CLOCK_MONOTONIC; the reader stamps its arrival.",
    "startup": "From before the process is started to the `initialize` answer (the request "
    "is written at once), and to `system/init` (printed after the first user frame).",
    "treekill": "`benchmarks/tree_cli.py`: N processes, half nested in chains, half `setsid` "
    "escapees; every tenth ignores SIGTERM. The supervisor's per-session helper (SIGTERM to it: "
    "it kills the whole tree, then reports) against `killpg` of the CLI's group, both with a "
    "100 ms SIGTERM-to-SIGKILL grace.",
    "sessions": "N library sessions in one process on `python -m supervisor.testing.fake_claude`. "
    "Memory per session: the host's USS growth plus every helper's USS, divided by N (the CLI "
    "processes excluded). Cancels are in-band (asserted).",
}


def cli_version() -> str:
    try:
        from supervisor.testing.claude_install import ensure_claude

        out = subprocess.run(
            [str(ensure_claude()), "--version"], capture_output=True, text=True, timeout=60
        )
        return out.stdout.strip() or "unknown"
    except Exception as exc:  # the machine table must not stop the run
        return f"unavailable ({exc})"


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    commit = out.stdout.strip() or "unknown"
    return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine() -> Json:
    load = [round(x, 2) for x in os.getloadavg()]
    cores = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "memory_gb": psutil.virtual_memory().total / 1e9,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cli_version": cli_version(),
        "supervisor_commit": git_commit(),
        "load_start": load,
        "loaded": load[0] > cores * 0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer trials: a few minutes")
    parser.add_argument("--only", default="", help=f"comma-separated groups of {GROUPS}")
    options = parser.parse_args()
    chosen = [g for g in options.only.split(",") if g] or GROUPS
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; choose from {GROUPS}")
    results_dir = ROOT / "benchmarks" / "results"
    if options.quick:
        out, page, plots = (
            results_dir / "quick.json",
            results_dir / "quick.md",
            results_dir / "quick",
        )
    else:
        out, page, plots = (
            results_dir / "latest.json",
            ROOT / "docs" / "benchmarks.md",
            (ROOT / "docs" / "benchmarks"),
        )
    started = time.monotonic()
    data: Json = {
        "quick": options.quick,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "results_file": str(out.relative_to(ROOT)),
        "groups": [],
    }
    print(f"benchmarks: {'quick' if options.quick else 'full'} run of {', '.join(chosen)}; "
          f"load average {data['machine']['load_start']}", file=sys.stderr, flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for index, group in enumerate(chosen, 1):
            print(f"\n=== benchmark group {index}/{len(chosen)}: {group} ===", file=sys.stderr,
                  flush=True)  # fmt: skip
            partial = Path(tmp) / f"{group}.json"
            group_started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            group_load = [round(x, 2) for x in os.getloadavg()]
            command = [sys.executable, "-m", f"benchmarks.{group}", "--out", str(partial)]
            if options.quick:
                command.append("--quick")
            code = subprocess.run(command, cwd=ROOT).returncode
            if code != 0 or not partial.exists():
                result = {"group": group, "error": f"the run failed (exit {code})"}
            else:
                result = json.loads(partial.read_text())
                result["about"] = ABOUT.get(group)
            result["started"] = group_started
            result["load_start"] = group_load
            data["groups"].append(result)
    data["duration_s"] = time.monotonic() - started
    data["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    if options.only and out.exists():
        # Some groups re-run: keep the others' results from the previous run of this kind.
        previous = json.loads(out.read_text())
        fresh = {g["group"]: g for g in data["groups"]}
        data["groups"] = [fresh.pop(g["group"], g) for g in previous.get("groups", [])]
        data["groups"] += list(fresh.values())
        data["partial_rerun"] = chosen
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    render(data, page, plots)
    print(f"\nwrote {out.relative_to(ROOT)} and {page.relative_to(ROOT)}", file=sys.stderr)
    print("\nTargets:", file=sys.stderr)
    for comp in targets(data):
        verdict = {True: "met", False: "MISSED", None: "n/a"}[comp["met"]]
        print(f"  {comp['name']}\n    {comp['target']}: {comp['measured']} -> {verdict}",
              file=sys.stderr)  # fmt: skip
    failed = [g["group"] for g in data["groups"] if g.get("error")]
    if failed:
        print(f"\nfailed groups: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
