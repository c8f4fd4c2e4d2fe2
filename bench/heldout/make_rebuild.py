#!/usr/bin/env python3
"""One unit of the held-out make-beside-spinners workload: a make -j NCPU rebuild.

Usage: make_rebuild.py RUN_DIR SEED.  The first run writes schedcp-bench's
generated C project (the make-j workload's 60 files) into RUN_DIR/proj;
every run cleans and rebuilds it with ``make -j NCPU`` and prints
``makespan=<seconds>``.  The compiler's temporary files go to RUN_DIR/tmp,
so every make, cc, cc1, as and ld has the run directory on its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from schedcp_bench.workloads.make_build import generate


def main() -> int:
    run_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    proj, tmp = run_dir / "proj", run_dir / "tmp"
    if not (proj / "Makefile").exists():
        generate(proj, seed)
    tmp.mkdir(exist_ok=True)
    start = time.perf_counter()
    subprocess.run(["make", "-s", "-C", str(proj), f"-j{os.cpu_count() or 1}", "rebuild"],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(tmp)))
    print(f"makespan={time.perf_counter() - start:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
