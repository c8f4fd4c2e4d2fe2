"""kill -9 of the daemon at every step of a deployment, then restart: nothing lost."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from schedcpd.deployer import FAULT_STEPS
from tests.deploy.conftest import FAST, QUICK, forced_token, policy_text, verified_token
from tests.harness import call, calls_as, wait_deployment

# The deployment's state transitions recorded before each kill point.
EVENTS_BEFORE = {
    "after_record": ["pending"],
    "after_baseline": ["pending"],
    "after_canary_apply": ["pending", "canary"],
    "after_widen_apply": ["pending", "canary", "canary"],
    "after_active": ["pending", "canary", "canary", "active"],
    "after_trip_decision": ["pending", "canary"],  # a prefix: it may trip when widened
}
# Kill points inside the scheduler plugin's writes (SCHEDCP_FAULT, the
# actuator): between a journal commit and its kernel write, and between the
# write and marking it applied.  The policy writes policy and nice of one
# single-threaded hog in the canary (writes 1-2) and of the other when widened
# (writes 3-4).
WRITE_STEPS = {
    "canary_after_journal_commit": ("after_journal_commit", ["pending"]),
    "canary_after_write": ("after_write", ["pending"]),
    "widen_after_write": ("after_write:3", ["pending", "canary"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("step", FAULT_STEPS + tuple(WRITE_STEPS))
def test_crash_at_every_step_restores(step: str, start_daemon, workload,
                                      daemon_state: Path) -> None:
    state = daemon_state
    # Only a trip needs windows the breaker judges; every other step is reached
    # through windows too short for it to judge (QUICK), so none trips on load.
    windows = FAST if step == "after_trip_decision" else QUICK
    config = windows + "[debug]\nfault_injection = true\n"
    if step in WRITE_STEPS:
        point, before = WRITE_STEPS[step]
        env = {"SCHEDCP_FAULT": point}
        log_line = f"fault injection: SIGKILL at {point.split(':')[0]}"
    else:
        before = EVENTS_BEFORE[step]
        env = {"SCHEDCP_FAULT_AT": step}
        log_line = f"fault injection: SIGKILL at {step}"
    first = start_daemon(config, state_dir=state, env=env)
    hogs = [h.pid for h in workload.hogs]
    groups = [("batch", hogs, '{ policy = "idle", nice = 7 }')]
    targets = hogs
    name = f"crash-{step.replace('_', '-')}"
    text = policy_text(name, groups)
    if step == "after_trip_decision":
        # Only a tripping deployment reaches this step.  A trip whatever else
        # the host runs (as in test_a_policy_guard_overrides_the_default): both
        # hogs share CPU 0 and the policy says its batch group keeps 90 % of
        # its CPU, which the canary (one hog idle beside the other) breaks.
        for pid in hogs:
            os.sched_setaffinity(pid, {0})
        text += '\n[[guard]]\ngroup = "batch"\nmetric = "cpu_share"\nmin_ratio = 0.9\n'
    # The token is forced (test only): what is tested is the crash and the
    # restart, not the verifier (the deploy tests redeem verified tokens), and
    # the verifier's dynamic test writes knobs too (in its sandbox), where a
    # write kill point would fire.
    policy_id = call(first.address, "SubmitPolicy", "s", text)
    token = forced_token(state, first.address, policy_id)
    outcome = calls_as(0, first.address, [["Deploy", "s", [token]]])[0]
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()
    assert log_line in first.log_text()

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
    # Nothing recorded before the crash was lost: the policy, the audit trail,
    # and each transition the deployment made before the kill.
    assert json.loads(call(second.address, "GetPolicy", "s", policy_id))["name"] == name
    audit = json.loads(call(second.address, "GetAudit", "us", 50, "SubmitPolicy"))
    assert audit, "the audit trail survived"
    states = [e["state"] for e in dep["events"]]
    assert states[:len(before)] == before and states[-1] == "reverted", (step, states)
    if step != "after_trip_decision":
        assert len(states) == len(before) + 1, (step, states)
    # A restart mid-deployment is a trip: antipattern on the policy, back-off.
    assert dep["trip"]["guard"] == "daemon_restart", dep["trip"]
    history = json.loads(call(second.address, "GetPolicyHistory", "s", policy_id))
    assert [a["metric"] for a in history["antipatterns"]] == ["daemon_restart"], history
    again = calls_as(0, second.address, [["Deploy", "s", [
        forced_token(state, second.address, policy_id)]]])[0]
    assert again.get("error") == "org.schedcp.Control1.Error.Conflict", again
    assert "backing off" in again["message"]


@pytest.mark.slow
def test_fault_injection_is_off_in_the_default_configuration(start_daemon, workload) -> None:
    proc = start_daemon(QUICK, env={"SCHEDCP_FAULT_AT": "after_record",
                                   "SCHEDCP_FAULT": "after_write"})
    hogs = [h.pid for h in workload.hogs]
    _, token = verified_token(proc.address, policy_text(
        "crash-off", [("batch", hogs, '{ policy = "idle", nice = 7 }')]))
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert proc.proc.poll() is None, proc.log_text()  # not killed
    assert info["state"] == "active", info["events"]
    log = proc.log_text()
    assert "SCHEDCP_FAULT_AT=after_record ignored: [debug] fault_injection is off" in log
    assert "SCHEDCP_FAULT=after_write ignored" in log
    call(proc.address, "Rollback", "s", dep)
