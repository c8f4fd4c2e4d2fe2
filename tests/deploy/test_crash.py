"""kill -9 of the daemon at every step of a deployment, then restart: nothing lost."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from schedcpd.deployer import FAULT_STEPS
from tests.conftest import calls_as
from tests.deploy.conftest import FAST, call, policy_text, verified_token, wait_state


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_crash_at_every_step_restores(step: str, start_daemon, workload,
                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = FAST + "[debug]\nfault_injection = true\n"
    first = start_daemon(config, state_dir=state, env={"SCHEDCP_FAULT_AT": step})
    hogs = [h.pid for h in workload.hogs]
    if step == "after_trip_decision":
        # Only a tripping deployment reaches this step: starve the probe.
        groups = [("probe", [workload.probe.pid], '{ policy = "idle" }')]
        targets = [workload.probe.pid]
    else:
        groups = [("batch", hogs, '{ policy = "idle", nice = 7 }')]
        targets = hogs
    name = f"crash-{step.replace('_', '-')}"
    policy_id, token = verified_token(first.address, policy_text(name, groups))
    outcome = calls_as(0, first.address, [["Deploy", "s", [token]]])[0]
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()
    assert f"fault injection: SIGKILL at {step}" in first.log_text()

    second = start_daemon(FAST, address=first.address, state_dir=state)
    deployments = json.loads(call(second.address, "ListDeployments"))
    assert len(deployments) == 1, deployments
    dep = json.loads(call(second.address, "GetDeployment", "s", deployments[0]["id"]))
    if "ok" in outcome:
        assert outcome["ok"] == dep["id"]
    assert dep["state"] == "reverted", dep["events"]
    assert "restarted mid-deployment" in dep["reason"]
    # Every journaled value is back: policy and nice of every target.
    for pid in targets:
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER, (step, pid)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0, (step, pid)
    # Nothing recorded before the crash was lost.
    assert json.loads(call(second.address, "GetPolicy", "s", policy_id))["name"] == name
    audit = json.loads(call(second.address, "GetAudit", "us", 50, "SubmitPolicy"))
    assert audit, "the audit trail survived"


def test_fault_injection_is_off_in_the_default_configuration(start_daemon, workload) -> None:
    proc = start_daemon(FAST, env={"SCHEDCP_FAULT_AT": "after_record",
                                   "SCHEDCP_FAULT": "after_write"})
    hogs = [h.pid for h in workload.hogs]
    _, token = verified_token(proc.address, policy_text(
        "crash-off", [("batch", hogs, '{ policy = "idle", nice = 7 }')]))
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_state(proc.address, dep, {"active", "reverted", "failed"})
    assert proc.proc.poll() is None, proc.log_text()  # not killed
    assert info["state"] == "active", info["events"]
    log = proc.log_text()
    assert "SCHEDCP_FAULT_AT=after_record ignored: [debug] fault_injection is off" in log
    assert "SCHEDCP_FAULT=after_write ignored" in log
    call(proc.address, "Rollback", "s", dep)
