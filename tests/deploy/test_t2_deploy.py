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

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import FAST, QUICK, forced_token
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


HOST_BTF = Path("/sys/kernel/btf/vmlinux")


def binding(fake: FakeSchedExt, name: str = "vtime") -> dict[str, str]:
    """The artifact claim a verifier would sign for the FAKE object on this kernel."""
    return {"object_sha256": hashlib.sha256((fake.objects / f"{name}.bpf.o").read_bytes())
            .hexdigest(), "btf_sha256": hashlib.sha256(HOST_BTF.read_bytes()).hexdigest()}


def t2_token(proc, fake: FakeSchedExt, policy_id: str, **kwargs) -> str:
    return forced_token(proc.state_dir, proc.address, policy_id,
                        artifact=kwargs.pop("artifact", binding(fake)), **kwargs)


def deploy_t2(proc, fake: FakeSchedExt, name: str) -> tuple[str, str]:
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name=name))
    token = t2_token(proc, fake, policy_id)
    return policy_id, call(proc.address, "Deploy", "s", token)


def test_t2_plan_deploy_and_rollback(start_daemon, fake: FakeSchedExt) -> None:
    proc = start_daemon(FAST + fake.config())
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name="t2-deploy"))
    token = t2_token(proc, fake, policy_id)
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
    # The loader loads the daemon's private copy of the bytes the token binds.
    copy = proc.state_dir / "plugins" / "scheduler" / "scx" / dep / "vtime.bpf.o"
    assert b"slice_us=3000" in cmdline and str(copy).encode() in cmdline
    assert copy.read_bytes() == (fake.objects / "vtime.bpf.o").read_bytes()
    assert b"--partial" not in cmdline  # no targets: the canary is the machine
    assert f"loader pid {pid}" in info["events"][1]["reason"]
    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert not fake.loader_running() and fake.state() == "disabled"


MISMATCH = "org.schedcp.Control1.Error.ObjectMismatch"


def test_t2_token_binds_the_object_and_the_kernel(start_daemon, fake: FakeSchedExt) -> None:
    proc = start_daemon(FAST + fake.config())
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name="t2-binding"))
    good = t2_token(proc, fake, policy_id)
    # A token that binds no object, or another kernel's BTF, is refused.
    unbound = forced_token(proc.state_dir, proc.address, policy_id)
    assert call_error(proc.address, "Deploy", "s", unbound) == MISMATCH
    other_kernel = t2_token(proc, fake, policy_id,
                            artifact={**binding(fake), "btf_sha256": "1" * 64})
    assert call_error(proc.address, "Deploy", "s", other_kernel) == MISMATCH
    # Tampered bytes: the object on disk is no longer the one the token binds.
    obj = fake.objects / "vtime.bpf.o"
    original = obj.read_bytes()
    obj.write_bytes(original + b"tampered")
    result = calls_as(0, proc.address, [["Deploy", "s", [good]]])[0]
    assert result.get("error") == MISMATCH, result
    assert "rebuilt or tampered" in result["message"] and fake.loader_pid() is None
    # The refusal did not consume the token: with the right bytes back it deploys.
    obj.write_bytes(original)
    dep = call(proc.address, "Deploy", "s", good)
    info = wait_deployment(proc.address, dep, {"canary", "active", "reverted", "failed"})
    assert info["state"] in ("canary", "active"), info["events"]
    wait_until(fake.loader_running, 15, "the fake sched_ext")
    json.loads(call(proc.address, "Rollback", "s", dep))
    wait_until(lambda: fake.state() == "disabled", 15, "the fake sched_ext")


SOURCE_T2 = """[policy]
name = "t2-from-source"
description = "a T2 policy given as C source, deployed where nothing can build it"
track = "T2"

[scx]
source = \'\'\'
{source}\'\'\'
"""


def test_t2_source_policy_deploys_the_verified_object_kept_by_digest(
        start_daemon, fake: FakeSchedExt, tmp_path: Path) -> None:
    """A daemon that cannot build (this host has no sched_ext BTF) deploys the object
    its verifier loaded, found by the token's digest in ``scx_verified_objects``."""
    store = tmp_path / "verified"
    store.mkdir()
    claim = binding(fake)
    kept = store / f"{claim['object_sha256']}.bpf.o"
    kept.write_bytes((fake.objects / "vtime.bpf.o").read_bytes())
    proc = start_daemon(FAST + fake.config() + f'scx_verified_objects = "{store}"\n')
    source = (Path(__file__).resolve().parents[2] / "bpf" / "scx" / "vtime.bpf.c").read_text()
    policy_id = call(proc.address, "SubmitPolicy", "s", SOURCE_T2.format(source=source))
    # The kept file is checked like any other: other bytes under the digest are refused.
    kept.write_bytes(kept.read_bytes() + b"tampered")
    refused = calls_as(0, proc.address, [["Deploy", "s", [t2_token(proc, fake, policy_id)]]])[0]
    assert refused.get("error") == MISMATCH and "rebuilt or tampered" in refused["message"]
    kept.write_bytes((fake.objects / "vtime.bpf.o").read_bytes())
    dep = call(proc.address, "Deploy", "s", t2_token(proc, fake, policy_id))
    info = wait_deployment(proc.address, dep, {"canary", "active", "reverted", "failed"})
    assert info["state"] in ("canary", "active"), info["events"]
    wait_until(fake.loader_running, 15, "the fake sched_ext")
    copy = proc.state_dir / "plugins" / "scheduler" / "scx" / dep / kept.name
    assert copy.read_bytes() == kept.read_bytes()
    json.loads(call(proc.address, "Rollback", "s", dep))
    wait_until(lambda: fake.state() == "disabled", 15, "the fake sched_ext")


@pytest.mark.parametrize("fault", ["loader_dies", "ejected", "error_events"])
def test_t2_breaker_reverts(fault: str, start_daemon, fake: FakeSchedExt) -> None:
    proc = start_daemon(FAST + fake.config())
    policy_id, dep = deploy_t2(proc, fake, f"t2-{fault.replace('_', '-')}")
    # A loader death is injected in the canary; the others once the deployment is active.
    wait_deployment(proc.address, dep, {"canary"} if fault == "loader_dies" else {"active"})
    wait_until(fake.loader_running, 15, "the fake sched_ext")
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
    wait_until(lambda: not fake.loader_running(), 15, "the fake sched_ext")
    assert fake.state() == "disabled"
    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    assert history["antipatterns"][0]["metric"] == guard
    # Backing off: the same version is refused for a while.
    token = t2_token(proc, fake, policy_id)
    assert call_error(proc.address, "Deploy", "s", token) == "org.schedcp.Control1.Error.Conflict"


T2_STEPS = ("scx_after_journal", "scx_after_start", "after_canary_apply", "after_widen_apply",
            "after_active", "after_trip_decision")


@pytest.mark.slow
@pytest.mark.parametrize("step", T2_STEPS)
def test_t2_crash_at_every_step_leaves_no_loader(step: str, start_daemon, fake: FakeSchedExt,
                                                 daemon_state: Path) -> None:
    state = daemon_state
    # The trip is judged in the canary (FAST); the other steps go by quickly (QUICK).
    windows = FAST if step == "after_trip_decision" else QUICK
    config = windows + fake.config() + "fault_injection = true\n[debug]\nfault_injection = true\n"
    first = start_daemon(config, state_dir=state, env={"SCHEDCP_FAULT_AT": step})
    policy_id = call(first.address, "SubmitPolicy", "s", T2.format(name="t2-crash"))
    token = forced_token(state, first.address, policy_id, artifact=binding(fake))
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
    wait_until(lambda: fake.state() == "disabled", 15, "the fake sched_ext")


@pytest.mark.skipif(Path("/sys/kernel/sched_ext").is_dir(), reason="this kernel has sched_ext")
def test_t2_without_sched_ext_fails_cleanly(start_daemon, tmp_path: Path) -> None:
    proc = start_daemon(FAST)
    policy_id = call(proc.address, "SubmitPolicy", "s", T2.format(name="t2-nokernel"))
    dep = call(proc.address, "Deploy", "s", forced_token(
        proc.state_dir, proc.address, policy_id, artifact={"object_sha256": "0" * 64,
                                                          "btf_sha256": "0" * 64}))
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "failed", info["events"]
    assert "NotSupported" in info["reason"] and "/sys/kernel/sched_ext" in info["reason"]
    # The refusal is an answer, not a plugin fault: the scheduler plugin stays enabled.
    status = json.loads(call(proc.address, "GetStatus"))
    assert "scheduler" in json.dumps(status.get("subsystems", status)), status
    assert "plugin scheduler disabled" not in proc.log_text()
