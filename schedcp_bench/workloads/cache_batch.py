"""cache-batch: more cache-bound batch jobs than CPUs (a pure CPU batch).

Two ``cachejob`` processes per CPU, each following a random chain of
pointers through its own 2 MiB working set and logging the steps it took
every 0.5 s.  Nothing else runs: every cycle goes to the batch, and what a
scheduler decides is how often a CPU switches between jobs, each switch
costing the incoming job a refill of its cache lines and TLB entries.

2 MiB is in the middle of the range where the switch cost shows on this
host's CPUs (1 MiB L2 per core); docs/benchmark-workloads.md gives the
sweep: SCHED_BATCH with a 12 ms slice gains 1.1-2.3x from 1 to 4 MiB and
nothing at 512 KiB or 8 MiB, where the jobs run from the caches or from
memory whatever the scheduler does.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, link, ncpu

WORKING_SET_KB = 2048
JOBS_PER_CPU = 2
INTERVAL_MS = 500


def batch_figures(records: list[dict[str, float]]) -> dict[str, float | None]:
    """Total steps per second (millions) and CPUs used, summed over the jobs.

    Each job's rate is its steps over the time its records cover; the jobs
    ran side by side, so their rates add up.
    """
    loads: dict[int, float] = defaultdict(float)
    seconds: dict[int, float] = defaultdict(float)
    cpu: dict[int, float] = defaultdict(float)
    for rec in records:
        pid = int(rec["pid"])
        loads[pid] += rec["loads"]
        seconds[pid] += rec["end"] - rec["start"]
        cpu[pid] += rec["cpu_s"]
    jobs = [pid for pid in loads if seconds[pid] > 0]
    if not jobs:
        return {"mloads_per_s": None, "cpus_used": None, "jobs": 0}
    return {
        "mloads_per_s": sum(loads[p] / seconds[p] for p in jobs) / 1e6,
        "cpus_used": sum(cpu[p] / seconds[p] for p in jobs),
        "jobs": len(jobs),
    }


class CacheBatch(BenchWorkload):
    """Two cache-bound batch jobs per CPU, logging their progress."""

    name = "cache-batch"
    description = (f"{JOBS_PER_CPU} cachejob processes per CPU, each chasing pointers "
                   f"through {WORKING_SET_KB} KiB of its own")
    packages = ("gcc", "libc6-dev")
    commands = ("cc",)
    natives = ("cachejob",)
    goal = "throughput"
    warmup = 1.0
    metrics = (
        Metric("mloads_per_s", "M steps/s", "higher", 1.0,
               "pointer-chasing steps per second, all jobs together"),
        Metric("cpus_used", "CPUs", "higher", 0.0, "CPU time the jobs got per second (reported)"),
    )
    slos = (
        SLO("mloads_per_s", ">=", 1.0, hard=True),
        SLO("cpus_used", ">=", 0.5, hard=True),
        SLO("mloads_per_s", ">=", 20.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the jobs (they run until the session stops)."""
        session = self.new_session(run_dir)
        program = link(session.dir, self.binary("cachejob"))
        jobs = [session.spawn([program, str(WORKING_SET_KB), str(session.log),
                               str(INTERVAL_MS), "--job", f"{seed}.{i}"])
                for i in range(JOBS_PER_CPU * ncpu())]
        session.roles = {"batch": [j.pid for j in jobs]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """The jobs' summed rate over the window."""
        figures = batch_figures(session.records(t0, t1))
        return {"mloads_per_s": figures["mloads_per_s"], "cpus_used": figures["cpus_used"]}
