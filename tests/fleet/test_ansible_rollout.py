"""A fleet on one machine (issue #25): a bundle rolled out in waves by Ansible.

Five hosts — five schedcpd daemons, each on its own private bus with its own
state directory and cgroup namespace (tests/fleet/fleet.py) — trust the key
of a sixth daemon that verifies and signs.  The schedcp.fleet rollout
playbook deploys its bundle in ``serial`` waves over an inventory of local
connections, one bus address per host.  On the second wave's second host
the application shares its CPU with a hog: the policy (nice 10 for the
application, which must keep 60 % of its CPU) starves it there, the breaker
trips for real, the wave is rolled back and the hosts after it are never
touched.  A clean rollout ends with every host active.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.fleet import APP, Fleet, Host
from tests.harness import call, call_error, worker_argv

pytestmark = pytest.mark.slow  # six daemons and two rollouts: about a minute each
HOSTS = ["h1", "h2", "h3", "h4", "h5"]
NICE = 10
POLICY = f"""
[policy]
name = "{{name}}"
description = "the fleet's application at nice {NICE}; it must keep 60 % of its CPU"

[[group]]
name = "app"
match = {{{{ cgroup = "/{APP}" }}}}
task = {{{{ nice = {NICE} }}}}
descendants = false

[[guard]]
group = "app"
metric = "cpu_share"
min_ratio = 0.6
"""


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    # Only h3's breaker judges (its trip is under test); the other hosts' windows
    # are QUICK: a wave waits for their deployments to go active, ~5 s each on FAST.
    fleet = Fleet(HOSTS, judged=frozenset({"h3"}))
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def apps(fleet: Fleet) -> Iterator[dict[str, int]]:
    """Each host's application: an idle process in its ``/fleet-app``; pid by host."""
    try:
        yield {name: host.start(["sleep", "600"]).pid for name, host in fleet.hosts.items()}
    finally:
        for host in fleet.hosts.values():
            host.roll_back_all()
            host.stop_processes()


def _results(report: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """Per host, the result of the task named ``task`` (over every play of the run)."""
    return {h: r for play in report["plays"] for t in play["tasks"]
            if t["task"]["name"] == task for h, r in t["hosts"].items()}


DEPLOY = "Import, deploy with the bundle's token, wait until active"
ROLLBACK = "Roll back every deployment of a wave in which a host failed"


def _journal(host: Host, pid: int) -> list[dict[str, Any]]:
    """What the host's journal holds for ``pid`` (Explain over its bus)."""
    return list(json.loads(call(host.address, "Explain", "s", str(pid)))["values"])


def _written(host: Host, dep_id: str) -> list[dict[str, Any]]:
    """Every value deployment ``dep_id`` wrote, from the host's journal (Explain)."""
    targets = json.loads(call(host.address, "Explain", "s", dep_id))["targets"]
    return [v for values in targets.values() for v in values]


def test_a_breaker_trip_in_wave_two_stops_the_rollout_and_rolls_that_wave_back(
        fleet: Fleet, apps: dict[str, int]) -> None:
    # h3, in wave 2: its application shares one CPU with a hog, in the same
    # autogroup; nice 10 leaves it a tenth of what it had.  Elsewhere the
    # application is alone and the policy harms nothing.
    h3 = fleet.hosts["h3"]
    h3.kill(apps["h3"])  # the spinner alone is h3's application: its canary is the spinner
    spinner = h3.start(worker_argv(fleet.dir, "spin"))
    hog = h3.start(worker_argv(fleet.dir, "spin"), where="other")
    for proc in (spinner, hog):
        os.sched_setaffinity(proc.pid, {0})
    apps["h3"] = spinner.pid
    bundle = fleet.bundle(POLICY.format(name="fleet-wave"), "fleet-wave")

    code, report, stderr = fleet.rollout(bundle, waves=[1, 2, "100%"])

    assert code != 0, stderr
    deployed = _results(report, DEPLOY)
    # Waves: h1, then h2 and h3; h4 and h5 are never reached.
    assert sorted(deployed) == ["h1", "h2", "h3"], deployed
    assert deployed["h1"]["state"] == deployed["h2"]["state"] == "active"
    tripped = deployed["h3"]
    assert tripped["failed"] and tripped["breaker_tripped"], tripped
    assert tripped["state"] == "reverted" and tripped["trip"]["guard"] == "cpu_share"
    assert "CPU share of 'app'" in tripped["msg"] and "circuit breaker" in tripped["msg"]
    rolled = _results(report, ROLLBACK)
    assert (rolled["h2"]["changed"], rolled["h2"]["state"]) == (True, "reverted")
    assert (rolled["h3"]["changed"], rolled["h3"]["state"]) == (False, "reverted")
    assert rolled["h1"].get("skipped"), rolled["h1"]  # wave 1 is not rolled back
    stats = report["stats"]
    assert stats["h3"]["failures"] == 1 and stats["h1"]["failures"] == stats["h2"]["failures"] == 0
    assert "h4" not in stats and "h5" not in stats

    # Over each host's own bus: h1 still active, its application at nice 10;
    # h2 rolled back by the wave, h3 by its breaker, both restored from their
    # journals; h4 and h5 have no deployment, no policy, no journal entry.
    h1, h2 = fleet.hosts["h1"], fleet.hosts["h2"]
    assert [d["state"] for d in h1.deployments()] == ["active"]
    assert os.getpriority(os.PRIO_PROCESS, apps["h1"]) == NICE
    assert [v["state"] for v in _journal(h1, apps["h1"])] == ["applied"]
    [dep2] = h2.deployments()
    assert dep2["state"] == "reverted" and "rollback by uid 0" in dep2["reason"], dep2
    [dep3] = h3.deployments()
    assert dep3["state"] == "reverted" and dep3["reason"].startswith("circuit breaker"), dep3
    for name, dep in (("h2", dep2), ("h3", dep3)):
        assert os.getpriority(os.PRIO_PROCESS, apps[name]) == 0
        values = _written(fleet.hosts[name], dep["id"])
        assert values and {v["state"] for v in values} == {"restored"}, values
    assert os.getpriority(os.PRIO_PROCESS, hog.pid) == 0  # never a target
    policy_id = tripped["policy_id"]
    for name in ("h4", "h5"):
        host = fleet.hosts[name]
        assert host.deployments() == []
        assert call_error(host.address, "GetPolicy", "s", policy_id) == \
            "org.schedcp.Control1.Error.NotFound"
        assert _journal(host, apps[name]) == []
        assert os.getpriority(os.PRIO_PROCESS, apps[name]) == 0


def test_a_clean_rollout_goes_wave_by_wave_and_every_host_ends_active(
        fleet: Fleet, apps: dict[str, int]) -> None:
    bundle = fleet.bundle(POLICY.format(name="fleet-clean"), "fleet-clean")

    code, report, stderr = fleet.rollout(bundle)  # the playbook's waves: 1, 10 %, the rest

    assert code == 0, (stderr, json.dumps(report)[-3000:])
    deployed = _results(report, DEPLOY)
    assert {h: r["state"] for h, r in deployed.items()} == dict.fromkeys(HOSTS, "active")
    assert all(r.get("skipped") for r in _results(report, ROLLBACK).values())
    # Three waves: h1; h2 (10 % of five hosts is one); h3, h4, h5.  A wave
    # starts after the previous one's deployments went active.
    plays = report["plays"]
    assert [sorted(t["hosts"]) for p in plays for t in p["tasks"]
            if t["task"]["name"] == DEPLOY] == [["h1"], ["h2"], ["h3", "h4", "h5"]]
    records = {name: [d for d in fleet.hosts[name].deployments() if d["name"] == "fleet-clean"]
               for name in HOSTS}  # the fleet's hosts may hold earlier tests' deployments
    assert all([d["state"] for d in deps] == ["active"] for deps in records.values()), records
    went_active = {name: _event_time(deps[0]["id"], fleet.hosts[name], "active")
                   for name, deps in records.items()}
    created = {name: _event_time(deps[0]["id"], fleet.hosts[name], "pending")
               for name, deps in records.items()}
    assert went_active["h1"] <= created["h2"]
    assert went_active["h2"] <= min(created[h] for h in ("h3", "h4", "h5"))
    for name, pid in apps.items():
        assert os.getpriority(os.PRIO_PROCESS, pid) == NICE, name
        assert [v["state"] for v in _journal(fleet.hosts[name], pid)] == ["applied"]

    # Run again: each host already redeemed the bundle's token; the task says
    # which deployment did, changes nothing and deploys nothing new.
    code, report, stderr = fleet.rollout(bundle)
    assert code == 0, (stderr, {h: r.get("msg") for h, r in _results(report, DEPLOY).items()})
    again = _results(report, DEPLOY)
    assert {h: (r["changed"], r["deployment_id"]) for h, r in again.items()} == \
        {h: (False, deps[0]["id"]) for h, deps in records.items()}


def test_a_refused_bundle_stops_the_rollout_in_the_first_wave(
        fleet: Fleet, apps: dict[str, int]) -> None:
    h1 = fleet.hosts["h1"]
    key = h1.trusted / "verifier.pub"
    saved = key.read_bytes()
    key.unlink()  # h1 no longer trusts the verifier
    try:
        bundle = fleet.bundle(POLICY.format(name="fleet-refused"), "fleet-refused")
        code, report, _ = fleet.rollout(bundle)
    finally:
        key.write_bytes(saved)
    assert code != 0
    refused = _results(report, DEPLOY)
    assert list(refused) == ["h1"], refused
    assert refused["h1"]["error"] == "org.schedcp.Control1.Error.UnknownKey", refused
    assert "deployment_id" not in refused["h1"]
    assert list(report["stats"]) == ["h1"]
    for host in fleet.hosts.values():
        assert not [d for d in host.deployments() if d["name"] == "fleet-refused"]


def _event_time(dep_id: str, host: Host, state: str) -> float:
    events = json.loads(call(host.address, "GetDeployment", "s", dep_id))["events"]
    return float(next(e["time"] for e in events if e["state"] == state))


def test_the_inventory_gives_each_host_its_own_bus(fleet: Fleet) -> None:
    inventory = json.loads(Path(fleet.inventory()).read_text())["schedcp"]["hosts"]
    assert sorted(inventory) == HOSTS
    assert len({h["schedcp_bus_address"] for h in inventory.values()}) == len(HOSTS)
    assert all(h["ansible_connection"] == "local" for h in inventory.values())
