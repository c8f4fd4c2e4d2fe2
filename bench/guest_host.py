#!/usr/bin/env python3
"""How fast the sched_ext guest host comes up, and how much host memory it takes.

    python bench/guest_host.py [--boots 3] [--memory 1024] [--cpus 2] [--json]

Boots the guest host (plugins/scheduler/microvm/host.py) ``--boots`` times
with no job and reports, per boot and as medians: guest uptime when
schedcpd owned org.schedcp.Control1 (goal: <= 30 s under TCG), seconds
from starting qemu to that moment, the whole run, and qemu's peak RSS
(goal: <= 1.5 GB).  The host's load average is printed before and after:
on these shared 2-core hosts TCG timings move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.scheduler.microvm import host

GOAL_READY_S = 30.0
GOAL_RSS_MB = 1536.0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--memory", type=int, default=host.DEFAULT_MEMORY_MB)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    guest_host = host.GuestHost(cpus=args.cpus, memory_mb=args.memory).prepare()
    load_before = os.getloadavg()
    runs = []
    for _ in range(args.boots):
        info = host.summary(guest_host.run(timeout=600, boot_timeout=300))
        if info["error"]:
            print(f"boot failed: {info['problem']}", file=sys.stderr)
            return 1
        runs.append(info)
        if not args.json:
            print(f"boot->schedcpd {info['boot_to_schedcpd_s']:6.2f} s  "
                  f"qemu->schedcpd {info['qemu_start_to_schedcpd_s']:6.2f} s  "
                  f"run {info['run_s']:6.2f} s  qemu max RSS {info['qemu_max_rss_mb']:7.1f} MB "
                  f"({info['accel']})")
    keys = ("boot_to_schedcpd_s", "qemu_start_to_schedcpd_s", "run_s", "qemu_max_rss_mb")
    medians = {k: statistics.median(float(r[k]) for r in runs) for k in keys}
    report = {"boots": runs, "medians": medians, "memory_mb": args.memory, "cpus": args.cpus,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "goals_met": {"ready_s": max(float(r["boot_to_schedcpd_s"]) for r in runs)
                            <= GOAL_READY_S,
                            "rss_mb": max(float(r["qemu_max_rss_mb"]) for r in runs)
                            <= GOAL_RSS_MB}}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"medians: {json.dumps(medians)}")
        print(f"load average before {load_before}, after {os.getloadavg()}; "
              f"goals met: {report['goals_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
