"""Every registered workload starts, reports every metric, is targetable, and stops cleanly.

Real processes on the real machine: each workload is prepared into a shared
temporary cache, started, measured over a short window after its warm-up,
checked for its roles and match regex, and stopped.  Performance is never
asserted (only that the figures exist and are sane).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcp_agent.targets import Proc, process_table
from schedcp_bench import loadgen
from schedcp_bench.arms import bind
from schedcp_bench.workload import Session, Workload, now
from schedcp_bench.workloads import WORKLOADS
from schedcp_bench.workloads.cache_batch import batch_figures
from schedcp_bench.workloads.common import NATIVE_DIR
from tests.harness import poll

GROUPS = {"latency", "batch", "build", "long", "short", "foreground", "noisy",
          "reader", "bulk-writer", "copy", "database"}  # the last four: T3 (io, multi)
#: The first window; it grows (up to PATIENCE) until every metric has a complete unit:
#: this test checks that the figures exist and are sane, not their statistics.
WINDOW = 1.0
#: on a loaded machine a unit can take much longer than usual: wait for one this long
PATIENCE = 60.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for every workload of the module."""
    return tmp_path_factory.mktemp("bench-cache")


def descendants(roots: list[int], table: dict[int, Proc]) -> dict[int, Proc]:
    """``roots`` and every descendant of theirs in ``table``."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    out: dict[int, Proc] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in out:
            out[pid] = table[pid]
            todo.extend(children.get(pid, []))
    return out


#: units of several seconds (a real package build, a video encode): marked slow
SLOW_UNITS = {"lua-build", "ffmpeg-x264"}


@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW_UNITS else n
                        for n in WORKLOADS])
def started(request: pytest.FixtureRequest, cache: Path,
            tmp_path: Path) -> Iterator[tuple[Workload, Session]]:
    """The workload named by the parameter, prepared and started; stopped afterwards."""
    workload = WORKLOADS[request.param]()
    missing = workload.unavailable()
    if missing:
        pytest.skip(f"{workload.name}: {missing} (see requirements-apt.txt)")
    workload.prepare(cache)
    session = workload.start(tmp_path / "run", seed=7)
    try:
        yield workload, session
    finally:
        session.stop()


def test_workload_measures_targets_and_stops(started: tuple[Workload, Session]) -> None:
    """Start, measure a window, check roles/match, stop, nothing left behind."""
    workload, session = started
    assert session.workload == workload.name
    names = [m.name for m in workload.metrics]
    assert names and len(set(names)) == len(names)
    assert {s.metric for s in workload.slos} <= set(names)
    assert any(s.hard for s in workload.slos) and any(not s.hard for s in workload.slos)
    assert workload.goal in ("latency", "throughput", "makespan")

    time.sleep(workload.warmup)
    t0 = now()
    time.sleep(WINDOW)
    figures = workload.measure(session, t0, now())
    deadline = t0 + PATIENCE
    def incomplete(figures: dict[str, float | None]) -> bool:
        # No complete unit yet, or none with any work in it: on a host this busy a
        # just-started hog can get no CPU for a whole 500 ms record.
        return any(figures.get(n) is None or (figures.get(n) == 0 and "missed" not in n)
                   for n in names)

    while incomplete(figures) and now() < deadline:
        assert session.alive(), f"{workload.name}: a process exited: " + (
            (session.dir / "stderr.log").read_text()[-1000:])
        time.sleep(0.5)
        figures = workload.measure(session, t0, now())
    assert set(figures) == set(names)
    for metric in workload.metrics:
        value = figures[metric.name]
        assert value is not None, f"{workload.name}.{metric.name}: no complete unit"
        assert math.isfinite(value) and value >= 0, (metric.name, value)
        if "missed" not in metric.name:
            assert value > 0, (metric.name, value)
    distribution = getattr(workload, "distribution", None)  # optional, for plots
    if distribution is not None:
        for hist in distribution(session, t0, now()).values():
            assert hist and all(v >= 0 and c > 0 for v, c in hist)
    # an empty window holds no unit
    assert all(v is None for v in workload.measure(session, now() + 10, now() + 11).values())

    # roles name built-in policy groups and pids of this session
    assert session.roles and set(session.roles) <= GROUPS
    table = process_table()
    tree = descendants([p.pid for p in session.procs], table)
    for pids in session.roles.values():
        assert pids and set(pids) <= set(tree)
    # roles of processes that live within a unit: their match finds some, all in the session
    for role, match in session.role_match.items():
        assert role in GROUPS and set(match) == {"cmdline"}, (role, match)
        role_rx = re.compile(match["cmdline"])
        hits: list[Proc] = []
        deadline = now() + PATIENCE
        while not hits and now() < deadline:
            snapshot = process_table()
            hits = [p for p in snapshot.values() if role_rx.search(p.cmdline)]
            session_tree = descendants([p.pid for p in session.procs], snapshot)
            assert {p.pid for p in hits} <= set(session_tree), (role, hits)
        assert hits, f"{workload.name}: no process played role {role!r}"
    # the match regex finds every process of the session and nothing else
    rx = re.compile(session.match)
    assert session.match
    unmatched = {p.pid: p.cmdline for p in tree.values() if not rx.search(p.cmdline)}
    assert not unmatched, f"{workload.name}: not matched by {session.match!r}: {unmatched}"
    foreign = [p.cmdline for p in table.values()
               if p.pid not in tree and rx.search(p.cmdline) and p.pid != os.getpid()]
    assert not foreign, foreign

    session.stop()
    assert not session.alive()
    left = poll(lambda: [p for p in process_table().values() if rx.search(p.cmdline)],
                lambda procs: not procs, 10, 0.1)
    assert not left, [p.cmdline for p in left]


def test_bind_selects_roles_by_pid_or_by_match() -> None:
    doc = {"policy": {"name": "p", "description": "d", "tags": ["x"]},
           "parameters": {"a": {"field": "group[0].cgroup.shares", "min": 2, "max": 9}},
           "group": [{"name": "long", "match": {"cmdline": "old"}, "cgroup": {"shares": 8}},
                     {"name": "batch", "match": {"comm": "old"}, "task": {"nice": 5}}]}
    bound, unbound = bind(doc, {"batch": [7, 3, 7]}, "w", {"long": {"cmdline": "--job long$"}})
    assert unbound == [] and bound is not None
    assert [g["match"] for g in bound["group"]] == [{"cmdline": "--job long$"}, {"pid": [3, 7]}]
    assert bound["policy"]["name"] == "bench-w-p" and "parameters" not in bound
    assert bind(doc, {"batch": [3]}, "w") == (None, ["long"])


def test_bind_covers_every_part_and_aims_device_tables_at_the_workloads_device() -> None:
    doc = {"policy": {"name": "db", "description": "d", "subsystems": ["scheduler", "io"]},
           "scheduler": {"group": [{"name": "database", "match": {"comm": ["x"]},
                                    "task": {"slice_us": 500}}]},
           "io": {"device": [{"name": "vda", "scheduler": "mq-deadline"}],
                  "group": [{"name": "database", "match": {"comm": ["x"]},
                             "ioprio": {"class": "be", "level": 0}}]}}
    bound, unbound = bind(doc, {"database": [4]}, "w", devices=["loop42"])
    assert unbound == [] and bound is not None
    assert bound["scheduler"]["group"][0]["match"] == {"pid": [4]}
    assert bound["io"]["group"][0]["match"] == {"pids": [4]}
    assert bound["io"]["device"] == [{"name": "loop42", "scheduler": "mq-deadline"}]
    # Without a device of the workload's own, a policy with device tables does not apply
    # (the machine's own disks are never a benchmark arm's to change).
    none, why = bind(doc, {"database": [4]}, "w")
    assert none is None and "device" in why[0]


def test_registry_is_complete() -> None:
    """Every workload module is registered under its own name, in a stable order."""
    assert len(WORKLOADS) == 23
    for name, cls in WORKLOADS.items():
        assert cls.name == name and cls.description and cls.metrics


#: Debian packages of priority required/important, on every Debian 12 system
BASE_SYSTEM = {"coreutils", "mawk", "python3"}
NEW_IN_ISSUE_26 = ("memcached", "http-python", "sqlite-oltp", "zstd-fsync", "sort-join",
                   "ffmpeg-x264", "lua-build")


def test_definitions_are_consistent_and_installable() -> None:
    """Every workload's metrics, SLOs and goal fit; its packages are in requirements-apt.txt."""
    apt = {line.split()[0] for line in
           (Path(__file__).resolve().parents[2] / "requirements-apt.txt").read_text().splitlines()
           if line.strip() and not line.lstrip().startswith("#")}
    for name, cls in WORKLOADS.items():
        names = [m.name for m in cls.metrics]
        assert names and len(set(names)) == len(names), name
        assert all(m.better in ("lower", "higher") and m.weight >= 0 for m in cls.metrics)
        assert {s.metric for s in cls.slos} <= set(names), name
        assert any(s.hard for s in cls.slos) and any(not s.hard for s in cls.slos), name
        assert cls.goal in ("latency", "throughput", "makespan"), name
        assert set(cls.packages) - BASE_SYSTEM <= apt, (name, set(cls.packages) - apt)
    # the seven of issue 26 are in the full suite only: the quick suite keeps its 13
    assert set(NEW_IN_ISSUE_26) <= set(WORKLOADS)
    assert [n for n, c in WORKLOADS.items() if not c.quick] == list(NEW_IN_ISSUE_26)


def test_loadgen_same_seed_same_requests() -> None:
    """The load generator's requests come from the seed: the same seed, the same paths."""
    import threading
    from http.server import ThreadingHTTPServer

    from schedcp_bench.workloads.http_python import _Handler

    seen: list[str] = []

    class Recording(_Handler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        runs = []
        for seed in (5, 5, 6):
            seen.clear()
            out = loadgen.run("http", "127.0.0.1", server.server_address[1], 30, 1, seed)
            assert out["requests"] == 30 and out["errors"] == 0
            assert out["p99_us"] is not None and out["p50_us"] is not None
            runs.append(list(seen))
        assert runs[0] == runs[1] and runs[0] != runs[2]
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SystemExit):
        loadgen.main(["memcached", "no-port", "--requests", "1"])
    with pytest.raises(ValueError, match="1 connections failed"):
        loadgen.parse('{"errors": 1, "first_error": "refused"}\n', "")


def test_msglat_builds_static(tmp_path: Path) -> None:
    """msglat is plain C + pthreads: a static build works and its output is JSON."""
    binary = tmp_path / "msglat"
    subprocess.run(["cc", "-static", "-O2", "-pthread", "-o", str(binary),
                    str(NATIVE_DIR / "msglat.c")], check=True, capture_output=True)
    out = subprocess.run([str(binary), "-r", "0.3", "-w", "0.05", "-m", "1", "-t", "2"],
                         check=True, capture_output=True, text=True, timeout=60)
    figures = json.loads(out.stdout)
    assert figures["benchmark"] == "msglat" and figures["requests"] > 0
    assert 0 < figures["wake_p50_us"] <= figures["wake_p99_us"] <= figures["wake_p999_us"]
    bad = subprocess.run([str(binary), "-m", "0"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "message threads" in bad.stderr


def test_cache_batch_adds_the_rates_of_jobs_that_ran_side_by_side() -> None:
    """Each job's rate covers only its own records; the jobs' rates add up."""
    recs = [{"start": 0.0, "end": 0.5, "pid": 1, "loads": 10e6, "cpu_s": 0.25},
            {"start": 0.5, "end": 1.0, "pid": 1, "loads": 30e6, "cpu_s": 0.25},
            {"start": 0.2, "end": 0.7, "pid": 2, "loads": 5e6, "cpu_s": 0.5}]
    figures = batch_figures(recs)
    assert figures["mloads_per_s"] == pytest.approx(40 + 10)
    assert figures["cpus_used"] == pytest.approx(0.5 + 1.0) and figures["jobs"] == 2
    assert batch_figures([]) == {"mloads_per_s": None, "cpus_used": None, "jobs": 0}


def test_the_t3_track_runs_here_with_its_own_arms() -> None:
    """T3 is available where fio and losetup are (as root); its workloads are its own."""
    from schedcp_bench import cli

    assert cli.track_unavailable("T3") is None  # the test VM has fio, losetup, root
    assert "unknown track" in str(cli.track_unavailable("T9"))
    t3 = [n for n, c in WORKLOADS.items() if c.track == "T3"]
    assert t3 == ["fio-read-beside-writer", "fio-mixed-service", "fio-read-cpu-io"]
    args = cli.parser().parse_args(["run", "--track", "T3"])
    opts = cli._options(args, cli.SUITES["quick"])
    assert opts.arms == list(cli.T3_ARMS)
    assert [w.name for w in cli.select_workloads(args, cli.SUITES["quick"])] == t3
