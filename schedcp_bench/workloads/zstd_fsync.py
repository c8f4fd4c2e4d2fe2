"""zstd-fsync: mixed CPU + I/O, compress-and-persist jobs beside a latency probe.

``start`` writes ``input.bin`` from the seed (``SIZE_MB`` MiB of text-like
records, compressible about 2.5:1, the same bytes for the same seed).  The driver loops
one unit (``sh -c`` through ``RUN_DIR/bin`` links): NCPU jobs side by side,
each ``zstd -4`` of the input into its own file, then ``sync FILE`` (an
fsync of that file) — CPU work followed by a write-back the job waits on.
Beside it an interactive ``t1_probe`` (one thread, 100 us of work every 5 ms)
stands for the user's foreground task.  Figures: the unit's wall time, the
compressed megabytes persisted per second, the probe's wake-up p99.
"""

from __future__ import annotations

import random
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    median,
    ncpu,
    probe_figures,
    probe_histogram,
    tool,
)

SIZE_MB = 16
LEVEL = 4
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
         "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa")

UNIT = ("pids=; for i in $(seq {n}); do "
        "({zstd} -q -{level} -f {dir}/input.bin -o {dir}/out$i.zst && {sync} {dir}/out$i.zst) & "
        "pids=\"$pids $!\"; done; fail=0; for p in $pids; do wait $p || fail=1; done; "
        "exit $fail")


def generate(path: Path, seed: int, size_mb: int = SIZE_MB) -> None:
    """Write ``size_mb`` MiB of seeded text-like records to ``path``."""
    rng = random.Random(seed)
    target = size_mb << 20
    written = 0
    with path.open("w") as f:
        while written < target:
            line = (f"{rng.randrange(10**9):09d} {rng.choice(WORDS)} {rng.choice(WORDS)} "
                    f"{rng.random():.6f}\n")
            f.write(line)
            written += len(line)


class ZstdFsync(BenchWorkload):
    """NCPU zstd + fsync jobs per unit, looped, beside an interactive probe."""

    name = "zstd-fsync"
    description = (f"mixed CPU+I/O: NCPU jobs of zstd -4 over {SIZE_MB} MiB then fsync of "
                   "the output, looped, beside an interactive probe")
    packages = ("zstd", "coreutils", "gcc", "libc6-dev")
    commands = ("zstd", "sync", "sh", "cc")
    natives = ("t1probe",)
    goal = "makespan"
    quick = False
    warmup = 0.5
    metrics = (
        Metric("makespan_s", "s", "lower", 1.0, "wall time of one unit (median of units)"),
        Metric("mb_per_s", "MB/s", "higher", 0.5, "input megabytes compressed and persisted "
               "per second of unit"),
        Metric("probe_wake_p99_us", "us", "lower", 0.5, "foreground probe wake-up p99"),
    )
    slos = (
        SLO("makespan_s", "<=", 20.0, hard=True),
        SLO("probe_wake_p99_us", "<=", 100000.0, hard=True),
        SLO("makespan_s", "<=", 0.27, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Write the seeded input; start the probe and the unit driver."""
        session = self.new_session(run_dir)
        d = session.dir
        generate(d / "input.bin", seed)
        probe = self.spawn_probe(session, period_us=5000, work_us=100, threads=1)
        script = UNIT.format(n=ncpu(), level=LEVEL, zstd=tool(d, "zstd"),
                             sync=tool(d, "sync"), dir=d)
        driver = self.spawn_driver(session, [tool(d, "sh"), "-c", script])
        session.roles = {"batch": [driver.pid], "latency": [probe.pid],
                         "foreground": [probe.pid]}
        session.extra["jobs"] = ncpu()
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median unit time, its throughput, and the probe's wake-up p99."""
        recs = good(session.records(t0, t1))
        span = median(r["end"] - r["start"] for r in recs)
        jobs = int(session.extra.get("jobs", ncpu()))
        return {
            "makespan_s": span,
            "mb_per_s": None if not span else SIZE_MB * jobs / span,
            "probe_wake_p99_us": probe_figures(session.dir / "probe.jsonl", t0, t1)[
                "wake_p99_us"],
        }

    def distribution(self, session: Session, t0: float,
                     t1: float) -> dict[str, list[tuple[float, int]]]:
        """The probe's wake-up histogram over the window."""
        return {"probe wake-up": probe_histogram(session.dir / "probe.jsonl", t0, t1)}
