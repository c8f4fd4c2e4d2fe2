"""Overhead of the Workload Analysis Engine's sampler.

Runs a WorkloadAnalyzer at --rate Hz for --seconds in this process (as the
daemon would, on an asyncio loop) and reports, as JSON:

- cpu_pct_of_one_core: this process's user+system CPU over the run divided by
  wall time (getrusage; includes the event loop and the sampler thread),
- per-sample collection cost (thread CPU time) mean/p50/max,
- rss_mb (VmRSS at the end) and hwm_mb (peak VmHWM),
- the number of processes on the host.

Usage: python bench/analysis_overhead.py [--seconds 60] [--rate 1] [--extra-procs 0]
--extra-procs N starts N sleeping processes first, to see how cost scales
with the process count.  Run as root so TaskStats is on (as in the daemon).

With --daemon it measures the whole daemon instead: schedcpd (every part
started, sampling at --rate Hz, metrics exporter on) and, side by side in the
same run on the same private bus, the floor any Python D-Bus service has here
(bench/floor_service.py, a bare dbus-fast service).  Both are idle apart from
the sampler; reported per process: CPU % of one core over --seconds (from
/proc/<pid>/stat, all threads) and VmRSS / VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))  # the checkout's code, not an installed copy
_TICK = os.sysconf("SC_CLK_TCK")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(seconds: float, rate: float) -> dict[str, object]:
    from schedcpd.analysis import WorkloadAnalyzer

    analyzer = WorkloadAnalyzer(rate_hz=rate, window_s=60)
    # Start-up (imports, first /proc walk) is not steady-state cost.
    await analyzer.start()
    await asyncio.sleep(2.0)
    summaries = 0
    cpu0, t0 = _cpu_s(), time.monotonic()
    n0 = len(analyzer.sampler.samples)
    load0 = os.getloadavg()[0]
    await asyncio.sleep(seconds)
    cpu1, t1 = _cpu_s(), time.monotonic()
    load1 = os.getloadavg()[0]
    samples = analyzer.sampler.samples[n0:]
    # Cost of answering: one brief and one full summary over a full window.
    s0 = time.thread_time()
    analyzer.summary("brief")
    brief_ms = (time.thread_time() - s0) * 1e3
    s0 = time.thread_time()
    analyzer.summary("full")
    full_ms = (time.thread_time() - s0) * 1e3
    summaries += 2
    await analyzer.stop()
    costs = [s.cost_s * 1e3 for s in samples]
    return {
        "seconds": round(t1 - t0, 1),
        "rate_hz": rate,
        "samples": len(samples),
        "processes": samples[-1].nprocs if samples else None,
        "busy_processes_mean": round(statistics.fmean(len(s.procs) for s in samples), 1)
        if samples else None,
        "host_util_mean": round(statistics.fmean(s.util for s in samples), 3) if samples else None,
        "loadavg_1m": [round(load0, 1), round(load1, 1)],
        "cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "sample_cost_ms": {
            "mean": round(statistics.fmean(costs), 3) if costs else None,
            "p50": round(statistics.median(costs), 3) if costs else None,
            "max": round(max(costs), 3) if costs else None,
        },
        "summary_brief_ms": round(brief_ms, 2),
        "summary_full_ms": round(full_ms, 2),
        "rss_mb": round(_status_kb("VmRSS") / 1024, 1),
        "hwm_mb": round(_status_kb("VmHWM") / 1024, 1),
        "taskstats": not analyzer.sampler.collector.notes,
    }


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_daemon(seconds: float, rate: float, warmup: float) -> dict[str, object]:
    """schedcpd and the bare dbus-fast floor service, measured over the same seconds."""
    from schedcp_bench.services import PrivateBus, SchedcpdProcess

    config = tomli_w.dumps({"metrics": {"port": 0}, "analysis": {"rate_hz": rate}})
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config) as daemon:
        floor = subprocess.Popen([sys.executable, str(_ROOT / "bench" / "floor_service.py"),
                                  bus.address], stdout=subprocess.PIPE, text=True)
        try:
            assert floor.stdout is not None and floor.stdout.readline().strip() == "ready"
            assert daemon.proc is not None
            pids = {"schedcpd": daemon.proc.pid, "floor_dbus_fast": floor.pid}
            time.sleep(warmup)  # start-up (imports, policy load, first samples) excluded
            load0 = os.getloadavg()[0]
            cpu0 = {k: _proc_cpu_s(p) for k, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(seconds)
            cpu1 = {k: _proc_cpu_s(p) for k, p in pids.items()}
            wall = time.monotonic() - t0
            out: dict[str, object] = {
                k: {"cpu_pct_of_one_core": round(100 * (cpu1[k] - cpu0[k]) / wall, 3),
                    "rss_mb": round(_proc_kb(p, "VmRSS") / 1024, 1),
                    "hwm_mb": round(_proc_kb(p, "VmHWM") / 1024, 1)}
                for k, p in pids.items()
            }
            out.update(seconds=round(wall, 1), rate_hz=rate,
                       loadavg_1m=[round(load0, 1), round(os.getloadavg()[0], 1)],
                       processes=sum(1 for n in os.listdir("/proc") if n.isdigit()))
            return out
        finally:
            floor.terminate()
            floor.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--extra-procs", type=int, default=0)
    ap.add_argument("--daemon", action="store_true",
                    help="measure the whole schedcpd beside a bare dbus-fast service")
    ap.add_argument("--warmup", type=float, default=10.0, help="--daemon: seconds before measuring")
    args = ap.parse_args()
    if args.daemon:
        print(json.dumps(run_daemon(args.seconds, args.rate, args.warmup), indent=1))
        return
    extra = [subprocess.Popen(["sleep", str(args.seconds + 30)]) for _ in range(args.extra_procs)]
    try:
        result = asyncio.run(run(args.seconds, args.rate))
    finally:
        for p in extra:
            p.kill()
            p.wait()
    result["extra_procs"] = args.extra_procs
    result["pid"] = os.getpid()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
