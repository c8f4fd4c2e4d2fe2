"""The agent sees the whole machine (issue 26, item 1): competitors outside --match.

A latency probe (the sandbox's 2 ms periodic worker) runs beside three
CPU-bound shell loops on this 2-CPU machine; the agent is given only the
probe (``--match``).  The profile must name the loops as competitors.  With
``--may-act-on neighbours`` (narrowed to the loops by ``--neighbours-match``:
on this shared host other tenants' processes are competitors too, and a test
touches only what it created) the deployment puts the loops at SCHED_IDLE
and protects the probe; without the flag the loops are not touched and the
report proposes that action.  Every process here is the test's own and
stopped at the end; the deployment is rolled back.

The probe's wake p99 before and with the deployment is measured and
printed (with the foreign load of each window), not asserted: the issue's
10x is a performance goal, for a benchmark (DEVELOPERS.md), and it is not
met yet: one run saw 4.7 ms before and 7.3 ms with the loops at SCHED_IDLE
at 0.5 CPU of foreign load, and an idle clean-clone CI run failed the
ratio once (stop 30's closing note).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from schedcp_bench import quiet
from tests.agent.conftest import KnobWatcher, probe_p99, run_agent
from tests.harness import Procs, calls_as, wait_workers_ready

LOOP = "while :; do :; done"
QUIET_ENOUGH = 0.5
"""Foreign load (CPUs) under which a window can judge the 10x ratio."""


@pytest.fixture
def loops() -> Iterator[tuple[Procs, list[subprocess.Popen[bytes]]]]:
    """Three CPU-bound shell loops whose command lines name their own directory."""
    with Procs("schedcp-agent-loops-") as procs:
        yield procs, [procs.start(["sh", "-c", LOOP, procs.dir.as_posix()])
                      for _ in range(3)]


def _p99(probe: subprocess.Popen[bytes], procs: Procs,
         ours: list[int]) -> tuple[float | None, float]:
    """The probe's wake p99 (us) over 1.5 s and the foreign load (CPUs) meanwhile."""
    meter = quiet.LoadMeter(ours)
    meter.start()
    p99 = probe_p99(probe, procs.dir, 1.5)
    return p99, round(meter.stop().foreign_cpus, 2)


def _scenario(procs: Procs, loop_procs: list[subprocess.Popen[bytes]]
              ) -> subprocess.Popen[bytes]:
    probe = procs.worker("periodic")
    wait_workers_ready([probe])
    # The daemon's summary (5 s window in these tests) must see the loops busy.
    time.sleep(3.0)
    assert all(p.poll() is None for p in [probe, *loop_procs])
    return probe


def _competitors_named(report: dict, loop_pids: list[int]) -> None:
    saw = report["saw"]
    named = {c["pid"]: c for c in saw["competitors"]}
    assert set(loop_pids) <= set(named), "\n".join([json.dumps(saw["competitors"]),
                                                    *saw["evidence"]])
    for pid in loop_pids:
        assert named[pid]["comm"] == "sh" and named[pid]["cls"] == "cpu-bound"
        assert named[pid]["cgroup"] and named[pid]["unit"]
    assert any("competitor(s) outside the scope" in e for e in saw["evidence"])
    assert "outside the scope" in saw["text"], saw["text"]
    assert saw["shape"] == "latency-beside-cpu-hogs", saw["evidence"]


def test_with_the_flag_the_competitors_are_demoted_and_the_probe_protected(
        agent_daemon, procs: Procs, loops, agent_uid: int) -> None:
    loop_dir, loop_procs = loops
    loop_pids = [p.pid for p in loop_procs]
    probe = _scenario(procs, loop_procs)
    ours = [probe.pid, *loop_pids, agent_daemon.proc.pid]
    before = _p99(probe, procs, ours)
    with KnobWatcher(lambda: [*loop_pids, probe.pid]) as watch:
        rc, report, err = run_agent(agent_daemon.address, [
            "--goal", "latency", "--match", procs.regex, "--may-act-on", "neighbours",
            "--neighbours-match", loop_dir.regex, "--max-iterations", "1"], agent_uid)
    assert report is not None, err
    dep = report["attempts"][0]["execution"]["deployment"] if report["attempts"] else ""
    after: list[tuple[float | None, float]] = []
    try:
        _competitors_named(report, loop_pids)
        saw = report["saw"]
        assert saw["may_act_on_neighbours"] and saw["roles"]["latency"] == [probe.pid]
        # Only the test's loops may be acted on, whatever else competes on this host.
        assert sorted(saw["roles"]["batch"]) == sorted(loop_pids), saw["roles"]
        assert {c["pid"] for c in saw["competitors"] if c["may_act"]} == set(loop_pids)
        first = report["attempts"][0]
        assert first["candidate"]["base"] == "latency-protect", first["candidate"]
        if not dep:
            # A good policy is never refused: only a dynamic stage that could not tell
            # on this loaded host (twice inconclusive) may leave it undeployed.
            errors = {f["code"] for f in first["findings"] if f["severity"] == "error"}
            assert errors == {"inconclusive"}, (first["execution"], first["findings"])
            pytest.skip("the verifier's dynamic stage was inconclusive twice on this host")
        assert all(watch.saw(p, policy=os.SCHED_IDLE) for p in loop_pids), watch.seen
        assert not watch.saw(probe.pid, policy=os.SCHED_IDLE)
        print(f"status={report['status']} verdict={first['verdict']}")
        if report["kept_deployment"] == dep:
            assert rc == 0 and report["status"] == "improved"
            for _ in range(3):  # while the deployment protects the probe
                after.append(_p99(probe, procs, ours))
                if after[-1][1] < QUIET_ENOUGH:
                    break
    finally:
        if dep:
            calls_as(0, agent_daemon.address, [["Rollback", "s", [dep]]])
    print(f"probe wake p99 (us, foreign CPUs): before {before}, with the loops at "
          f"SCHED_IDLE {after}")
    for pid in loop_pids:
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER, pid


def test_without_the_flag_the_report_proposes_acting_on_the_competitors(
        agent_daemon, procs: Procs, loops, agent_uid: int) -> None:
    _loop_dir, loop_procs = loops
    loop_pids = [p.pid for p in loop_procs]
    probe = _scenario(procs, loop_procs)
    with KnobWatcher(lambda: [*loop_pids, probe.pid]) as watch:
        rc, report, err = run_agent(agent_daemon.address, [
            "--goal", "latency", "--match", procs.regex, "--revert-at-end",
            "--max-iterations", "1"], agent_uid)
    assert report is not None, err
    print(report["status"], report.get("advice"))
    _competitors_named(report, loop_pids)
    saw = report["saw"]
    assert not saw["may_act_on_neighbours"] and "batch" not in saw["roles"]
    assert not any(c["may_act"] for c in saw["competitors"])
    [advice] = report["advice"]
    assert advice.startswith("proposed, not done") and "SCHED_IDLE" in advice
    assert "--may-act-on neighbours" in advice
    # The advice names the neediest competitors (other tenants' may outrank a loop).
    assert any(f"sh[{pid}]" in advice for pid in loop_pids), advice
    # Nothing outside the scope was touched; whatever ran on the probe was undone.
    for pid in loop_pids:
        assert not watch.saw(pid, policy=os.SCHED_IDLE), watch.seen.get(pid)
        assert {p for p, _, _ in watch.seen.get(pid, set())} <= {os.SCHED_OTHER}
    cand = report["attempts"][0]["candidate"] if report["attempts"] else {}
    if cand.get("base") == "latency-protect" and cand.get("rung") in ("configure", "patch"):
        assert any("competitors are outside the scope" in n for n in cand["notes"]), cand
    assert report["kept_deployment"] is None and rc in (0, 1)
    # The text report says the same.
    out = subprocess.run([sys.executable, "-c", "import json,sys\n"
                          "from schedcp_agent.report import render\n"
                          "print(render(json.load(sys.stdin)))"],
                         input=json.dumps(report), capture_output=True, text=True, check=True)
    assert "advice:   proposed, not done" in out.stdout and "competitor: sh[" in out.stdout
