"""``schedcp-agent watch``: a new heavy process tree in the scope triggers one run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from schedcp_agent.agent import Options
from schedcp_agent.targets import Scope
from schedcp_agent.watch import Watcher, WatchSettings
from tests.agent.conftest import Procs
from tests.harness import ROOT


def test_new_heavy_tree_triggers_one_action(agent_daemon, procs: Procs) -> None:
    argv = [sys.executable, "-m", "schedcp_agent", "watch", "--bus", agent_daemon.address,
            "--json", "--match", procs.regex, "--poll", "1", "--heavy-cpu", "0.1",
            "--psi-threshold", "100", "--min-interval", "600", "--max-actions", "1",
            "--duration", "90",
            "--observe-seconds", "2", "--goal", "throughput", "--revert-at-end",
            "--max-iterations", "1"]
    watcher = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # watching an empty scope: nothing happens
        spinners = [procs.worker("spin").pid for _ in range(2)]
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
