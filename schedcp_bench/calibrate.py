"""Measure workloads under the default scheduler, to set their SLOs (docs/benchmark-workloads.md).

    python -m schedcp_bench.calibrate [--workloads a,b] [--windows 5] [--window 3]
                                      [--seed 1] [--cache DIR] [--out FILE.json]

No daemon, no policy: each workload is prepared, started, warmed up and
measured over ``--windows`` consecutive windows of ``--window`` seconds (a
window is stretched, as the runner does, until it holds a unit).  Printed per
metric: the median, min and max of the window figures; per workload the load
average at the start and the median foreign load (CPUs used by processes
outside the workload, :class:`schedcp_bench.quiet.LoadMeter`), so a figure
measured on a busy host says so.  The SLO method built on it is documented
in docs/benchmark-workloads.md ("How the SLOs were set").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from schedcp_bench.quiet import LoadMeter
from schedcp_bench.runner import MAX_WINDOW_STRETCH
from schedcp_bench.workload import Workload, now
from schedcp_bench.workloads import WORKLOADS


def calibrate(wl: Workload, cache: Path, run_dir: Path, windows: int, window: float,
              seed: int) -> dict[str, Any]:
    """One workload's window figures under the default scheduler."""
    why = wl.unavailable()
    if why:
        return {"name": wl.name, "status": "skipped", "reason": why}
    wl.prepare(cache)
    load_before = os.getloadavg()
    session = wl.start(run_dir, seed)
    figures: list[dict[str, float | None]] = []
    foreign: list[float] = []
    try:
        time.sleep(wl.warmup)
        length = max(window, wl.min_window)
        for _ in range(windows):
            meter = LoadMeter([p.pid for p in session.procs])
            meter.start()
            t0 = now()
            time.sleep(length)
            got = wl.measure(session, t0, now())
            stretch = 1
            while all(v is None for v in got.values()) and stretch < MAX_WINDOW_STRETCH:
                time.sleep(length)
                stretch += 1
                got = wl.measure(session, t0, now())
            foreign.append(meter.stop().foreign_cpus)
            figures.append(got)
    finally:
        session.stop()
    out: dict[str, Any] = {"name": wl.name, "status": "ok", "loadavg_before": load_before,
                           "loadavg_after": os.getloadavg(),
                           "foreign_cpus_median": statistics.median(foreign) if foreign
                           else None, "metrics": {}}
    for m in wl.metrics:
        vals = [v for f in figures if (v := f.get(m.name)) is not None]
        out["metrics"][m.name] = {
            "better": m.better, "unit": m.unit, "n": len(vals),
            "median": statistics.median(vals) if vals else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None}
    out["slos"] = [{"metric": s.metric, "op": s.op, "value": s.value, "hard": s.hard}
                   for s in wl.slos]
    return out


def main(argv: list[str] | None = None) -> int:
    """Calibrate the named workloads (default: all) and print their figures."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.calibrate")
    ap.add_argument("--workloads", help="comma-separated names (default: every workload)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default="/var/tmp/schedcp-bench-cache")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",")] if args.workloads else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    results = []
    with tempfile.TemporaryDirectory(prefix="schedcp-calibrate-") as tmp:
        for i, name in enumerate(names):
            res = calibrate(WORKLOADS[name](), Path(args.cache), Path(tmp) / f"{i:02d}-{name}",
                            args.windows, args.window, args.seed)
            results.append(res)
            if res["status"] != "ok":
                print(f"{name}: {res['status']}: {res['reason']}", flush=True)
                continue
            print(f"{name}: load {res['loadavg_before'][0]:.1f}, foreign "
                  f"{res['foreign_cpus_median']:.2f} CPUs", flush=True)
            for metric, v in res["metrics"].items():
                print(f"  {metric}: median {v['median']} [{v['min']} - {v['max']}] "
                      f"n={v['n']} {v['unit']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
