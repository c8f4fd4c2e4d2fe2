"""An io policy through the real daemon over D-Bus: submit, verify, deploy, roll back.

The policy sets a scratch loop device's scheduler and queue and puts a real
fio writer on it at I/O priority idle.  Verification runs every stage for
real (the dynamic one is fio on a loop device of its own); the deployment
goes through the deployer's canary and circuit breaker, guarded by the io
plugin's metrics; rollback puts every value back.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from plugins.io import blockdev, ioprio
from plugins.io.sandbox import ScratchDevice
from tests.deploy.conftest import FAST
from tests.harness import call, wait_deployment


@pytest.mark.slow
def test_io_policy_verified_deployed_and_rolled_back_over_dbus(
        start_daemon, loopdev: ScratchDevice, writer: subprocess.Popen[bytes]) -> None:
    dev = loopdev.name
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests")}
    sched = "kyber" if before["scheduler"] != "kyber" else "mq-deadline"
    pids = ioprio.Selector([], [writer.pid]).scan()
    prio = {p: ioprio.get(p) for p in pids}
    text = (f'[policy]\nname = "io-dbus"\nsubsystem = "io"\n'
            f'description = "io deployment test on {dev}"\n\n'
            f'[[device]]\nname = "{dev}"\nscheduler = "{sched}"\nnr_requests = 16\n\n'
            f'[[group]]\nname = "writer"\nmatch = {{ pids = [{writer.pid}] }}\n'
            f'ioprio = {{ class = "idle" }}\n')
    proc = start_daemon(FAST)
    status = json.loads(call(proc.address, "GetStatus"))
    caps = status["subsystems"]["io"]["capabilities"]
    assert caps["ioprio"]["available"] and caps["scheduler.kyber"]["available"]
    assert not caps["cgroup.v2.io.max"]["available"] and caps["cgroup.v2.io.max"]["reason"]
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    assert json.loads(call(proc.address, "GetPolicy", "s", policy_id))["subsystem"] == "io"
    token, report_text = call(proc.address, "VerifyPolicy", "s", policy_id)
    report = json.loads(report_text)
    assert token and report["passed"], report
    stages = {s["stage"]: s for s in report["stages"]}
    # The dynamic stage ran fio on a loop device of its own, with and without the policy.
    [measured] = [f for f in stages["dynamic"]["findings"] if f["code"] == "measured"]
    assert measured["evidence"]["policy"]["io_mib"] > 0, measured
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"}, timeout=60)
    assert info["state"] == "active", info["events"]
    assert "machine-wide" in info["events"][1]["reason"]
    assert blockdev.current(dev, "scheduler") == sched
    assert blockdev.current(dev, "nr_requests") == "16"
    assert {ioprio.get(p) for p in pids} == {ioprio.value("idle", 4)}
    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert {k: blockdev.current(dev, k) for k in before} == before
    assert {p: ioprio.get(p) for p in pids} == prio
    outcomes = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))["outcomes"]
    assert [o["outcome"] for o in outcomes] == ["active", "rolled-back"], outcomes
    assert outcomes[0]["metrics"]["writer"]["role"] == "donor"
