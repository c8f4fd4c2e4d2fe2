#!/usr/bin/env python3
"""Slowdown of a scheduler-heavy benchmark while a catalogue probe is attached.

Runs ``perf bench sched messaging`` repeatedly, alternating without and with
the probe (ABBA order, so slow drift of a shared machine hits both sides
alike), and reports the median times and their ratio.  The probe is attached
before and detached after each "with" run; perf times only its own work.

    sudo /opt/schedcp/venv/bin/python bench/probe_overhead.py --pairs 10

Goal (issue 4): the run-queue latency probe slows the benchmark by <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

# The checkout's code and its bpf/build objects, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schedcpd.probes import PROBES, ProbeSession, default_bpf_dir
from schedcpd.probes.catalogue import OBJECT_PREFIX

_TOTAL = re.compile(r"Total time:\s*([0-9.]+)")


CPU_TIMES: list[tuple[bool, float]] = []
"""(probe attached?, CPU seconds the benchmark used) for every run."""


def run_messaging(groups: int, loops: int, attached: bool | None = None) -> float:
    """perf's own wall time of one run; its CPU time goes to CPU_TIMES."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["perf", "bench", "sched", "messaging", "-g", str(groups), "-l", str(loops)],
        check=True, capture_output=True, text=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if attached is not None:
        # CPU time counts work, not waiting: less sensitive to other jobs.
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        CPU_TIMES.append((attached, cpu))
    match = _TOTAL.search(out)
    if not match:
        raise RuntimeError(f"no total time in perf output: {out!r}")
    return float(match.group(1))


def run_with_probe(name: str, bpf_dir: Path, groups: int, loops: int,
                   per_process: bool) -> tuple[float, dict[str, Any]]:
    with ProbeSession(PROBES[name], bpf_dir, per_process=per_process) as session:
        session.start()
        seconds = run_messaging(groups, loops, attached=True)
        session.stop()
        return seconds, session.read(top=3)


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def program_stats() -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of our loaded programs, from bpftool."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                         capture_output=True, text=True).stdout
    return {
        p["name"]: (int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0)))
        for p in json.loads(out)
        if p.get("name", "").startswith(OBJECT_PREFIX)
    }


def bpf_cost(name: str, bpf_dir: Path, groups: int, loops: int,
             per_process: bool) -> dict[str, Any]:
    """Time spent inside the probe's programs during one run (kernel BPF stats)."""
    saved = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        with ProbeSession(PROBES[name], bpf_dir, per_process=per_process) as session:
            session.start()
            seconds = run_messaging(groups, loops)
            stats = program_stats()
    finally:
        BPF_STATS.write_text(saved)
    runs = sum(c for c, _ in stats.values())
    busy_ns = sum(t for _, t in stats.values())
    return {
        "bench_seconds": seconds,
        "program_runs": runs,
        "ns_per_run": round(busy_ns / runs, 1) if runs else None,
        "bpf_cpu_seconds": round(busy_ns / 1e9, 4),
        # Share of the benchmark's CPU time (all CPUs busy) spent in the probe.
        "share_of_cpu_percent": round(busy_ns / (seconds * 1e9 * ncpus()) * 100, 3),
    }


def ncpus() -> int:
    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", default="runqlat", choices=sorted(PROBES))
    parser.add_argument("--pairs", type=int, default=10, help="with/without pairs")
    parser.add_argument("--groups", type=int, default=10, help="perf -g (40 tasks each)")
    parser.add_argument("--loops", type=int, default=300, help="perf -l")
    parser.add_argument("--no-per-process", action="store_true",
                        help="attach without the per-process table")
    parser.add_argument("--bpf-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    bpf_dir = args.bpf_dir or default_bpf_dir()

    run_messaging(args.groups, args.loops)  # warm-up, discarded
    without: list[float] = []
    with_probe: list[float] = []
    events = 0
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for attached in order:
            if attached:
                seconds, result = run_with_probe(
                    args.probe, bpf_dir, args.groups, args.loops, not args.no_per_process
                )
                events += int(result.get("count", result.get("switches",
                                                             result.get("intervals", 0))))
                with_probe.append(seconds)
            else:
                without.append(run_messaging(args.groups, args.loops, attached=False))
        if not args.json:
            print(f"pair {i + 1}: without {without[-1]:.3f} s, with {with_probe[-1]:.3f} s",
                  file=sys.stderr)

    med_without = statistics.median(without)
    med_with = statistics.median(with_probe)
    pair_ratios = [w / b for w, b in zip(with_probe, without, strict=True)]
    cpu_with = statistics.median(c for a, c in CPU_TIMES if a)
    cpu_without = statistics.median(c for a, c in CPU_TIMES if not a)
    report = {
        "benchmark": f"perf bench sched messaging -g {args.groups} -l {args.loops}",
        "probe": args.probe,
        "per_process": not args.no_per_process,
        "pairs": args.pairs,
        "median_without_s": round(med_without, 4),
        "median_with_s": round(med_with, 4),
        "ratio_of_medians": round(med_with / med_without, 4),
        "median_pair_ratio": round(statistics.median(pair_ratios), 4),
        "slowdown_percent": round((med_with / med_without - 1) * 100, 2),
        "median_cpu_without_s": round(cpu_without, 4),
        "median_cpu_with_s": round(cpu_with, 4),
        "cpu_ratio_of_medians": round(cpu_with / cpu_without, 4),
        "spread_without_s": [round(min(without), 3), round(max(without), 3)],
        "spread_with_s": [round(min(with_probe), 3), round(max(with_probe), 3)],
        "probe_events": events,
        "ncpus": ncpus(),
        "bpf_cost": bpf_cost(args.probe, bpf_dir, args.groups, args.loops,
                             not args.no_per_process),
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
