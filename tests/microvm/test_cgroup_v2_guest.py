"""cgroup v2 for real: T1 policies with cgroup groups deployed and rolled back in the guest.

This host's cpu and cpuset controllers are on cgroup v1; the guest host's
/init mounts the unified cgroup2 tree only, so the plugin's v2 paths
(``cpu.weight``, ``cpu.idle``, ``cpu.max``, ``cpuset.cpus``, controllers
enabled in ``cgroup.subtree_control``) run there on a real kernel.  The
host's daemon verifies the policies and signs their tokens; one boot runs
tests/microvm/cgroup_v2_scenario.py, whose deployments go through D-Bus
inside the guest (the guest's schedcpd trusts the host daemon's key).  The
guest has no systemd: this is the plain cgroupfs backend on v2.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler.cgroups import shares_to_weight
from plugins.scheduler.microvm import MicroVM
from tests.microvm.test_t2_guest import GUEST_CONFIG, host_verifier, run_scenario, step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
SCHED_BATCH, SCHED_OTHER = 3, 0

WEIGHTS = """[policy]
name = "v2-weights"
description = "a weighted build group and an idle batch group (cgroup v2 proof)"
track = "T1"

[[group]]
name = "build"
match = { comm = ["v2-build"] }
task = { policy = "batch" }
cgroup = { shares = 4096 }

[[group]]
name = "batch"
match = { comm = ["v2-idle"] }
cgroup = { idle = true }
"""
CONFINE = """[policy]
name = "v2-confine"
description = "a noisy neighbour on CPU 1 at 80 % of it (cgroup v2 proof)"
track = "T1"

[[group]]
name = "noisy"
match = { comm = ["v2-noisy"] }
cgroup = { cpus = "1", quota_us = 80000, period_us = 100000 }
"""


@pytest.fixture(scope="module")
def verified() -> Iterator[dict[str, Any]]:
    """The host's daemon (cgroup v1 here) verifies both policies: tokens and its key."""
    with host_verifier({"weights": WEIGHTS, "confine": CONFINE}) as (_proc, out):
        yield out


@pytest.fixture(scope="module")
def scenario(vm: MicroVM, verified: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Path | bytes] = {
        "cgroup_v2_scenario.py": HERE / "cgroup_v2_scenario.py",
        "t2_guest_scenario.py": HERE / "t2_guest_scenario.py",
        "schedcpd.toml": GUEST_CONFIG.encode(),
        "weights.toml": WEIGHTS.encode(), "confine.toml": CONFINE.encode(),
        "weights.token": verified["weights"].encode(),
        "confine.token": verified["confine"].encode(),
        verified["key"][0]: verified["key"][1],
    }
    return run_scenario(vm, "cgroup_v2_scenario.py", files)


def group(state: dict[str, Any], dep: str, name: str) -> dict[str, str]:
    groups: dict[str, dict[str, str]] = state["groups"]
    assert f"schedcp.{dep}.{name}" in groups, groups
    return groups[f"schedcp.{dep}.{name}"]


def test_the_guest_runs_cgroup_v2_only(scenario: dict[str, Any]) -> None:
    before = step(scenario, "weights")["before"]
    assert {"cpu", "cpuset"} <= set(before["controllers"].split()), before
    assert all(t["cgroup"] == "/" for t in before["targets"].values()), before


def test_weight_and_idle_groups_are_in_the_kernel_while_active(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    active, dep = data["active"], data["dep"]
    assert data["info"]["state"] == "active", data["info"]["events"]
    # The root passes cpu on to its children only while a group needs it.
    assert data["before"]["subtree_control"] == ""
    assert "cpu" in active["subtree_control"].split(), active
    build, batch = group(active, dep, "build"), group(active, dep, "batch")
    assert build["cpu.weight"] == str(shares_to_weight(4096)) == "157", build
    assert build["cpu.idle"] == "0" and batch["cpu.idle"] == "1", (build, batch)
    targets = active["targets"]
    assert targets["build"]["cgroup"] == f"/schedcp.{dep}.build", targets
    assert targets["idle"]["cgroup"] == f"/schedcp.{dep}.batch", targets
    assert targets["build"]["policy"] == SCHED_BATCH
    assert targets["other"]["cgroup"] == "/", targets  # only targets move
    assert build["cgroup.procs"].split() == [str(targets["build"]["pid"])], build


def test_rollback_restores_the_v2_tree_exactly(scenario: dict[str, Any]) -> None:
    data = step(scenario, "weights")
    assert data["rollback"].get("ok") is not None, data["rollback"]
    assert data["final"]["state"] == "reverted", data["final"]["events"]
    # No group left, every target back where it was, subtree_control as found.
    assert data["after"] == data["before"], (data["before"], data["after"])


def test_cpuset_and_cpu_max_while_active(scenario: dict[str, Any]) -> None:
    data = step(scenario, "confine")
    active, dep = data["active"], data["dep"]
    noisy = group(active, dep, "noisy")
    assert noisy["cpuset.cpus"] == "1" and noisy["cpuset.cpus.effective"] == "1", noisy
    assert noisy["cpu.max"] == "80000 100000", noisy
    assert {"cpu", "cpuset"} <= set(active["subtree_control"].split()), active
    assert active["targets"]["noisy"]["affinity"] == [1], active["targets"]
    assert active["targets"]["other"]["cgroup"] == "/"


def test_a_killed_daemon_leaves_the_policy_and_its_restart_restores_exactly(
        scenario: dict[str, Any]) -> None:
    data = step(scenario, "confine")
    assert data["killed"], data
    # SIGKILL restores nothing: the values stay until the next start.
    assert data["after_kill"] == data["active"], data["after_kill"]
    assert data["ready"], data["restart_log"]
    assert data["after_restart"] == data["before"], (data["before"], data["after_restart"])
    assert data["restart_status"] == 0, data["restart_log"]


def test_uclamp_for_real_in_the_guest(scenario: dict[str, Any]) -> None:
    """The dvfs plugin's clamps on a kernel with CONFIG_UCLAMP_TASK (the host has none)."""
    data = step(scenario, "uclamp")
    caps = data["caps"]
    assert caps["uclamp.task"] == {"available": True, "reason": ""}, caps
    # The guest has CONFIG_CPU_FREQ but no frequency driver under qemu: said, with why.
    assert not caps["cpufreq.governor"]["available"]
    assert "no cpufreq driver" in caps["cpufreq.governor"]["reason"], caps
    assert data["validate"] == [] and data["static"] == [], data
    # Stage 4: a CPU-bound task of the check's own ran under the clamps.
    assert [f["code"] for f in data["dynamic"]] == ["measured"], data["dynamic"]
    before, active = data["before"], data["tasks_active"]
    assert {tuple(v) for v in before["task"].values()} == {(0, 1024)}, before
    assert {tuple(v) for v in active["task"].values()} == {(512, 900)}, active
    assert {row[0].split(":")[0] for row in data["tasks_journal"]} == {"uclamp"}
    assert all(row[1] == [0, 1024] and row[2] == [512, 900] and row[3] == "applied"
               for row in data["tasks_journal"]), data["tasks_journal"]
    # CONFIG_UCLAMP_TASK_GROUP too: a cgroup of the step's own, cpu enabled at the root.
    assert caps["uclamp.cgroup"] == {"available": True, "reason": ""}, caps
    assert data["cgroups_active"]["cg"] == {"cpu.uclamp.min": "25.00",
                                            "cpu.uclamp.max": "75.50"}, data
    # Restore is exact: the kernel shows what it showed before.
    assert data["after"] == before, (before, data["after"])
    assert set(data["restore"]["summary"]) == {"restored"}, data["restore"]
    # An administrator's later change is left alone.
    outcomes = {e["outcome"] for e in data["override_restore"]["entries"]}
    assert outcomes == {"overridden"}, data["override_restore"]
    assert [100, 800] in data["after_override"]["task"].values(), data["after_override"]
    # Bad input against the live kernel value: named, nothing journaled or written.
    assert data["bad"].startswith("InvalidArgument: group[0].uclamp: task"), data["bad"]
    assert "above its max 800" in data["bad"] and data["bad_journal"] == 0
    assert list(data["bad_left"]["task"].values()) == [[0, 800]], data["bad_left"]
    assert data["final"] == before
    # An old entry (the plugin's own write, before the port) is restored by the core.
    assert data["legacy_restore"]["summary"] == {"restored": 1}, data["legacy_restore"]
    assert data["legacy_after"] == before, data["legacy_after"]
    assert data["subtree_after"] == data["subtree_before"]
