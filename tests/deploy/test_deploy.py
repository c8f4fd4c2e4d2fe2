"""Deployments on the real kernel: canary to active, breaker trips, holds, plans, rollback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType

from schedcpd.const import MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from tests.deploy.conftest import FAST, QUICK, policy_text, verified_token
from tests.harness import (
    add_match,
    bus_call,
    call,
    call_error,
    calls_as,
    wait_deployment,
    wait_until,
    wait_until_async,
    worker_argv,
)


@pytest.mark.slow
def test_canary_to_active_then_rollback_restores(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    hogs = [h.pid for h in workload.hogs]
    text = policy_text("deploy-protect", [("batch", hogs, '{ policy = "idle" }')])
    policy_id, token = verified_token(proc.address, text)
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "active", info["events"]
    states = [e["state"] for e in info["events"]]
    assert states == ["pending", "canary", "canary", "active"]
    assert "applied to 1 of 2" in info["events"][1]["reason"]
    assert all(os.sched_getscheduler(p) == os.SCHED_IDLE for p in hogs)
    active = calls_as(0, proc.address, [["Get", "ss", [MANAGER_INTERFACE, "ActivePolicies"],
                                          "org.freedesktop.DBus.Properties"]])[0]["ok"]
    assert active == [f"{dep}:deploy-protect"]
    # The token is single-use.
    again = json.loads(json.dumps(call_error(proc.address, "Deploy", "s", token)))
    assert again == "org.schedcp.Control1.Error.TokenReplayed"
    result = json.loads(call(proc.address, "Rollback", "s", dep))
    assert result["state"] == "reverted"
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in hogs)
    assert json.loads(call(proc.address, "GetPolicy", "s", policy_id))["state"] == "proven"
    # History: the measured active outcome, then the rollback with its reason.
    outcomes = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))["outcomes"]
    assert [o["outcome"] for o in outcomes] == ["active", "rolled-back"], outcomes
    batch = outcomes[0]["metrics"]["batch"]
    assert batch["role"] in {"throughput", "donor", "latency"}, batch
    for window in ("baseline", "probation"):
        assert batch[window]["samples"] >= 8, batch
        # A spinning hog: it runs whenever its autogroup gets the CPU.  How much
        # that is depends on what else the host runs (under 0.2 CPU with five
        # busy foreign sessions), so this only says the figure is a real share
        # (0.02 CPU is the breaker's own floor for a meaningful throughput).
        assert batch[window]["cpu_share_median"] > 0.02, batch
    assert outcomes[1]["note"] == "rollback by uid 0" and outcomes[1]["deployment_id"] == dep


@pytest.mark.slow
def test_breaker_reverts_a_policy_that_starves_the_probe(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    # The latency probe itself at SCHED_IDLE beside CPU hogs: passes the verifier
    # (nothing in the policy says the probe matters), but starves in production.
    text = policy_text("deploy-starve", [("probe", [workload.probe.pid], '{ policy = "idle" }')])
    policy_id, token = verified_token(proc.address, text)
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "reverted", info["events"]
    assert info["reason"].startswith("circuit breaker: run-queue wait per run of 'probe'")
    assert info["trip"]["decision_to_restore_s"] >= 0  # the figure: bench/breaker.py
    assert os.sched_getscheduler(workload.probe.pid) == os.SCHED_OTHER
    history = json.loads(call(proc.address, "GetPolicyHistory", "s", policy_id))
    assert history["antipatterns"][0]["metric"] == "wait_per_run_us"
    # Backing off: the same version cannot be redeployed right away.
    _, token2 = verified_token(proc.address, text)
    assert call_error(proc.address, "Deploy", "s", token2) == "org.schedcp.Control1.Error.Conflict"


def test_plan_changes_nothing(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    hog = workload.hogs[0].pid
    _, token = verified_token(proc.address, policy_text(
        "deploy-plan", [("batch", [hog], '{ policy = "batch", nice = 5 }')]))
    plan = json.loads(call(proc.address, "PlanDeployment", "s", token))
    # Exactly what would be written, with the live value before and the new one.
    changes = {c["knob"]: c for c in plan["plan"]["changes"]
               if c["target"].startswith(f"task:{hog}:")}
    assert set(changes) >= {"policy", "nice"}, plan
    assert all(c["status"] == "dry-run" for c in changes.values()), plan
    assert (changes["nice"]["before"], changes["nice"]["after"]) == (0, 5), plan
    assert "batch" in str(changes["policy"]["after"]).lower(), plan
    assert "batch" not in str(changes["policy"]["before"]).lower(), plan
    assert os.sched_getscheduler(hog) == os.SCHED_OTHER and os.getpriority(
        os.PRIO_PROCESS, hog) == 0
    # The plan did not use the token up.
    dep = call(proc.address, "Deploy", "s", token)
    assert dep.startswith("dep-")


def test_hold_is_released_when_the_client_disconnects(start_daemon, workload) -> None:
    proc = start_daemon(FAST.replace("full_seconds = 2.0", "full_seconds = 30.0"))
    hog = workload.hogs[0].pid
    _, token = verified_token(proc.address, policy_text(
        "deploy-hold", [("batch", [hog], '{ policy = "idle" }')]))

    async def hold_and_leave() -> str:
        bus = await MessageBus(bus_address=proc.address).connect()
        dep = (await bus_call(bus, "Deploy", "s", token)).body[0]
        await bus_call(bus, "HoldDeployment", "s", dep)
        bus.disconnect()
        return dep

    dep = asyncio.run(hold_and_leave())
    info = wait_deployment(proc.address, dep, {"reverted", "failed"}, timeout=15)
    assert "disconnected" in info["reason"]
    assert os.sched_getscheduler(hog) == os.SCHED_OTHER


@pytest.mark.slow
def test_admin_override_is_reported_on_the_deployment(start_daemon, workload) -> None:

    proc = start_daemon(FAST.replace("full_seconds = 2.0", "full_seconds = 30.0"))
    hog = workload.hogs[0].pid
    _, token = verified_token(proc.address, policy_text(
        "deploy-override", [("batch", [hog], '{ nice = 5 }')]))
    dep = call(proc.address, "Deploy", "s", token)
    wait_deployment(proc.address, dep, {"canary"})
    wait_until(lambda: os.getpriority(os.PRIO_PROCESS, hog) == 5, 10, "the canary's nice")
    os.setpriority(os.PRIO_PROCESS, hog, 3)  # the admin knows better
    info = wait_until(lambda: (i := json.loads(call(proc.address, "GetDeployment", "s", dep)))
                      ["overridden"] and i, 15, "the override reported", interval=0.3)
    assert info["overridden"][0]["key"].endswith(f"{hog}:nice") or "nice" in str(
        info["overridden"][0])
    call(proc.address, "Rollback", "s", dep)
    assert os.getpriority(os.PRIO_PROCESS, hog) == 3  # left as the admin set it


@pytest.mark.slow
def test_a_policy_guard_overrides_the_default(start_daemon, workload) -> None:
    proc = start_daemon(FAST)
    hogs = [h.pid for h in workload.hogs]
    # The same move as the canary test (hogs to SCHED_IDLE), but this policy
    # says its batch group must keep 90 % of its CPU: the canary (one hog idle
    # beside the other) breaks that, so the breaker reverts it.  Both hogs
    # share one CPU, so the idle one loses its share whatever else the host
    # runs (spread over two idle CPUs it would keep it).
    for pid in hogs:
        os.sched_setaffinity(pid, {0})
    text = policy_text("deploy-guarded", [("batch", hogs, '{ policy = "idle" }')]) + (
        '\n[[guard]]\ngroup = "batch"\nmetric = "cpu_share"\nmin_ratio = 0.9\n')
    _, token = verified_token(proc.address, text)
    dep = call(proc.address, "Deploy", "s", token)
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "reverted", info["events"]
    assert "CPU share of 'batch'" in info["reason"] and "below 90%" in info["reason"]
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in hogs)


def test_bad_guards_are_rejected_by_name(start_daemon) -> None:
    proc = start_daemon(FAST)
    base = policy_text("deploy-badguard", [("batch", [1], '{ nice = 1 }')])
    for guard, field in (('group = "nope"\nmetric = "cpu_share"\nmin_ratio = 0.5', "group"),
                         ('group = "batch"\nmetric = "speed"\nmin_ratio = 0.5', "metric"),
                         ('group = "batch"\nmetric = "cpu_share"\nmin_ratio = 5', "min_ratio")):
        error = calls_as(0, proc.address, [["SubmitPolicy", "s", [
            f"{base}\n[[guard]]\n{guard}\n"]]])[0]
        assert error["error"] == "org.schedcp.Control1.Error.InvalidArgument"
        assert f"guard[0].{field}" in error["message"], error


@pytest.mark.slow
def test_signals_announce_every_transition(start_daemon, workload) -> None:
    """DeploymentChanged for each state, PropertiesChanged(ActivePolicies) when it changes.

    The signals, not the breaker, are under test: QUICK windows (no guard judged).
    """
    proc = start_daemon(QUICK)
    hogs = [h.pid for h in workload.hogs]
    _, token = verified_token(proc.address, policy_text(
        "deploy-signals", [("batch", hogs, '{ policy = "idle" }')]))

    async def watch() -> tuple[str, list[tuple[str, list]]]:
        bus = await MessageBus(bus_address=proc.address).connect()
        seen: list[tuple[str, list]] = []

        def on_message(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.path == OBJECT_PATH:
                seen.append((msg.member, msg.body))

        bus.add_message_handler(on_message)
        await add_match(bus, f"type='signal',path='{OBJECT_PATH}'")

        async def mgr(member: str, *body: str) -> str:
            return str((await bus_call(bus, member, "s" * len(body), *body)).body[0])

        dep = await mgr("Deploy", token)

        async def active_announced() -> bool:
            return json.loads(await mgr("GetDeployment", dep))["state"] != "pending" and any(
                b[:2] == [dep, "active"] for m, b in seen if m == "DeploymentChanged")

        await wait_until_async(active_announced, 30, "DeploymentChanged(active)", interval=0.1)
        await mgr("Rollback", dep)

        def reverted_announced() -> bool:
            return any(b[:2] == [dep, "reverted"] for m, b in seen if m == "DeploymentChanged") \
                and any(m == "PropertiesChanged" and b[0] == MANAGER_INTERFACE
                        and "ActivePolicies" in b[1] and b[1]["ActivePolicies"].value == []
                        for m, b in seen)

        await wait_until_async(reverted_announced, 10, "DeploymentChanged(reverted)")
        bus.disconnect()
        return dep, seen

    dep, seen = asyncio.run(watch())
    changed = [b for m, b in seen if m == "DeploymentChanged"]
    assert all(b[0] == dep and b[2] for b in changed), changed  # each with its reason
    states = [b[1] for b in changed]
    assert states[-2:] == ["active", "reverted"] and "canary" in states, states
    active = [b[1]["ActivePolicies"].value for m, b in seen
              if m == "PropertiesChanged" and b[0] == MANAGER_INTERFACE]
    assert [f"{dep}:deploy-signals"] in active and active[-1] == [], active


@pytest.mark.slow
def test_a_tripped_version_is_refused_while_it_backs_off(start_daemon, workload) -> None:
    """The trip and the refusal end to end; the doubling, on a moved clock: test_backoff.py."""
    proc = start_daemon(FAST)  # backoff_seconds = 30
    text = policy_text("deploy-backoff", [("probe", [workload.probe.pid], '{ policy = "idle" }')])
    tokens = [verified_token(proc.address, text)[1] for _ in range(2)]
    dep = call(proc.address, "Deploy", "s", tokens[0])
    info = wait_deployment(proc.address, dep, {"active", "reverted", "failed"})
    assert info["state"] == "reverted", info["events"]
    result = calls_as(0, proc.address, [["Deploy", "s", [tokens[1]]]])[0]
    assert result.get("error") == "org.schedcp.Control1.Error.Conflict", result
    match = re.search(r"backing off for (\d+) more seconds", result["message"])
    assert match and 0 < float(match.group(1)) <= 30, result["message"]


def _spinner(tag: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(worker_argv(tag, "spin"))


@pytest.mark.slow
def test_selector_deployment_outlives_its_first_processes(start_daemon, tmp_path: Path) -> None:
    """A command-line selector covers processes that start later: their exit ends nothing."""
    proc = start_daemon(FAST)
    first = _spinner(tmp_path)
    later: subprocess.Popen[bytes] | None = None
    try:
        text = ('[policy]\nname = "deploy-selector"\ndescription = "jobs by command line"\n'
                f'[[group]]\nname = "jobs"\nmatch = {{ cmdline = "{re.escape(str(tmp_path))}" }}\n'
                'task = { nice = 5 }\n')
        _, token = verified_token(proc.address, text.replace("\\", "\\\\"))
        dep = call(proc.address, "Deploy", "s", token)
        assert wait_deployment(proc.address, dep, {"active", "reverted", "failed"})["state"] == \
            "active"
        assert os.getpriority(os.PRIO_PROCESS, first.pid) == 5
        first.kill()
        first.wait()
        time.sleep(1.5)  # the deployment's only process is gone
        later = _spinner(tmp_path)
        # matched when it started
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, later.pid) == 5, 10,
                   "the later process at nice 5", interval=0.1)
        time.sleep(1.5)  # the breaker now watches it
        info = json.loads(call(proc.address, "GetDeployment", "s", dep))
        assert info["state"] == "active", info["events"]
        call(proc.address, "Rollback", "s", dep)
        assert os.getpriority(os.PRIO_PROCESS, later.pid) == 0
    finally:
        for p in (first, later):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_pid_deployment_ends_when_its_processes_exit(start_daemon, tmp_path: Path) -> None:
    proc = start_daemon(FAST)
    target = _spinner(tmp_path)
    try:
        _, token = verified_token(proc.address, policy_text(
            "deploy-pids", [("jobs", [target.pid], "{ nice = 5 }")]))
        dep = call(proc.address, "Deploy", "s", token)
        assert wait_deployment(proc.address, dep, {"active", "reverted", "failed"})["state"] == \
            "active"
    finally:
        target.kill()
        target.wait()
    info = wait_deployment(proc.address, dep, {"reverted", "failed"}, timeout=15)
    assert info["reason"] == "every target process exited", info["events"]
    assert info["trip"] in ("", None, {}), info["trip"]  # not a breaker trip: no backoff
