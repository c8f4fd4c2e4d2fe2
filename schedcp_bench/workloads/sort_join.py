"""sort-join: a batch analytics pipeline of coreutils over seeded CSV files (makespan).

``start`` writes two CSV files from the seed into the run directory (the same
bytes for the same seed): ``orders.csv`` (``ORDERS`` rows ``customer,amount,
day``) and ``customers.csv`` (``CUSTOMERS`` rows ``customer,region``).  The
driver loops one pipeline (``sh -c``, through ``RUN_DIR/bin`` links): sort
both files on the customer key (``sort --parallel=NCPU``), ``join`` them,
sum the amounts per region with ``awk``, and sort the totals.  The unit's
figure is the pipeline's wall time; the output is checked for one line per
region (a run that produced anything else is an error).
"""

from __future__ import annotations

import random
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, ncpu, tool

ORDERS = 200000
CUSTOMERS = 20000
REGIONS = 12

PIPELINE = (
    "{sort} --parallel={n} -S 64M -t, -k1,1 {dir}/orders.csv > {dir}/orders.sorted && "
    "{sort} --parallel={n} -S 16M -t, -k1,1 {dir}/customers.csv > {dir}/customers.sorted && "
    "{join} -t, -1 1 -2 1 {dir}/orders.sorted {dir}/customers.sorted | "
    "{awk} -F, '{{sum[$4] += $2}} END {{for (r in sum) printf \"%s,%.2f\\n\", r, sum[r]}}' | "
    "{sort} -t, -k2,2nr > {dir}/totals.csv && "
    "test \"$(wc -l < {dir}/totals.csv)\" -eq {regions}"
)


def generate(run_dir: Path, seed: int, orders: int = ORDERS,
             customers: int = CUSTOMERS) -> None:
    """Write orders.csv and customers.csv for ``seed`` into ``run_dir``."""
    rng = random.Random(seed)
    cust = [f"c{i:06d}" for i in range(customers)]
    with (run_dir / "customers.csv").open("w") as f:
        for c in cust:
            f.write(f"{c},region{rng.randrange(REGIONS):02d}\n")
    with (run_dir / "orders.csv").open("w") as f:
        for _ in range(orders):
            f.write(f"{rng.choice(cust)},{rng.randint(1, 99999) / 100:.2f},"
                    f"{rng.randrange(365)}\n")


class SortJoin(BenchWorkload):
    """sort | join | awk | sort over seeded CSV files, looped."""

    name = "sort-join"
    description = (f"coreutils analytics pipeline: sort {ORDERS} orders and {CUSTOMERS} "
                   "customers, join, aggregate per region with awk, looped")
    packages = ("coreutils", "mawk")
    commands = ("sort", "join", "awk", "sh")
    goal = "makespan"
    quick = False
    warmup = 0.5
    metrics = (Metric("makespan_s", "s", "lower", 1.0,
                      "wall time of one pipeline run (median of runs)"),)
    slos = (
        SLO("makespan_s", "<=", 20.0, hard=True),
        SLO("makespan_s", "<=", 0.23, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Generate the data for ``seed`` and start the driver looping the pipeline."""
        session = self.new_session(run_dir)
        generate(session.dir, seed)
        d = session.dir
        script = PIPELINE.format(sort=tool(d, "sort"), join=tool(d, "join"),
                                 awk=tool(d, "awk"), dir=d, n=ncpu(), regions=REGIONS)
        driver = self.spawn_driver(session, [tool(d, "sh"), "-c", script])
        session.roles = {"batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median wall time of the pipeline runs inside the window."""
        recs = good(session.records(t0, t1))
        return {"makespan_s": median(r["end"] - r["start"] for r in recs)}
