"""cgroup v2 the systemd way, for real: the installed package under systemd as PID 1.

The one boot of the systemd guest (conftest.py's ``booted``:
plugins/scheduler/microvm/systemd_guest.py, Debian 12, systemd 252 as PID 1,
cgroup v2 unified) installs this build's .deb with apt (systemd starts
schedcpd.service); before the purge, cgroups.sh points the daemon at the
host daemon's key and short deployment windows, and runs
systemd_cgroup_scenario.py with the installed venv's Python.
Targets are transient services started with ``systemd-run``; the policies'
cgroup knobs must become properties of those units (never a cgroup of ours,
never a moved process), come back exactly, survive ``systemctl stop`` of a
target's unit, refuse a unit shared with another process, and be restored
by the restart after ``systemctl kill -s KILL schedcpd``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugins.scheduler.microvm import guest
from tests.microvm.test_t2_guest import SCHED_BATCH, SCHED_EXT, SCHED_OTHER, policies

pytestmark = [pytest.mark.slow, pytest.mark.tcg, pytest.mark.systemd_guest,
              pytest.mark.timeout(3000)]

@pytest.fixture(scope="module")
def scenario(booted: guest.GuestResult) -> dict[str, Any]:
    """The RESULT of each step of systemd_cgroup_scenario.py, by step name."""
    steps: dict[str, Any] = {"_result": booted}
    for line in booted.output.get("scenario", []):
        if line.startswith(("step ", "RESULT ")):
            print(line[:6000])  # what the guest saw, for people reading -rP
        if line.startswith("RESULT "):
            _, name, data = line.split(" ", 2)
            steps[name] = json.loads(data)
    return steps


def step(scenario: dict[str, Any], name: str) -> dict[str, Any]:
    result: guest.GuestResult = scenario["_result"]
    assert name in scenario, "\n".join(result.output.get("scenario", [])[-40:]
                                       + result.output.get("journal", [])[-60:])
    data: dict[str, Any] = scenario[name]
    assert "exception" not in data, (data["exception"], result.output.get("journal", [])[-60:])
    return data


def test_the_installed_daemon_chose_the_systemd_backend(scenario: dict[str, Any]) -> None:
    result: guest.GuestResult = scenario["_result"]
    lines = result.output.get("backend", [])
    assert lines and lines[0] == "active", lines
    assert any("systemd backend" in line for line in lines), lines


def test_weights_are_unit_properties_and_every_target_stays_in_its_unit(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    assert data["info"]["state"] == "active", data["info"]["events"]
    build, idle = data["active"]["build"], data["active"]["idle"]
    assert build["props"]["CPUWeight"] == "157" and build["files"]["cpu.weight"] == "157", build
    assert idle["props"]["CPUWeight"] == "idle" and idle["files"]["cpu.idle"] == "1", idle
    for name, unit in (("build", "schedcp-t-build.service"), ("idle", "schedcp-t-idle.service")):
        state = data["active"][name]
        assert state["pid_cgroup"] == f"0::/system.slice/{unit}", state
        assert state["pid_cgroup"] == data["before"][name]["pid_cgroup"]
        assert any(unit in line for line in data["cgls"]), data["cgls"]
    assert data["ours"] == [], data["ours"]


def test_rollback_gives_the_units_their_settings_back(scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    assert data["final"]["state"] == "reverted", data["final"]["events"]
    for name in ("build", "idle"):
        before, after = data["before"][name], data["after"][name]
        assert after["props"] == before["props"], (before, after)
        assert after["files"] == before["files"], (before, after)


def test_systemctl_kill_then_the_restart_restores(scenario: dict[str, Any]) -> None:
    """kill -9 with a deployment live: systemd restarts the unit, which restores its journal.

    The weights policy sets both a unit property (CPUWeight) and a task
    attribute (SCHED_BATCH) on its build target; the new daemon puts both
    back before it reports ready, and marks the deployment reverted.
    """
    data = step(scenario, "crash")
    assert data["active"]["build"]["CPUWeight"] == "157", data
    assert data["active"]["build"]["policy"] == SCHED_BATCH, data["active"]
    assert data["before"]["build"]["policy"] == SCHED_OTHER, data["before"]
    journal = "\n".join(data["journal"])
    assert "Main process exited, code=killed, status=9/KILL" in journal, journal[-3000:]
    assert data["main_after"] != data["main_before"], data
    assert int(data["restarts"]) == int(data["restarts_before"]) + 1, data
    assert data["after"] == data["before"], (data["before"], data["after"])
    assert "restored scheduler at start-up" in journal, journal[-3000:]
    assert data["final"]["state"] == "reverted", data["final"]["events"]


def test_cpuset_and_quota_and_systemctl_stop_still_stops_the_target(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "confine")
    active = data["active"]
    assert active["props"]["AllowedCPUs"] == "1", active
    assert active["props"]["CPUQuotaPerSecUSec"] == "800ms", active
    assert active["files"]["cpuset.cpus"] == "1" and active["files"]["cpu.max"] == "80000 100000"
    assert data["affinity"] == [1]
    assert active["pid_cgroup"] == "0::/system.slice/schedcp-t-noisy.service"
    assert not data["after_stop"]["alive"], data["after_stop"]
    assert data["rollback"].get("ok") is not None, data["rollback"]
    # The stopped (and collected) unit is gone, not "changed by someone else".
    assert data["final"]["overridden"] == [], data["final"]["overridden"]


def test_a_unit_shared_with_another_process_is_refused_by_name(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "mixed")
    text = json.dumps([data["deploy"], data["info"]])
    assert "schedcp-t-mixed.service" in text and "whole" in text, text
    assert data["after"]["props"] == data["before"]["props"], data
    assert data["after"]["pid_cgroup"] == data["before"]["pid_cgroup"]


def test_the_guest_verifier_runs_its_sandbox_in_transient_scopes(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "sandbox")
    assert data["journal"], data
    codes = {f["code"] for stage in data["verdict"]["report"]["stages"]
             for f in stage.get("findings", [])}
    assert "sandbox-failed" not in codes and "no-scratch-cgroup" not in codes, codes
    assert data["ours"] == []
    # The run's scopes went with their processes, and its slices were stopped:
    # nothing of the sandbox stays in systemd's tree (apt purge checks this too).
    assert data["units_left"] == [] and data["cgroups_left"] == [], data


def test_a_t2_scheduler_runs_under_the_hardened_unit_and_rolls_back(
        scenario: dict[str, Any]) -> None:
    """The package's schedcpd.service, as shipped, starts the sched_ext loader.

    Its capabilities (no CAP_SYS_ADMIN), seccomp filter and
    MemoryDenyWriteExecute all apply to the loader it forks; the deployment
    goes canary (the targets only, partial switch) -> widened -> active,
    and the rollback gives every task its class back.
    """
    data = step(scenario, "good")
    canary = data["canary"]
    assert canary["state"] == "enabled" and canary["ops"] == "schedcp_vtime", canary
    assert policies(canary, "probe") == {SCHED_EXT} and policies(canary, "other") == {SCHED_OTHER}
    assert data["active"]["state"] == "active", data["active"]["events"]
    assert data["widened"]["switch_all"] == "1", data["widened"]
    after = data["after"]
    assert after["state"] == "disabled" and after["loaders"] == [] and after["in_ext"] == []
    assert policies(after, "probe") == {SCHED_OTHER} and policies(after, "batch") == {SCHED_BATCH}
    assert data["deployment"]["state"] == "reverted"


def test_the_daemon_was_never_killed_by_its_watchdog(scenario: dict[str, Any]) -> None:
    """Stalls of the daemon's loop are logged (and printed here); none reached the watchdog.

    cgroups.sh scales WatchdogSec for the emulated guest (120 s): a kill
    now means a loop stuck for minutes, not a TCG guest beside CPU hogs.
    """
    result: guest.GuestResult = scenario["_result"]
    assert result.first("cgroups-stalls", "exit") is not None, sorted(result.events)
    lines = result.output.get("cgroups-stalls", [])
    for line in lines:
        print(line)  # the loop monitor's warnings: how long, and where
    killed = [line for line in lines if "atchdog timeout" in line or "'watchdog'" in line]
    assert not killed, "\n".join(lines)
