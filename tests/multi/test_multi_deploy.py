"""A policy of two subsystems (the REAL scheduler and io plugins) as one, over D-Bus.

The policy's scheduler part renices a real fio writer; its io part sets
a scratch loop device's scheduler and queue and puts the writer at I/O
priority idle.  Verified (every stage of both parts), deployed through the
canary and the breaker, rolled back: every value of both parts comes back.
Then the io part is made to fail for real (the kernel refuses its
nr_requests on a device with no I/O scheduler): the scheduler part, already
applied, is restored exactly and the deployment ends failed naming the part.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from plugins.io import blockdev, ioprio
from plugins.io.sandbox import ScratchDevice
from schedcpd.journal import Journal
from tests.deploy.conftest import FAST, forced_token
from tests.harness import call, wait_deployment
from tests.multi.conftest import ioprio_of, nice_of, threads


def combined(name: str, pid: int, device: str) -> str:
    """A scheduler+io policy on ``pid``, with the io part's ``device`` table lines."""
    return (f'[policy]\nname = "{name}"\nsubsystems = ["scheduler", "io"]\n'
            f'description = "multi-subsystem test {name}"\n\n'
            f'[[scheduler.group]]\nname = "writer"\nmatch = {{ pid = [{pid}] }}\n'
            f'task = {{ nice = 7 }}\n\n'
            f'[[io.device]]\n{device}\n\n'
            f'[[io.group]]\nname = "writer"\nmatch = {{ pids = [{pid}] }}\n'
            f'ioprio = {{ class = "idle" }}\n')


@pytest.mark.slow
def test_combined_policy_verified_deployed_and_rolled_back_as_one(
        start_daemon, loopdev: ScratchDevice, writer: subprocess.Popen[bytes]) -> None:
    dev = loopdev.name
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests")}
    sched = "kyber" if before["scheduler"] != "kyber" else "mq-deadline"
    tids = threads(ioprio.Selector([], [writer.pid]).scan())
    nice, prio = nice_of(tids), ioprio_of(tids)
    assert set(nice.values()) == {0}
    text = combined("multi-dbus", writer.pid,
                    f'name = "{dev}"\nscheduler = "{sched}"\nnr_requests = 16')
    proc = start_daemon(FAST)
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    policy = json.loads(call(proc.address, "GetPolicy", "s", policy_id))
    assert policy["subsystem"] == "scheduler+io"
    token, report_text = call(proc.address, "VerifyPolicy", "s", policy_id)
    report = json.loads(report_text)
    assert token and report["passed"], json.dumps(report, indent=1)
    assert report["scope"] == {"subsystems": ["scheduler", "io"],
                               "groups": ["scheduler/writer", "io/writer"]}
    stages = {s["stage"]: s for s in report["stages"]}
    # Both parts' dynamic tests ran (each in its own plugin's sandbox), in order.
    assert [p["subsystem"] for p in stages["dynamic"]["parts"]] == ["scheduler", "io"]
    assert all(p["verdict"] == "passed" for p in stages["dynamic"]["parts"])

    # Advice mode names each part's values, writes nothing, leaves the token usable.
    plan = json.loads(call(proc.address, "PlanDeployment", "s", token))["plan"]
    assert set(plan["parts"]) == {"scheduler", "io"}
    assert {c["target"].split(":")[0] for c in plan["changes"]} == {"scheduler", "io"}, plan
    assert set(plan["targets"]) == {"scheduler/writer", "io/writer"}
    assert blockdev.current(dev, "scheduler") == before["scheduler"]
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"}, timeout=90)
    assert info["state"] == "active", info["events"]
    assert info["subsystem"] == "scheduler+io"
    # Both parts are live on the real kernel.
    assert blockdev.current(dev, "scheduler") == sched
    assert blockdev.current(dev, "nr_requests") == "16"
    live = [t for t in tids if t in nice_of(threads([writer.pid]))]
    assert live and set(nice_of(live).values()) == {7}
    assert set(ioprio_of(live).values()) == {ioprio.value("idle", 4)}

    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert {e["subsystem"] for e in result["restore"]["entries"]} == {"scheduler", "io"}
    assert {k: blockdev.current(dev, k) for k in before} == before
    assert nice_of(live) == {t: nice[t] for t in live}
    assert ioprio_of(live) == {t: prio[t] for t in live}
    outcomes = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))["outcomes"]
    assert [o["outcome"] for o in outcomes] == ["active", "rolled-back"], outcomes
    # The breaker watched both parts' groups, each with its own plugin's metrics.
    assert {"scheduler/writer", "io/writer"} <= set(outcomes[0]["metrics"]), outcomes[0]


@pytest.mark.slow
def test_second_part_fails_and_the_first_is_restored_exactly(
        start_daemon, loopdev: ScratchDevice, writer: subprocess.Popen[bytes],
        tmp_path) -> None:
    dev = loopdev.name
    if blockdev.current(dev, "scheduler") != "none":
        blockdev_path = f"/sys/block/{dev}/queue/scheduler"
        with open(blockdev_path, "w") as f:  # our own loop device: no I/O scheduler
            f.write("none")
    before = {k: blockdev.current(dev, k) for k in ("scheduler", "nr_requests",
                                                    "read_ahead_kb")}
    tids = threads(ioprio.Selector([], [writer.pid]).scan())
    nice, prio = nice_of(tids), ioprio_of(tids)
    # read_ahead_kb is written, then the kernel refuses nr_requests 4096 above the
    # hardware queue depth of a device without an I/O scheduler (EINVAL).
    text = combined("multi-fail", writer.pid,
                    f'name = "{dev}"\nread_ahead_kb = 512\nnr_requests = 4096')
    state = tmp_path / "state"
    proc = start_daemon(FAST, state_dir=state)
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    # What is tested is the deployment's all-or-nothing, not the verifier.
    dep = call(proc.address, "Deploy", "s", forced_token(state, proc.address, policy_id))
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"}, timeout=60)
    assert info["state"] == "failed", info["events"]
    reason = info["reason"]
    assert "PartFailed" in reason and "part 'io' (2 of 2) failed to apply" in reason, reason
    assert "nr_requests" in reason and "scheduler (" in reason, reason
    # The scheduler part had been applied (its journal says so) and is restored exactly.
    log = proc.log_text()
    assert "part 'io' (2 of 2) failed" in log and "restoring scheduler, io" in log, log
    live = [t for t in tids if t in nice_of(threads([writer.pid]))]
    assert live and nice_of(live) == {t: nice[t] for t in live}
    assert ioprio_of(live) == {t: prio[t] for t in live}
    assert {k: blockdev.current(dev, k) for k in before} == before
    # The journal shows both parts wrote (and both were put back) under this deployment.
    journal = Journal(state / "journal.db")
    try:
        entries = journal.entries(owner=dep)
    finally:
        journal.close()
    by_part = {s: {(e.key.split(":")[0], e.state) for e in entries if e.subsystem == s}
               for s in ("scheduler", "io")}
    assert by_part["scheduler"] and all(st == "restored" for _, st in by_part["scheduler"])
    assert ("queue", "restored") in by_part["io"], by_part


@pytest.mark.slow
def test_a_device_removed_mid_deployment_trips_and_every_part_is_restored(
        start_daemon, writer: subprocess.Popen[bytes], tmp_path) -> None:
    # A second scratch device of our own for the io part, removed while the policy is active.
    gone = ScratchDevice(32, parent=tmp_path, direct_io=False)
    try:
        tids = threads(ioprio.Selector([], [writer.pid]).scan())
        nice, prio = nice_of(tids), ioprio_of(tids)
        text = combined("multi-trip", writer.pid, f'name = "{gone.name}"\nread_ahead_kb = 512')
        state = tmp_path / "state"
        proc = start_daemon(FAST, state_dir=state)
        policy_id = call(proc.address, "SubmitPolicy", "s", text)
        dep = call(proc.address, "Deploy", "s", forced_token(state, proc.address, policy_id))
        info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"}, timeout=60)
        assert info["state"] == "active", info["events"]
        live = [t for t in tids if t in nice_of(threads([writer.pid]))]
        assert live and set(nice_of(live).values()) == {7}
        gone.close()
        info = wait_deployment(proc.address, dep, {"reverted", "failed"}, timeout=30)
    finally:
        if gone.name and blockdev.identity(gone.name) is not None:
            gone.close()
    assert info["state"] == "reverted", info["events"]
    assert info["trip"]["guard"] == "device_removed" and info["trip"]["group"] == "io", info
    assert f"device {gone.name} was removed" in info["reason"]
    # The scheduler part is restored exactly; the io part's device is gone (recorded skip).
    assert nice_of(live) == {t: nice[t] for t in live}
    assert ioprio_of(live) == {t: prio[t] for t in live}
