"""``schedcp-agent watch``: its triggers, and one run per trigger at a bounded pace."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import subprocess
import sys
import time

import pytest

from schedcp_agent import document
from schedcp_agent.agent import Options
from schedcp_agent.client import SchedcpClient
from schedcp_agent.targets import Scope
from schedcp_agent.watch import Watcher, WatchSettings
from tests.agent.conftest import agent_cwd
from tests.conftest import TEST_GROUP
from tests.harness import Procs, poll_async


@pytest.mark.slow
def test_new_heavy_tree_triggers_one_action(agent_daemon, procs: Procs, agent_uid: int) -> None:
    argv = [sys.executable, "-m", "schedcp_agent", "watch", "--bus", agent_daemon.address,
            "--json", "--match", procs.regex, "--poll", "1", "--heavy-cpu", "0.1",
            "--psi-threshold", "100", "--min-interval", "600", "--max-actions", "1",
            "--duration", "90",
            "--observe-seconds", "2", "--goal", "throughput", "--revert-at-end",
            "--max-iterations", "1"]
    pw = pwd.getpwuid(agent_uid)  # the watcher runs as the agent's unprivileged user
    watcher = subprocess.Popen(argv, cwd=agent_cwd(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, user=agent_uid,
                               group=pw.pw_gid, extra_groups=[grp.getgrnam(TEST_GROUP).gr_gid])
    try:
        time.sleep(2.0)  # watching an empty scope: nothing happens
        # Three on two CPUs: they wait, so there is something to decide on any host.
        spinners = [procs.worker("spin").pid for _ in range(3)]
        out, err = watcher.communicate(timeout=150)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    actions = json.loads(out)["actions"]
    assert len(actions) == 1
    assert any("new heavy process tree" in t for t in actions[0]["triggers"]), actions[0]
    report = actions[0]["report"]
    assert report["attempts"][0]["candidate"]["base"] == "batch-throughput"
    assert set(report["saw"]["roles"]["batch"]) == set(spinners)


def test_watch_refuses_to_start_without_deploy_rights(agent_daemon, test_users) -> None:
    """A user the daemon will not let deploy hears so at start, not at the first trigger."""
    argv = [sys.executable, "-m", "schedcp_agent", "watch", "--bus", agent_daemon.address,
            "--match", "no-such-process-xyzzy", "--duration", "60"]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=agent_cwd(), capture_output=True, text=True, timeout=60,
                          user=test_users["nobody"],
                          group=pwd.getpwuid(test_users["nobody"]).pw_gid)
    assert done.returncode == 4, done.stderr
    assert time.monotonic() - started < 30  # did not watch its 60 s first
    assert "not authorized" in done.stderr and "org.schedcp.deploy" in done.stderr
    assert "Traceback" not in done.stderr


def test_minimum_interval_between_actions() -> None:
    lines: list[str] = []
    w = Watcher(Options(scope=Scope(pids=[1]), bus="unix:path=/nonexistent"),
                WatchSettings(min_interval=60.0), lines.append)
    w.last_action = time.monotonic() - 5
    asyncio.run(w._act(["cpu pressure 80 % (avg10) >= 50"]))
    assert w.actions == []
    assert any("not acting" in line and "minimum interval 60" in line for line in lines)


def test_deliberate_rollbacks_are_not_triggers() -> None:
    w = Watcher(Options(scope=Scope(pids=[1])), WatchSettings(), lambda _: None)
    w._on_signal("dep-000000000001", "reverted", "rollback by uid 0")
    w._on_signal("dep-000000000002", "active", "probation passed on the full scope")
    assert w._signals.empty()
    w._on_signal("dep-000000000003", "reverted", "circuit breaker: run-queue wait ...")
    assert w._signals.get_nowait().startswith("deployment dep-000000000003 reverted")


def test_each_trigger_kind_is_seen(agent_daemon, procs: Procs) -> None:
    """The three triggers against the real daemon: heavy tree, CPU pressure, a revert."""
    spinners = [procs.worker("spin").pid for _ in range(2)]
    opts = Options(scope=Scope(match=procs.regex), bus=agent_daemon.address)

    async def triggers(settings: WatchSettings, signal: tuple[str, str, str] | None = None
                       ) -> list[str]:
        w = Watcher(opts, settings, lambda _: None)
        if signal:
            w._on_signal(*signal)
        async with SchedcpClient(agent_daemon.address) as client:
            # the summary covers the spinners within its window
            return await poll_async(lambda: w._triggers(client), bool, 60)

    heavy = asyncio.run(triggers(WatchSettings(heavy_cpu=0.05, psi_threshold=1000)))
    assert any(t.startswith("new heavy process tree") for t in heavy), heavy
    pressure = asyncio.run(triggers(WatchSettings(heavy_cpu=1000, psi_threshold=0.0)))
    assert pressure and all(t.startswith("cpu pressure") for t in pressure), pressure
    reverted = asyncio.run(triggers(
        WatchSettings(heavy_cpu=1000, psi_threshold=1000),
        ("dep-00000000000a", "reverted", "circuit breaker: run-queue wait per run")))
    assert reverted == ["deployment dep-00000000000a reverted: circuit breaker: run-queue "
                        "wait per run"], reverted
    assert all(os.path.exists(f"/proc/{p}") for p in spinners)


def test_a_deployment_the_daemon_reverted_is_a_trigger(agent_daemon, procs: Procs) -> None:
    """A real DeploymentChanged: the holder of a deployment disconnects, schedcpd reverts it.

    The watcher sees it through its own subscription (not a handler call made
    here); the reason is the daemon's, not a requested rollback.
    """
    spinners = sorted(procs.worker("spin").pid for _ in range(2))
    opts = Options(scope=Scope(match=procs.regex), bus=agent_daemon.address)
    text = document.dump({"policy": {"name": "watch-revert", "description": "watch test"},
                          "group": [{"name": "batch", "match": {"pid": spinners},
                                     "task": {"policy": "batch"}}]})

    async def run() -> tuple[str, list[str]]:
        w = Watcher(opts, WatchSettings(heavy_cpu=1000, psi_threshold=1000), lambda _: None)
        async with SchedcpClient(agent_daemon.address) as conn:
            await conn.watch_deployments(w._on_signal)
            holder = await SchedcpClient(agent_daemon.address).connect()
            policy_id = await holder.call("SubmitPolicy", text)
            for _ in range(3):  # the sandbox test runs on a shared host: retry as the agent does
                token, report = await holder.call("VerifyPolicy", policy_id)
                if token:
                    break
            assert token, report
            dep = await holder.call("Deploy", token)
            await holder.call("HoldDeployment", dep)
            holder.close()  # the holder is gone: the daemon rolls the deployment back
            return dep, await poll_async(lambda: w._triggers(conn), bool, 60, 0.2)

    dep, found = asyncio.run(run())
    assert len(found) == 1 and found[0].startswith(f"deployment {dep} reverted: "), found
    assert "disconnected" in found[0], found
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in spinners)
