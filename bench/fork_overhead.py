#!/usr/bin/env python3
"""What following a fork-heavy tree costs: a make -j build, unmanaged vs managed.

The scheduler engine (journal, actuator, applier, netlink task watcher and
the override checker, as schedcpd runs them, without D-Bus) applies a policy
with ``descendants = true`` to a shell that rebuilds the benchmark's
generated C project (schedcp_bench's make-j: 60 files, ``make -j NCPU``)
a few times; every make, cc, cc1, as and ld is a forked child of a managed
task.  Arms, alternated (ABBA) so drift of a shared machine hits all alike:

- ``unmanaged``: no policy;
- ``follow``: a policy that changes nothing (``nice = 0``), so only the
  following costs;
- ``parallel-build``: the built-in policy's group (policies/parallel-build.toml:
  SCHED_BATCH, 6 ms slice, a cgroup with ``shares = 4096``), its cgroup at
  the top of the hierarchy as the plugin places it by default;
- ``parallel-build-nested``: the same, its cgroup under a shared parent
  directory (``cgroup_parent``), the layout before 2026-12-03: the group's
  shares then only count against other policy groups.

Reported per arm: the median wall time of one build, its ratio to
``unmanaged`` and the engine's CPU time per build (this process's CPU;
the builds are children and not counted).  ``--hogs N`` adds N CPU
spinners in their own sessions (a build beside other work).

    sudo /opt/schedcp/venv/bin/python bench/fork_overhead.py --reps 4

Needs root (sched_setattr on the build, the proc connector), make and a C
compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

# The checkout's code, not an installed copy.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plugins.scheduler import cgroups
from plugins.scheduler.actuator import Actuator
from plugins.scheduler.applier import Applier
from plugins.scheduler.watcher import TaskWatcher
from schedcp_bench.workloads.make_build import generate
from schedcpd.journal import Journal

BUILT_IN = tomllib.loads((REPO / "policies" / "parallel-build.toml").read_text())["group"][0]
BUILD = {k: BUILT_IN[k] for k in ("task", "cgroup") if k in BUILT_IN}
# arm -> (the group's knobs, cgroup parent); None: no policy.
ARMS: dict[str, tuple[dict[str, Any], str] | None] = {
    "unmanaged": None,
    "follow": ({"task": {"nice": 0}}, ""),
    "parallel-build": (BUILD, ""),
    "parallel-build-nested": (BUILD, "schedcp-bench-fork"),
}
OWNER = "bench-fork"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Engine:
    """The scheduler plugin's parts, wired as the plugin wires them."""

    def __init__(self, state: Path, inherit_delay: float, cgroup_parent: str) -> None:
        self.journal = Journal(state / f"journal-{time.monotonic_ns()}.db")
        self.hierarchies = cgroups.detect_hierarchies()
        self.parent = cgroup_parent
        self.applier = Applier(Actuator(self.journal, self.hierarchies), self.hierarchies,
                               cgroup_parent, inherit_delay)
        self.watcher = TaskWatcher(self.applier.on_new, self.applier.on_exit,
                                   on_tick=self.applier.tick)
        self._stop = threading.Event()
        self._checker = threading.Thread(target=self._check, daemon=True)

    def _check(self) -> None:
        while not self._stop.wait(2.0):
            self.applier.actuator.check_overrides()

    def start(self, pid: int, knobs: dict[str, Any]) -> None:
        self.watcher.start()
        self._checker.start()
        doc = {"policy": {"name": "bench-fork", "description": "fork overhead benchmark"},
               "group": [{"name": "build", "match": {"pid": [pid]}, "descendants": True,
                          **knobs}]}
        result = self.applier.apply(doc, {"owner": OWNER, "pids": [pid]}, False)
        if result["problems"]:
            raise RuntimeError(f"applying the arm's policy: {result['problems']}")

    def stop(self) -> dict[str, int]:
        self._stop.set()
        report = self.applier.restore(OWNER)
        self.watcher.stop()
        self._checker.join(timeout=5)
        rows = self.journal.entries(owner=OWNER)
        self.journal.close()
        bad = {k: v for k, v in report["summary"].items() if k not in ("restored", "skipped")}
        if bad:
            raise RuntimeError(f"restore left values behind: {report['summary']}")
        group = cgroups.group_relative(self.parent, OWNER, "build")
        left = [str(h.path(group)) for h in self.hierarchies.values() if h.path(group).exists()]
        if left:
            raise RuntimeError(f"restore left cgroups behind: {left}")
        if self.parent:  # the plugin leaves a configured parent in place
            for hierarchy in self.hierarchies.values():
                cgroups.remove_group(hierarchy, "/" + self.parent)
        return {"journal_rows": len(rows), "descendants": len(report["descendants"]),
                **report["summary"]}


def one_run(arm: str, proj: Path, builds: int, jobs: int, state: Path,
            inherit_delay: float) -> dict[str, Any]:
    """``builds`` rebuilds under ``arm``: seconds per build, engine CPU per build."""
    script = (f"read _; for i in $(seq {builds}); do make -s -C {proj} -j{jobs} rebuild"
              " >/dev/null || exit 1; done")
    shell = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE,
                             env=dict(os.environ, TMPDIR=str(proj / "tmp")))
    assert shell.stdin is not None
    spec = ARMS[arm]
    engine = None
    try:
        if spec is not None:
            knobs, parent = spec
            engine = Engine(state, inherit_delay, parent)
            engine.start(shell.pid, knobs)
        cpu0, t0 = _cpu(), time.perf_counter()
        shell.stdin.write(b"\n")
        shell.stdin.flush()
        if shell.wait() != 0:
            raise RuntimeError("the build failed")
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        stats = engine.stop() if engine is not None else {}
    return {"arm": arm, "seconds_per_build": wall / builds,
            "engine_cpu_ms_per_build": 1e3 * cpu / builds, **stats}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4, help="runs per arm (ABBA order)")
    ap.add_argument("--builds", type=int, default=4, help="rebuilds per run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--hogs", type=int, default=0, help="CPU spinners beside the build")
    ap.add_argument("--inherit-delay", type=float, default=0.1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--json", action="store_true", help="print every run as JSON too")
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "unmanaged" not in arms:
        ap.error(f"--arms: known {', '.join(ARMS)}; 'unmanaged' is the reference")
    if os.geteuid() != 0 or not shutil.which("make") or not shutil.which("cc"):
        print("needs root, make and cc", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="schedcp-bench-fork-"))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             start_new_session=True) for _ in range(args.hogs)]
    runs: list[dict[str, Any]] = []
    try:
        proj = work / "proj"
        generate(proj, seed=1)
        (proj / "tmp").mkdir()
        load0 = os.getloadavg()[0]
        for rep in range(args.reps):
            for arm in arms if rep % 2 == 0 else arms[::-1]:
                runs.append(one_run(arm, proj, args.builds, args.jobs, work,
                                    args.inherit_delay))
        load1 = os.getloadavg()[0]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        for run in runs:
            print(json.dumps(run))
    base = statistics.median(r["seconds_per_build"] for r in runs if r["arm"] == "unmanaged")
    print(f"{args.reps} runs x {args.builds} builds per arm, -j{args.jobs}, {args.hogs} hogs,"
          f" load average {load0:.1f} -> {load1:.1f}")
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        secs = [r["seconds_per_build"] for r in mine]
        med = statistics.median(secs)
        cpu = statistics.median(r["engine_cpu_ms_per_build"] for r in mine)
        rows = statistics.median(r.get("journal_rows", 0) for r in mine)
        print(f"{arm:15s} build {med:.3f} s [{min(secs):.3f}-{max(secs):.3f}]"
              f"  ratio {base / med:.2f}  engine CPU {cpu:.0f} ms/build"
              f"  journal rows/run {rows:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
