"""/metrics after a real verify, deploy, override, rollback and breaker trip on this host.

The daemon runs on a private bus with its exporter on a free port; every
figure checked below is one this test caused (a fresh daemon and state
directory), and the scraped text must pass ``promtool check metrics``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import FAST, QUICK, forced_token, policy_text, verified_token
from tests.harness import call, call_error, calls_as, wait_deployment, wait_until
from tests.policy.test_policy_dbus import STARVING as DBUS_STARVING

SUB = "scheduler"
METRICS = FAST.replace("[metrics]\nenabled = false\n", "[metrics]\nport = 0\n")

# Fails the static stage: the latency group's dependency at SCHED_IDLE.
STARVING = DBUS_STARVING.replace("dbus-test-starve", "metrics-starve-dep")


def scrape(address: str) -> str:
    status = json.loads(call(address, "GetStatus"))
    port = status["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels`` (None: no such sample)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: Debian's prometheus package (requirements-apt.txt)"
    return path


@pytest.mark.slow
def test_safety_chain_metrics_after_deploy_override_rollback_and_trip(start_daemon,
                                                                      workload) -> None:
    proc = start_daemon(METRICS)
    a = proc.address
    text = scrape(a)
    # Declared at start: an alert on increase() sees the first event.
    for state in ("pending", "canary", "active", "reverted", "failed"):
        assert value(text, "schedcp_deployments", subsystem=SUB, state=state) == 0, state
    assert value(text, "schedcp_rollbacks_total", subsystem=SUB, cause="breaker") == 0
    assert value(text, "schedcp_journal_entries_outstanding", subsystem=SUB,
                 state="applied") == 0

    # A verification that fails (static stage) and one that passes.
    failing = call(a, "SubmitPolicy", "s", STARVING)
    token, report = call(a, "VerifyPolicy", "s", failing)
    assert token == "" and not json.loads(report)["passed"]
    hog = workload.hogs[0].pid
    _, token = verified_token(a, policy_text("metrics-nice", [("batch", [hog], "{ nice = 5 }")]))
    text = scrape(a)
    assert value(text, "schedcp_verifications_total", subsystem=SUB, result="failed") == 1
    assert value(text, "schedcp_verifications_total", subsystem=SUB, result="passed") == 1
    assert value(text, "schedcp_tokens_issued_total", subsystem=SUB) == 1
    # Every stage that ran is timed; the static stage once per verdict; the
    # kernel stage (skipped for T1) is not.
    assert value(text, "schedcp_verification_stage_duration_seconds_count",
                 stage="schema", verdict="passed") == 2
    assert value(text, "schedcp_verification_stage_duration_seconds_count",
                 stage="static", verdict="failed") == 1
    assert value(text, "schedcp_verification_stage_duration_seconds_count",
                 stage="dynamic", verdict="passed") == 1
    assert value(text, "schedcp_verification_stage_duration_seconds_count",
                 stage="kernel", verdict="skipped") is None

    # Deployed to active: the state and its open journal entries at scrape time.
    dep = call(a, "Deploy", "s", token)
    info = wait_deployment(a, dep, {"active", "reverted", "failed"})
    assert info["state"] == "active", info["events"]
    text = scrape(a)
    assert value(text, "schedcp_tokens_redeemed_total", subsystem=SUB) == 1
    assert value(text, "schedcp_deployments", subsystem=SUB, state="active") == 1
    applied = value(text, "schedcp_journal_entries_outstanding", subsystem=SUB, state="applied")
    assert applied is not None and applied >= 1, applied
    # The token is single-use: a second Deploy is refused by name.
    assert call_error(a, "Deploy", "s", token).endswith("TokenReplayed")

    # The administrator changes the value by hand: an override, no longer ours.
    os.setpriority(os.PRIO_PROCESS, hog, 3)
    wait_until(lambda: json.loads(call(a, "GetDeployment", "s", dep))["overridden"], 15,
               "the override detected", interval=0.3)
    text = scrape(a)
    assert value(text, "schedcp_overrides_detected_total", subsystem=SUB) == 1
    assert value(text, "schedcp_journal_entries_overridden", subsystem=SUB) == 1

    call(a, "Rollback", "s", dep)
    text = scrape(a)
    assert value(text, "schedcp_rollbacks_total", subsystem=SUB, cause="requested") == 1
    assert value(text, "schedcp_restore_duration_seconds_count", subsystem=SUB,
                 cause="requested") == 1
    assert value(text, "schedcp_deployments", subsystem=SUB, state="active") == 0
    assert value(text, "schedcp_deployments", subsystem=SUB, state="reverted") == 1

    # A regression: the latency probe at SCHED_IDLE beside the hogs trips the breaker.
    starve = policy_text("metrics-starve", [("probe", [workload.probe.pid],
                                             '{ policy = "idle" }')])
    _, token = verified_token(a, starve)
    dep = call(a, "Deploy", "s", token)
    info = wait_deployment(a, dep, {"active", "reverted", "failed"})
    assert info["state"] == "reverted" and info["trip"], info["events"]
    # Backing off: the same version is refused at once.
    _, token = verified_token(a, starve)
    assert call_error(a, "Deploy", "s", token).endswith("Conflict")
    text = scrape(a)
    assert value(text, "schedcp_breaker_trips_total", subsystem=SUB,
                 reason=info["trip"]["guard"]) == 1
    assert sum(value(text, "schedcp_breaker_trips_total", subsystem=SUB, reason=g) or 0
               for g in ("wait_per_run_us", "cpu_share", "stall", "daemon_restart")) == 1
    assert value(text, "schedcp_rollbacks_total", subsystem=SUB, cause="breaker") == 1
    assert value(text, "schedcp_restore_duration_seconds_count", subsystem=SUB,
                 cause="breaker") == 1
    assert value(text, "schedcp_tokens_refused_total", reason="TokenReplayed") == 1
    assert value(text, "schedcp_tokens_refused_total", reason="BackingOff") == 1
    assert value(text, "schedcp_tokens_issued_total", subsystem=SUB) == 3
    assert value(text, "schedcp_tokens_redeemed_total", subsystem=SUB) == 2
    assert value(text, "schedcp_verifications_total", subsystem=SUB, result="passed") == 3
    assert value(text, "schedcp_deployments", subsystem=SUB, state="reverted") == 2
    assert value(text, "schedcp_journal_entries_outstanding", subsystem=SUB,
                 state="applied") == 0
    assert value(text, "schedcp_journal_entries_outstanding", subsystem=SUB,
                 state="pending") == 0

    check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_after_a_crash_the_gauges_are_right_and_the_restart_is_a_trip(
        start_daemon, workload, daemon_state: Path) -> None:
    """kill -9 with a deployment active; the next daemon's /metrics tells what happened."""
    state = daemon_state
    first = start_daemon(QUICK + "[debug]\nfault_injection = true\n", state_dir=state,
                         env={"SCHEDCP_FAULT_AT": "after_active"})
    hogs = [h.pid for h in workload.hogs]
    policy_id = call(first.address, "SubmitPolicy", "s",
                     policy_text("metrics-crash", [("batch", hogs, "{ nice = 7 }")]))
    # A forced token (test only, as in test_crash.py): the crash is under test here.
    token = forced_token(state, first.address, policy_id)
    assert "ok" in calls_as(0, first.address, [["Deploy", "s", [token]]])[0]
    assert first.proc.wait(60) == -signal.SIGKILL, first.log_text()

    second = start_daemon(METRICS, address=first.address, state_dir=state)
    text = scrape(second.address)
    # Read from the database: the deployment the first daemon recorded.
    assert value(text, "schedcp_deployments", subsystem=SUB, state="reverted") == 1
    assert value(text, "schedcp_deployments", subsystem=SUB, state="active") == 0
    # The journal restored every value at start-up: nothing is left open.
    assert value(text, "schedcp_journal_entries_outstanding", subsystem=SUB,
                 state="applied") == 0
    assert value(text, "schedcp_breaker_trips_total", subsystem=SUB,
                 reason="daemon_restart") == 1
    assert value(text, "schedcp_rollbacks_total", subsystem=SUB, cause="restart") == 1
    # Restored before the deployer ran: not timed.
    assert value(text, "schedcp_restore_duration_seconds_count", subsystem=SUB,
                 cause="restart") is None
    assert all(os.getpriority(os.PRIO_PROCESS, p) == 0 for p in hogs)
