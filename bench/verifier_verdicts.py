"""The dynamic stage's verdicts, run after run: a good and a starving policy.

    python bench/verifier_verdicts.py [--runs 20] [--seconds 3.0] [--load 0 2]

For each foreign load (``--load``: CPU hogs started outside the sandbox, at
default priority) runs the scheduler plugin's real dynamic stage ``--runs``
times on each of two policies, alternating them:

- ``latency-protect``: the built-in policy (policies/latency-protect.toml),
  which must pass;
- ``starved-dependency``: a latency client whose server gets 1 ms of CPU per
  second (``cgroup.quota_us``), which must fail.

Prints a Markdown table of verdict counts (passed / failed / inconclusive /
other), the pairs each run took and its wall time, and the foreign load the
stage itself measured.  Writes the same as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugins.scheduler import cgroups  # noqa: E402
from schedcpd.hookspecs import PluginContext  # noqa: E402
from schedcpd.journal import Journal  # noqa: E402
from schedcpd.plugins import PluginHost  # noqa: E402

STARVED = """
[policy]
name = "starved-dependency"
description = "a latency client whose server is throttled to 1 ms per second"

[[group]]
name = "client"
match = { comm = ["client"] }
task = { slice_us = 500 }
depends_on = ["server"]

[[group]]
name = "server"
match = { comm = ["server"] }
cgroup = { quota_us = 1000, period_us = 1000000 }
"""
POLICIES = {
    "latency-protect": tomllib.loads((ROOT / "policies/latency-protect.toml").read_text()),
    "starved-dependency": tomllib.loads(STARVED),
}
EXPECTED = {"latency-protect": "passed", "starved-dependency": "failed"}


def _verdict(findings: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    info = [f for f in findings if f["code"] == "measurement"]
    if not info:
        return "error:" + ",".join(f["code"] for f in findings), {}
    return info[0]["evidence"]["verdict"], info[0]["evidence"]


def _hogs(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="[verifier] dynamic_seconds (default: the daemon's, 3.0)")
    parser.add_argument("--load", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    parent = f"schedcp-bench-{uuid.uuid4().hex[:6]}"
    state = Path(tempfile.mkdtemp(prefix="schedcp-verdicts-"))
    journal = Journal(state / "journal.db")
    host = PluginHost(load_entry_points=False)
    host.startup(lambda name: PluginContext(state_dir=state, journal=journal,
                                            config={"cgroup_parent": parent}))
    rows: list[dict[str, Any]] = []
    try:
        for load in args.load:
            hogs = _hogs(load)
            try:
                time.sleep(0.5)
                for run in range(args.runs):
                    for name, doc in POLICIES.items():
                        start = time.monotonic()
                        findings = host.call_first("schedcp_dynamic_check",
                                                   subsystem="scheduler", policy=doc,
                                                   seconds=args.seconds)
                        verdict, evidence = _verdict(findings)
                        rows.append({"load": load, "policy": name, "run": run,
                                     "verdict": verdict, "pairs": evidence.get("pairs"),
                                     "foreign_load": evidence.get("foreign_load_cpus"),
                                     "seconds": round(time.monotonic() - start, 2)})
                        print(f"load {load} run {run:2d} {name:20s} {verdict:12s} "
                              f"pairs {evidence.get('pairs')} foreign "
                              f"{evidence.get('foreign_load_cpus')} "
                              f"{rows[-1]['seconds']} s", file=sys.stderr, flush=True)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    finally:
        host.call_first("schedcp_restore", subsystem="scheduler", scope={})
        host.shutdown()
        journal.close()
        for hierarchy in cgroups.detect_hierarchies().values():
            leftover = hierarchy.mount / parent
            if leftover.is_dir():
                leftover.rmdir()
    print(f"dynamic_seconds {args.seconds}, {args.runs} runs per cell, {os.cpu_count()} CPUs\n")
    print("| foreign hogs | policy | expected | passed | failed | inconclusive | other "
          "| pairs (median, max) | s per run (median) | measured foreign load (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for load in args.load:
        for name in POLICIES:
            cell = [r for r in rows if r["load"] == load and r["policy"] == name]
            count = Counter(r["verdict"] for r in cell)
            other = sum(v for k, v in count.items()
                        if k not in ("passed", "failed", "inconclusive"))
            pairs = [r["pairs"] for r in cell if r["pairs"] is not None]
            foreign = [r["foreign_load"] for r in cell if r["foreign_load"] is not None]
            print(f"| {load} | {name} | {EXPECTED[name]} | {count['passed']} | "
                  f"{count['failed']} | {count['inconclusive']} | {other} | "
                  f"{statistics.median(pairs) if pairs else '-'}, {max(pairs, default='-')} | "
                  f"{statistics.median(r['seconds'] for r in cell):.1f} | "
                  f"{round(statistics.median(foreign), 2) if foreign else '-'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
