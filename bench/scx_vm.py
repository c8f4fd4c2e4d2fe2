#!/usr/bin/env python3
"""schedcp's sched_ext schedulers vs EEVDF, side by side in the micro-VM.

    python bench/scx_vm.py [--reps 3] [--seconds 3] [--arms eevdf,vtime,latency] [--json]

One guest boot runs every arm ``--reps`` times, in a rotating order (so no
arm always runs first or last).  Each run is the same two workloads:

- msglat (schedcp_bench/native/msglat.c, a schbench-like message/worker
  wake-up latency benchmark): wake-up p50/p99 and round p99 latency,
  requests per second -- alone, then again beside two CPU hogs (``hogs_*``);
- hackbench (Debian rt-tests, process mode, pipes): completion time.

EEVDF runs them with no BPF scheduler; the other arms attach the project's
scheduler with the static loader, run the same command under it, detach.
Under TCG (no usable KVM) every timing is emulated: absolute numbers mean
little, so the report gives medians per arm and **ratios to EEVDF** only
(latency and time: arm / EEVDF, lower is better; throughput: arm / EEVDF,
higher is better).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.scheduler.microvm import MicroVM, job

ARMS: dict[str, tuple[str, dict[str, int]] | None] = {
    "eevdf": None,
    "vtime": ("vtime", {"slice_us": 5000}),
    "vtime-short": ("vtime", {"slice_us": 1000}),
    "latency": ("latency", {}),
    "latency-nopreempt": ("latency", {"preempt": 0}),
    "ljf": ("latency", {"ljf": 1}),
}
HOGS_MARK = "--- beside 2 CPU hogs ---"
_LAT_KEYS = ("wake_p50_us", "wake_p99_us", "round_p99_us")
LOWER_BETTER = (*_LAT_KEYS, *(f"hogs_{k}" for k in _LAT_KEYS), "hackbench_s")
HIGHER_BETTER = ("rps", "hogs_rps")


def workload(seconds: int, msglat: bool) -> list[str]:
    """The command every arm runs: the latency program alone, beside 2 CPU hogs, hackbench."""
    lat = (f"/bin/msglat -m 2 -t 2 -r {seconds} -w 1 -s 100 -S 500" if msglat
           else f"/bin/scx_workload {seconds} 0 2 1000")
    hog = "sh -c 'while :; do :; done' &"
    return ["/bin/sh", "-c", f"{lat}; {hog} h1=$!; {hog} h2=$!; echo '{HOGS_MARK}'; {lat}; "
            f"kill $h1 $h2; /bin/hackbench -g 4 -l 200 -s 100"]


def parse(lines: list[str]) -> dict[str, float]:
    """Metrics from one run's output lines."""
    out: dict[str, float] = {}
    prefix = ""
    for line in lines:
        if line.strip() == HOGS_MARK:
            prefix = "hogs_"
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            for key in ("wake_p50_us", "wake_p99_us", "round_p99_us", "rps"):
                if isinstance(data.get(key), (int, float)):
                    out[prefix + key] = float(data[key])
        match = re.match(r"Time:\s*([\d.]+)", line)
        if match:
            out["hackbench_s"] = float(match.group(1))
    return out


def script(arms: list[str], reps: int, seconds: int,
           vm: MicroVM) -> tuple[str, list[tuple[str, str]]]:
    """The guest job and the (step, arm) order it runs in."""
    msglat = vm.has_binary("msglat")
    text, order = "", []
    for rep in range(reps):
        rotated = arms[rep % len(arms):] + arms[:rep % len(arms)]
        for arm in rotated:
            step = f"{arm}-{rep}"
            spec = ARMS[arm]
            if spec is None:
                text += job.command(step, workload(seconds, msglat))
            else:
                name, params = spec
                text += job.loader(step, vm.object(name), params, timeout_s=seconds * 10 + 60,
                                   command=workload(seconds, msglat))
            order.append((step, arm))
    return text, order


def run(arms: list[str], reps: int, seconds: int) -> dict[str, Any]:
    """Boot once, run everything, return per-arm medians and ratios to EEVDF."""
    vm = MicroVM().prepare()
    text, order = script(arms, reps, seconds, vm)
    started = time.time()
    result = vm.run(text, timeout=120 + reps * len(arms) * (seconds * 12 + 40))
    if result.problem():
        raise SystemExit(f"guest failed: {result.problem()}")
    samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    problems = []
    for step, arm in order:
        if ARMS[arm] is None:
            lines = result.output.get(step, [])
        else:
            lines = [str(e.get("line", "")) for e in result.step(step)
                     if e.get("event") == "workload"]
            attached = result.first(step, "attached")
            detached = result.first(step, "detached")
            if attached is None or attached.get("state") != "enabled" or \
                    detached is None or detached.get("ejected"):
                problems.append(f"{step}: {attached} {detached}")
        metrics = parse(lines)
        if metrics:
            samples[arm].append(metrics)
        else:
            problems.append(f"{step}: no metrics in {lines[-3:]}")
    medians = {arm: {k: statistics.median(s[k] for s in runs if k in s)
                     for k in (*LOWER_BETTER, *HIGHER_BETTER) if any(k in s for s in runs)}
               for arm, runs in samples.items() if runs}
    base = medians.get("eevdf", {})
    ratios = {arm: {k: round(v / base[k], 3) for k, v in m.items() if base.get(k)}
              for arm, m in medians.items() if arm != "eevdf"}
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "kernel": result.kernel, "accel": result.accel,
        "timing": "emulated (TCG): compare ratios only" if result.accel == "tcg" else "KVM",
        "workload": {"latency": "msglat" if vm.has_binary("msglat") else
                     "scx_workload (msglat.c not built)", "hackbench": "-g 4 -l 200 -s 100",
                     "seconds": seconds},
        "reps": reps, "runs": {arm: len(v) for arm, v in samples.items()},
        "medians": medians, "ratio_to_eevdf": ratios, "problems": problems,
        "guest_seconds": result.seconds,
    }


def table(report: dict[str, Any]) -> str:
    """The report as a text table of ratios (arm / EEVDF)."""
    keys = [*LOWER_BETTER, *HIGHER_BETTER]
    lines = [f"sched_ext in the micro-VM, kernel {report['kernel']}, {report['accel']} "
             f"({report['timing']}), {report['reps']} alternating reps, {report['date']}",
             "ratio arm / EEVDF (latency, time: lower is better; rps: higher is better)",
             f"{'metric':<20}" + "".join(f"{arm:>12}" for arm in report["ratio_to_eevdf"])]
    for k in keys:
        lines.append(f"{k:<20}" + "".join(
            f"{r[k]:>12.2f}" if k in r else f"{'-':>12}"
            for r in report["ratio_to_eevdf"].values()))
    if report["problems"]:
        lines.append("problems: " + "; ".join(report["problems"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--arms", default="eevdf,vtime,vtime-short,latency")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "eevdf" not in arms:
        parser.error(f"arms must include eevdf; known: {', '.join(ARMS)}")
    report = run(arms, args.reps, args.seconds)
    print(json.dumps(report, indent=1) if args.json else table(report))


if __name__ == "__main__":
    main()
