"""The offline planner through the real CLI against a real schedcpd, on workloads made here.

Each test starts its own workload (as root), runs ``python -m schedcp_agent
optimize`` as a subprocess as the unprivileged test user (granted verify and
deploy by the daemon's configuration, see conftest) and checks three things:
the policy the planner picked, that its knobs reached the targets (sampled
from /proc while the agent ran), and that ``--revert-at-end`` left the
targets as they were.  Goal figures (wake-up p99, the daemon's feedback) are
printed, never asserted: this host is shared and loaded; the benchmark
(docs/benchmark.md, docs/agent.md) measures whether each pick improves its
goal metric.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from schedcp_bench.workloads.cache_batch import JOBS_PER_CPU, WORKING_SET_KB
from schedcp_bench.workloads.common import build_native, ncpu
from tests.agent.conftest import (
    WORKLOADS,
    KnobWatcher,
    agent_cwd,
    cgroup_exists,
    cgroup_shares,
    cpu_cgroup,
    descendants,
    probe_p99,
    run_agent,
    user_dir,
)
from tests.harness import Procs, calls_as, run_as, wait_workers_ready


def _restored(pids: list[int]) -> None:
    for pid in pids:
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER, pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0, pid


def _deep_profiling_only_where_needed(saw: dict) -> None:
    """RunPerfStat was asked only for targets the summary did not classify."""
    perf = {int(d.rsplit(" ", 1)[1]) for d in saw["deep_profiling"]}
    for pid, target in saw["targets"].items():
        assert (int(pid) in perf) == (target["source"] == "perf stat"), (pid, target, perf)
        if target["source"] == "summary":
            assert target["cls"] not in ("mixed", "unknown"), target


def _summary(report: dict) -> str:
    att = report["attempts"][0] if report["attempts"] else {}
    ex = att.get("execution", {})
    return (f"status={report['status']} shape={report['saw']['shape']} "
            f"base={att.get('candidate', {}).get('base')} state={ex.get('state')} "
            f"error={ex.get('error')} findings={att.get('findings')} "
            f"measured={report.get('measured')} cost={report['cost']['usd']}")


@pytest.mark.slow
def test_latency_probe_beside_hogs_gets_latency_protection(agent_daemon, procs: Procs,
                                                           agent_uid: int) -> None:
    probe = procs.worker("periodic")
    hogs = [procs.worker("spin") for _ in range(2)]
    wait_workers_ready([probe, *hogs])
    before = probe_p99(probe, procs.dir, 1.5)
    during: list[float | None] = []
    argv = [sys.executable, "-m", "schedcp_agent", "optimize", "--bus", agent_daemon.address,
            "--json", "--observe-seconds", "3", "--goal", "latency", "--match", procs.regex,
            "--revert-at-end", "--max-iterations", "1"]

    agent_done = threading.Event()

    def measure_when_applied() -> None:
        while not agent_done.is_set():
            if all(os.sched_getscheduler(h.pid) == os.SCHED_IDLE for h in hogs):
                during.append(probe_p99(probe, procs.dir, 1.0))
                return
            time.sleep(0.05)

    with KnobWatcher(lambda: [h.pid for h in hogs] + [probe.pid]) as watch:
        measurer = threading.Thread(target=measure_when_applied)
        measurer.start()
        try:
            out = run_as(agent_uid, argv, cwd=agent_cwd(), timeout=150)
        finally:
            agent_done.set()
            measurer.join()
    assert out.stdout.startswith("{"), out.stderr
    report = json.loads(out.stdout)
    print(_summary(report), f"probe wake p99 before {before} us, with the policy {during}")
    assert report["saw"]["shape"] == "latency-beside-cpu-hogs", report["saw"]["evidence"]
    _deep_profiling_only_where_needed(report["saw"])
    assert report["saw"]["text"].endswith("goal: latency") and report["saw"]["evidence"]
    assert sorted(report["saw"]["roles"]["batch"]) == sorted(h.pid for h in hogs)
    assert report["saw"]["roles"]["latency"] == [probe.pid]
    first = report["attempts"][0]
    assert first["candidate"]["base"] in ("latency-protect", "latency-protect-cgroup")
    ex = first["execution"]
    if not ex["deployment"]:
        # A good policy is never refused: only a dynamic stage that could not
        # tell on this loaded host (inconclusive, after the agent verified
        # again) may leave it undeployed; a regression verdict would be false.
        errors = {f["code"] for f in first["findings"] if f["severity"] == "error"}
        assert ex["fixes"] and errors == {"inconclusive"}, (ex, first["findings"])
    elif first["candidate"]["base"] == "latency-protect":
        # The hogs were really moved out of the probe's way, then put back.
        assert all(watch.saw(h.pid, policy=os.SCHED_IDLE) for h in hogs), watch.seen
    assert not watch.saw(probe.pid, policy=os.SCHED_IDLE)
    _restored([h.pid for h in hogs] + [probe.pid])
    assert "tokens" in out.stdout and report["cost"]["usd"] == 0.0


@pytest.fixture(scope="module")
def cachejob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's cache-batch job (schedcp_bench/native/cachejob.c), compiled."""
    return build_native(tmp_path_factory.mktemp("native"), "cachejob")


@pytest.mark.slow
def test_cpu_batch_gets_batch_throughput_and_is_restored(agent_daemon, procs: Procs,
                                                         agent_uid: int, cachejob: Path) -> None:
    # The benchmark's cache-batch workload: two cache-bound jobs per CPU,
    # where the benchmark shows the pick raising throughput (docs/agent.md).
    log = procs.dir / "jobs.jsonl"
    jobs = [procs.start([str(cachejob), str(WORKING_SET_KB), str(log), "500"])
                for _ in range(JOBS_PER_CPU * ncpu())]
    time.sleep(1.0)
    with KnobWatcher(lambda: [j.pid for j in jobs]) as watch:
        rc, report, err = run_agent(agent_daemon.address, [
            "--goal", "throughput", "--match", procs.regex, "--revert-at-end",
            "--max-iterations", "1"], agent_uid)
    assert report is not None, err
    print(_summary(report))
    assert report["saw"]["shape"] == "cpu-batch", report["saw"]["evidence"]
    _deep_profiling_only_where_needed(report["saw"])
    assert report["attempts"][0]["candidate"]["base"] == "batch-throughput"
    assert report["attempts"][0]["execution"]["state"] in ("active", "reverted")
    # On a loaded host a job can be starved below the cpu-bound line while
    # the agent watches (seen in CI with spinners: 0.92 and ~0.07 cores): the
    # agent then rightly leaves it alone.  Every job it did classify must get
    # the policy, and only the jobs may be in the role.
    batch = report["saw"]["roles"]["batch"]
    assert batch and set(batch) <= {j.pid for j in jobs}, report["saw"]["evidence"]
    for pid in batch:
        assert watch.saw(pid, policy=os.SCHED_BATCH, nice=5), watch.seen
    _restored([j.pid for j in jobs])
    # Kept (improved beyond noise) and reverted at the end, or rolled back at once
    # as "no gain": either way nothing stays.
    verdict = report["attempts"][0]["verdict"] or {}
    assert rc in (0, 1) and report["kept_deployment"] is None
    assert report["reverted_at_end"] or not verdict.get("goal_met"), report["status"]


@pytest.mark.slow
def test_long_tail_pool_gets_long_job_first(agent_daemon, procs: Procs, agent_uid: int) -> None:
    result = procs.dir / "pool.json"
    driver = procs.start([sys.executable, str(WORKLOADS), "pool", str(result), "39", "0.25",
                          "30", "4"])
    time.sleep(1.0)
    origin = cpu_cgroup(driver.pid)
    shares_seen: dict[int, set[int | None]] = {}

    def tree() -> list[int]:
        pids = descendants(driver.pid)
        for pid in pids:
            try:
                shares_seen.setdefault(pid, set()).add(cgroup_shares(cpu_cgroup(pid)))
            except OSError:
                pass
        return pids

    with KnobWatcher(tree) as watch:
        _rc, report, err = run_agent(agent_daemon.address, [
            "--goal", "makespan", "--pid", str(driver.pid), "--revert-at-end",
            "--max-iterations", "1"], agent_uid)
    assert report is not None, err
    print(_summary(report), Path(result).read_text()[-200:] if result.exists() else "")
    assert report["saw"]["shape"] == "long-tail-batch", report["saw"]["evidence"]
    assert report["saw"]["deep_profiling"] == []  # the structure alone told the shape
    long_pids = report["saw"]["roles"]["long"]
    assert len(long_pids) == 1
    long_pid = long_pids[0]
    # It is the long job: it has used far more CPU than any short job needs (0.25 s).
    stat = Path(f"/proc/{long_pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    assert (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") > 0.5
    assert report["attempts"][0]["candidate"]["base"] == "long-job-first"
    # Applied: the long job sat in the policy's 'long' cgroup with cpu.shares 8192.
    ex = report["attempts"][0]["execution"]
    why = (watch.seen.get(long_pid), ex["state"], ex["reason"], ex["error"],
           report["attempts"][0]["findings"])
    assert watch.saw(long_pid, cgroup_part=".long"), why
    assert 8192 in shares_seen[long_pid]
    # Restored: back in the cgroup it came from, and the policy's cgroups are gone.
    assert cpu_cgroup(long_pid) == origin
    assert cpu_cgroup(driver.pid) == origin
    made = {c for seen in watch.seen.values() for _, _, c in seen if c != origin}
    assert made and not any(cgroup_exists(c) for c in made), made


@pytest.mark.slow
def test_make_churn_command_gets_parallel_build(agent_daemon, procs: Procs,
                                                agent_uid: int) -> None:
    # The agent starts the build itself (-- CMD), as its own user, in a directory it owns.
    marker = str(user_dir(agent_uid, "schedcp-agent-make-"))
    procs.extra_dirs.append(Path(marker))
    script = Path(marker) / "workloads.py"
    shutil.copy(WORKLOADS, script)
    script.chmod(0o644)
    root: list[int] = []

    def tree() -> list[int]:
        if not root:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if cmd.split(b"\0")[1:4] == [str(script).encode(), b"churn",
                                                  marker.encode()]:
                        root.append(int(entry))
                        break
        return descendants(root[0]) if root else []

    with KnobWatcher(tree) as watch:
        _rc, report, err = run_agent(agent_daemon.address, [
            "--goal", "makespan", "--revert-at-end", "--max-iterations", "1", "--",
            sys.executable, str(script), "churn", marker, "20"], agent_uid, timeout=200)
    assert report is not None, err
    print(_summary(report), report.get("command"))
    assert report["saw"]["shape"] == "fork-churn", report["saw"]["evidence"]
    assert report["saw"]["deep_profiling"] == []  # the structure alone told the shape
    assert report["attempts"][0]["candidate"]["base"] == "parallel-build"
    assert report["command"]["exit"] == 0 and report["command"]["seconds"] >= 20
    # The build tree ran as SCHED_BATCH: the driver and processes it forked later.
    batch = [pid for pid, seen in watch.seen.items()
             if any(p == os.SCHED_BATCH for p, _, _ in seen)]
    assert root and root[0] in batch, watch.seen.get(root[0] if root else 0)
    assert len(batch) > 1
    # Restored: the build has exited; --revert-at-end (or the learner) ended the deployment.
    dep = report["attempts"][0]["execution"]["deployment"]
    assert report["kept_deployment"] is None
    info = calls_as(0, agent_daemon.address, [["GetDeployment", "s", [dep]]])[0]
    assert json.loads(info["ok"])["state"] == "reverted", info


def test_unauthorized_user_gets_a_clear_message(agent_daemon, procs: Procs,
                                                test_users) -> None:
    # Three on two CPUs: they wait, so the agent plans (and then meets the refusal)
    # instead of stopping at "nothing to gain here" on an idle host.
    spinners = [procs.worker("spin") for _ in range(3)]
    wait_workers_ready(spinners)
    rc, _report, err = run_agent(agent_daemon.address, [
        "--goal", "throughput", "--match", procs.regex], uid=test_users["nobody"])
    assert rc == 4, err
    assert "not authorized" in err and "docs/agent.md" in err
    assert "org.schedcp.submit" in err or "org.schedcp.verify" in err
    assert "Traceback" not in err
    _restored([s.pid for s in spinners])
