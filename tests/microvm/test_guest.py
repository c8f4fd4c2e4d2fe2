"""The project's schedulers, the static loader and the watchdog, in a real sched_ext guest.

One boot (module fixture) runs every scenario in turn; the tests read its
report.  Under TCG a boot and these steps take about 25 s.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugins.scheduler.microvm import GuestResult, MicroVM, job


@pytest.fixture(scope="module")
def guest(vm: MicroVM) -> GuestResult:
    workload = ["/bin/scx_workload", "2", "2", "1"]
    script = (
        job.loader("vtime", vm.object("vtime"), {"slice_us": 3000}, command=workload)
        + job.loader("latency", vm.object("latency"), {"fast_slice_us": 500},
                     command=workload)
        + job.loader("ljf", vm.object("latency"), {"ljf": 1}, command=workload)
        + job.loader("never", vm.object("never_dispatch"), {}, timeout_s=30,
                     command=["/bin/scx_workload", "8", "2", "1"])
        + job.loader("rejected", vm.object("rejected"), {}, attach=False)
        + job.loader("badparam", vm.object("vtime"), {"no_such_knob": 1}, attach=False)
    )
    return vm.run(script, timeout=240)


def _events(result: GuestResult, step: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in result.step(step) if e.get("event") == kind]


def test_guest_boots_with_sched_ext(guest: GuestResult) -> None:
    assert guest.problem() == ""
    assert guest.booted and guest.completed
    assert "cloud" in guest.kernel


@pytest.mark.parametrize("step,ops", [("vtime", "schedcp_vtime"), ("latency", "schedcp_latency"),
                                      ("ljf", "schedcp_latency")])
def test_good_scheduler_attaches_runs_and_detaches(guest: GuestResult, step: str,
                                                   ops: str) -> None:
    attached = guest.first(step, "attached")
    # Attached without --partial: sched_ext runs every task (switch_all 1).
    assert attached == {"event": "attached", "state": "enabled", "ops": ops,
                        "switch_all": "1", "exit_record": True}, guest.step(step)
    assert _events(guest, step, "state") == []  # enabled throughout
    done = guest.first(step, "workload_done")
    assert done is not None and done["status"] == 0
    report = json.loads(next(e["line"] for e in _events(guest, step, "workload")
                             if e["line"].startswith("{")))
    assert report["progress"] is True and report["periods"] > 0
    events = guest.first(step, "events")
    assert events is not None and events["nr_rejected"] == 0
    assert guest.first(step, "detached") == {"event": "detached", "state": "disabled",
                                             "ejected": False}
    exited = guest.first(step, "exited")
    assert exited is not None and exited["error"] is False  # unregistered by us
    assert guest.first(step, "final") == {"event": "final", "status": 0}


def test_parameter_reaches_rodata(guest: GuestResult) -> None:
    assert guest.first("vtime", "param") == {"event": "param", "name": "slice_us",
                                             "value": "3000"}
    stats = guest.first("latency", "stats")
    assert stats is not None and stats["nr_direct"] + stats["nr_fast"] + stats["nr_batch"] > 0


def test_never_dispatching_scheduler_is_ejected(guest: GuestResult) -> None:
    exited = guest.first("never", "exited")
    assert exited is not None and exited["error"] is True, guest.step("never")
    assert exited["reason"] == "runnable task stall"
    assert guest.first("never", "detached") == {"event": "detached", "state": "disabled",
                                                "ejected": True}
    assert guest.first("never", "final") == {"event": "final", "status": 2}
    assert any("schedcp_never" in line and "disabled" in line for line in guest.dmesg)


def test_verifier_rejection_carries_the_log(guest: GuestResult) -> None:
    error = guest.first("rejected", "error")
    assert error is not None and error["stage"] == "load"
    assert "BEGIN PROG LOAD LOG" in error["log"]
    assert "unbounded memory access" in error["log"]
    assert guest.first("rejected", "final") == {"event": "final", "status": 4}


def test_unknown_parameter_is_refused(guest: GuestResult) -> None:
    error = guest.first("badparam", "error")
    assert error is not None and error["stage"] == "param"
    assert "no_such_knob" in error["message"]
    assert guest.first("badparam", "loaded") is None


def test_hanging_boot_is_killed_and_reported(vm: MicroVM) -> None:
    # A bogus init (the job script run as PID 1) that never reports: the
    # boot timeout must kill qemu.
    result = vm.run("sleep 3600\n", append="rdinit=/job/run.sh", boot_timeout=15, timeout=60)
    assert not result.booted
    assert "did not boot within 15 s: killed" in result.timed_out
    assert "killed" in result.problem()
