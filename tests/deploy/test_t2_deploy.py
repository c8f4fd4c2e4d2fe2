"""T2 (sched_ext) deployments on the host, against a FAKE sched_ext.

This host's kernel has no sched_ext, so these tests point the scheduler
plugin at tests/deploy/fake_sched_ext.py (a temporary directory standing in
for /sys/kernel/sched_ext and a fake loader process).  Everything else is
real: the daemon, Deploy with a signed token, the canary, the supervised
loader process, the breaker, the journal, kill -9 and restart.  The real
loader and the kernel's own ejection are proved in the micro-VM
(tests/microvm).  The tokens here are minted with the daemon's key without
running the verifier (whose T2 stages boot the micro-VM): the test-only
"forced deployment" path.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import FAST, forced_token
from tests.deploy.fake_sched_ext import FakeSchedExt
from tests.harness import call, call_error, calls_as, wait_deployment, wait_until

T2 = """[policy]
name = "{name}"
description = "a T2 deployment test ({name})"
track = "T2"

[scx]
scheduler = "vtime"

[scx.params]
slice_us = 3000
"""


@pytest.fixture
def fake() -> Iterator[FakeSchedExt]:
    f = FakeSchedExt()
    try:
        yield f
    finally:
        f.close()


def deploy_t2(proc, name: str) -> tuple[str, str]:
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name=name))
    token = forced_token(proc.state_dir, proc.address, policy_id)
    return policy_id, call(proc.address, "Deploy", "s", token)


def test_t2_plan_deploy_and_rollback(start_daemon, fake: FakeSchedExt) -> None:
    proc = start_daemon(FAST + fake.config())
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name="t2-deploy"))
    token = forced_token(proc.state_dir, proc.address, policy_id)
    plan = json.loads(call(proc.address, "PlanDeployment", "s", token))["plan"]
    changes = {(c["target"], c["knob"]): (c["before"], c["after"]) for c in plan["changes"]}
    assert changes[("sched_ext", "state")] == ("disabled", "enabled")
    assert changes[("sched_ext:schedcp_vtime", "slice_us")] == (5000, 3000)
    assert fake.state() == "disabled" and fake.loader_pid() is None  # the plan started nothing
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "active", info["events"]
    assert [e["state"] for e in info["events"]] == ["pending", "canary", "canary", "active"]
    assert "narrowest scope is the machine" in info["events"][1]["reason"]
    assert fake.state() == "enabled" and fake.ops() == "schedcp_vtime"
    pid = fake.loader_pid()
    assert pid is not None and fake.loader_running()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"slice_us=3000" in cmdline and str(fake.objects / "vtime.bpf.o").encode() in cmdline
    assert f"loader pid {pid}" in info["events"][1]["reason"]
    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert not fake.loader_running() and fake.state() == "disabled"


@pytest.mark.parametrize("fault", ["loader_dies", "ejected", "error_events"])
def test_t2_breaker_reverts(fault: str, start_daemon, fake: FakeSchedExt) -> None:
    proc = start_daemon(FAST + fake.config())
    policy_id, dep = deploy_t2(proc, f"t2-{fault.replace('_', '-')}")
    # A loader death is injected in the canary; the others once the deployment is active.
    wait_deployment(proc.address, dep, {"canary"} if fault == "loader_dies" else {"active"})
    wait_until(fake.loader_running, 15, "the fake loader runs")
    pid = fake.loader_pid()
    assert pid is not None
    if fault == "loader_dies":
        os.kill(pid, signal.SIGKILL)
        expected, guard = "sched_ext loader", "sched_ext_loader"
    elif fault == "ejected":
        fake.eject()
        expected, guard = "the kernel ejected the scheduler", "sched_ext_state"
    else:
        fake.count_errors("SCX_EV_DISPATCH_LOCAL_DSQ_OFFLINE", 3)
        expected, guard = "sched_ext error events rose from 0 to 3", "sched_ext_events"
    info = wait_deployment(proc.address, dep, {"reverted", "failed"})
    assert info["state"] == "reverted", info["events"]
    assert info["reason"].startswith("circuit breaker: ") and expected in info["reason"], info
    assert info["trip"]["guard"] == guard and info["trip"]["decision_to_restore_s"] >= 0
    wait_until(lambda: not fake.loader_running(), 15, "the fake loader stopped")
    assert fake.state() == "disabled"
    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    assert history["antipatterns"][0]["metric"] == guard
    # Backing off: the same version is refused for a while.
    token = forced_token(proc.state_dir, proc.address, policy_id)
    assert call_error(proc.address, "Deploy", "s", token) == "org.schedcp.Control1.Error.Conflict"


T2_STEPS = ("scx_after_journal", "scx_after_start", "after_canary_apply", "after_widen_apply",
            "after_active", "after_trip_decision")


@pytest.mark.parametrize("step", T2_STEPS)
def test_t2_crash_at_every_step_leaves_no_loader(step: str, start_daemon, fake: FakeSchedExt,
                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = FAST + fake.config() + "fault_injection = true\n[debug]\nfault_injection = true\n"
    first = start_daemon(config, state_dir=state, env={"SCHEDCP_FAULT_AT": step})
    policy_id = call(first.address, "SubmitPolicy", "s", T2.format(name="t2-crash"))
    token = forced_token(state, first.address, policy_id)
    outcome = calls_as(0, first.address, [["Deploy", "s", [token]]])[0]
    if step == "after_trip_decision":
        wait_deployment(first.address, outcome["ok"], {"canary"})  # the loader runs
        fake.eject()
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()
    assert f"fault injection: SIGKILL at {step}" in first.log_text()
    second = start_daemon(FAST + fake.config(), address=first.address, state_dir=state)
    deployments = json.loads(call(second.address, "ListDeployments"))
    assert len(deployments) == 1, deployments
    dep = json.loads(call(second.address, "GetDeployment", "s", deployments[0]["id"]))
    assert dep["state"] == "reverted" and "restarted mid-deployment" in dep["reason"], dep
    # No loader left running: the journaled pid (or tag) was found and stopped.
    assert not fake.loader_running(), step
    wait_until(lambda: fake.state() == "disabled", 15, "sched_ext disabled")


@pytest.mark.skipif(Path("/sys/kernel/sched_ext").is_dir(), reason="this kernel has sched_ext")
def test_t2_without_sched_ext_fails_cleanly(start_daemon, tmp_path: Path) -> None:
    proc = start_daemon(FAST)
    _, dep = deploy_t2(proc, "t2-nokernel")
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "failed", info["events"]
    assert "NotSupported" in info["reason"] and "/sys/kernel/sched_ext" in info["reason"]
    # The refusal is an answer, not a plugin fault: the scheduler plugin stays enabled.
    status = json.loads(call(proc.address, "GetStatus"))
    assert "scheduler" in json.dumps(status.get("subsystems", status)), status
    assert "plugin scheduler disabled" not in proc.log_text()


def test_t2_program_plan_names_the_compiled_scheduler(start_daemon, fake: FakeSchedExt) -> None:
    """A scheduler-language policy plans like any T2 policy: the compiled ops and params."""
    proc = start_daemon(FAST + fake.config())
    text = (Path(__file__).resolve().parents[2] / "policies" / "t2" /
            "scxl-latency-hogs.toml").read_text().replace("fast_slice_us = 1000",
                                                          "fast_slice_us = 800")
    policy_id = call(proc.address, "SubmitPolicy", "s", text)
    token = forced_token(proc.state_dir, proc.address, policy_id)
    plan = json.loads(call(proc.address, "PlanDeployment", "s", token))["plan"]
    changes = {(c["target"], c["knob"]): (c["before"], c["after"]) for c in plan["changes"]}
    assert changes[("sched_ext", "root/ops")][1] == "scxl_latency_hogs"
    assert changes[("sched_ext:scxl_latency_hogs", "fast_slice_us")] == (1000, 800)
    assert fake.loader_pid() is None
