#!/usr/bin/env python3
"""schedcp's sched_ext schedulers vs EEVDF, side by side in the micro-VM.

    python bench/scx_vm.py [--reps 3] [--seconds 3] [--arms eevdf,vtime,latency] [--json]
    python bench/scx_vm.py --arms eevdf,latency,scxl:scxl-latency-hogs,derived:fork-churn

One guest boot runs every arm ``--reps`` times, in a rotating order (so no
arm always runs first or last).  Each run is the same two workloads:

- msglat (schedcp_bench/native/msglat.c, a schbench-like message/worker
  wake-up latency benchmark): wake-up p50/p99 and round p99 latency,
  requests per second -- alone, then again beside two CPU hogs (``hogs_*``);
- hackbench (Debian rt-tests, process mode, pipes): completion time.

EEVDF runs them with no BPF scheduler; the other arms attach the project's
scheduler with the static loader, run the same command under it, detach.
Besides the named arms below, ``scxl:<stem>`` runs the scheduler-language
policy policies/t2/<stem>.toml and ``derived:<shape>`` the program
derived by rules for a workload shape (docs/scheduler-language.md), both
compiled for the guest kernel first.
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

from plugins.scheduler import scx_policy
from plugins.scheduler.microvm import MicroVM, job
from plugins.scheduler.scxlang.derive import derive

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


ROOT = Path(__file__).resolve().parents[1]


def known(arm: str) -> bool:
    """Whether ``arm`` names a built-in arm, a language policy or a derivable shape."""
    if arm.startswith("scxl:"):
        return (ROOT / "policies" / "t2" / f"{arm[5:]}.toml").is_file()
    return arm.startswith("derived:") or arm in ARMS


def program_arm(arm: str, vm: MicroVM) -> tuple[str, dict[str, int], bytes]:
    """(guest object path, params, object bytes) of a scxl:/derived: arm."""
    if arm.startswith("scxl:"):
        import tomllib

        doc = tomllib.loads((ROOT / "policies" / "t2" / f"{arm[5:]}.toml").read_text())
    else:
        shape = arm.split(":", 1)[1]
        goal = {"fork-churn": "makespan", "long-tail-batch": "makespan",
                "cpu-batch": "throughput"}.get(shape, "latency")
        doc = derive(shape, goal).policy
    source, _ = scx_policy.source_of(doc)
    slug = re.sub(r"[^a-z0-9]+", "_", arm)
    return (f"/job/{slug}.bpf.o", dict(doc["scx"].get("params", {})),
            vm.compile(source, slug).read_bytes())


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
           vm: MicroVM) -> tuple[str, list[tuple[str, str]], dict[str, Path | bytes]]:
    """The guest job, the (step, arm) order it runs in, and the files it needs."""
    msglat = vm.has_binary("msglat")
    text, order = "", []
    files: dict[str, Path | bytes] = {}
    programs = {}
    for arm in arms:
        if arm not in ARMS:
            obj, params, data = program_arm(arm, vm)
            programs[arm] = (obj, params)
            files[obj.lstrip("/")] = data
    for rep in range(reps):
        rotated = arms[rep % len(arms):] + arms[:rep % len(arms)]
        for arm in rotated:
            step = f"{re.sub(r'[^A-Za-z0-9-]+', '-', arm)}-{rep}"
            spec = ARMS.get(arm)
            if arm in programs:
                obj, params = programs[arm]
                text += job.loader(step, obj, params, timeout_s=seconds * 10 + 60,
                                   command=workload(seconds, msglat))
            elif spec is None:
                text += job.command(step, workload(seconds, msglat))
            else:
                name, params = spec
                text += job.loader(step, vm.object(name), params, timeout_s=seconds * 10 + 60,
                                   command=workload(seconds, msglat))
            order.append((step, arm))
    return text, order, files


def run(arms: list[str], reps: int, seconds: int) -> dict[str, Any]:
    """Boot once, run everything, return per-arm medians and ratios to EEVDF."""
    vm = MicroVM().prepare()
    text, order, files = script(arms, reps, seconds, vm)
    started = time.time()
    result = vm.run(text, files, timeout=120 + reps * len(arms) * (seconds * 12 + 40))
    if result.problem():
        raise SystemExit(f"guest failed: {result.problem()}")
    samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    problems = []
    for step, arm in order:
        if arm == "eevdf":
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
    w = max([12, *(len(arm) + 2 for arm in report["ratio_to_eevdf"])])
    lines = [f"sched_ext in the micro-VM, kernel {report['kernel']}, {report['accel']} "
             f"({report['timing']}), {report['reps']} alternating reps, {report['date']}",
             "ratio arm / EEVDF (latency, time: lower is better; rps: higher is better)",
             f"{'metric':<20}" + "".join(f"{arm:>{w}}" for arm in report["ratio_to_eevdf"])]
    for k in keys:
        lines.append(f"{k:<20}" + "".join(
            f"{r[k]:>{w}.2f}" if k in r else f"{'-':>{w}}"
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
    unknown = [a for a in arms if not known(a)]
    if unknown or "eevdf" not in arms:
        parser.error(f"arms must include eevdf; known: {', '.join(ARMS)}")
    report = run(arms, args.reps, args.seconds)
    print(json.dumps(report, indent=1) if args.json else table(report))


if __name__ == "__main__":
    main()
