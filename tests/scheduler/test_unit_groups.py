"""The systemd backend of cgroup knobs: backend choice, mapping, and the unit protocol.

The choice and the knob -> property mapping are pure.  The D-Bus side runs
the real client (dbus-fast, real marshalling) against a FAKE systemd
manager on a private bus (tests/scheduler/fake_systemd.py): this host has no
systemd as PID 1.  The processes, their scheduling attributes and the
journal are real.  What systemd itself does with the properties (the cgroup
files it writes, ``systemctl stop``) is not provable here; docs/scheduler.md
says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler import cgroups, dynamic, tasks
from plugins.scheduler.actuator import Actuator
from plugins.scheduler.applier import Applier
from plugins.scheduler.cgroups import Hierarchy
from plugins.scheduler.systemd import SystemdClient, cpus_to_mask, mask_to_cpus
from plugins.scheduler.unit_groups import (
    KIND_UNIT,
    USEC_INFINITY,
    UnitGroups,
    choose_backend,
    parse_unit_key,
    place_in_scope,
    release_sandbox,
    sandbox_units,
    systemd_booted,
    unit_key,
    unit_properties,
)
from schedcp_bench.services import find_policy_dir
from schedcpd.errors import InvalidArgument, NotSupported
from schedcpd.journal import Journal
from tests.harness import PrivateBus
from tests.scheduler.fake_systemd import UNSET, FakeSystemd, policy_dir
from tests.scheduler.helpers import Spawner, policy_doc, snapshot

V1 = {"cpu": Hierarchy("cpu", Path("/sys/fs/cgroup/cpu"), 1)}
V2 = {"cpu": Hierarchy("cpu", Path("/sys/fs/cgroup"), 2),
      "cpuset": Hierarchy("cpuset", Path("/sys/fs/cgroup"), 2)}


# -- pure -------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "booted", "hierarchies", "backend"), [
    ("auto", True, V2, "systemd"),
    ("auto", True, V1, "cgroupfs"),     # systemd on a v1/hybrid tree: our own v1 groups
    ("auto", False, V2, "cgroupfs"),    # v2 without systemd (the busybox guest)
    ("auto", False, V1, "cgroupfs"),    # this host
    ("auto", False, {}, "cgroupfs"),
    ("cgroupfs", True, V2, "cgroupfs"),
    ("systemd", True, V2, "systemd"),
])
def test_backend_choice(setting: str, booted: bool, hierarchies: dict[str, Hierarchy],
                        backend: str) -> None:
    assert choose_backend(setting, booted, hierarchies)[0] == backend


@pytest.mark.parametrize(("setting", "booted", "hierarchies"), [
    ("systemd", False, V2), ("systemd", True, V1), ("systemd", True, {}), ("dbus", True, V2)])
def test_backend_choice_refuses_what_cannot_work(
        setting: str, booted: bool, hierarchies: dict[str, Hierarchy]) -> None:
    with pytest.raises(InvalidArgument, match="cgroup_backend"):
        choose_backend(setting, booted, hierarchies)


def test_this_host_keeps_the_cgroupfs_backend() -> None:
    found = choose_backend("auto", systemd_booted(), cgroups.detect_hierarchies())
    assert found[0] == "cgroupfs", found


def test_systemd_booted_is_the_runtime_directory(tmp_path: Path) -> None:
    assert not systemd_booted(tmp_path / "absent")
    (tmp_path / "system").mkdir()
    assert systemd_booted(tmp_path / "system")


@pytest.mark.parametrize(("knobs", "props"), [
    ({"shares": 4096}, {"CPUWeight": 157}),
    ({"shares": 1024}, {"CPUWeight": 39}),
    ({"idle": True}, {"CPUWeight": 0}),
    ({"idle": False}, {}),
    ({"quota_us": 80000, "period_us": 100000},
     {"CPUQuotaPeriodUSec": 100000, "CPUQuotaPerSecUSec": 800000}),
    ({"quota_us": 50000}, {"CPUQuotaPerSecUSec": 500000}),
    ({"quota_us": -1, "period_us": 200000},
     {"CPUQuotaPeriodUSec": 200000, "CPUQuotaPerSecUSec": USEC_INFINITY}),
    ({"cpus": "0-2,5"}, {"AllowedCPUs": [0, 1, 2, 5]}),
])
def test_knobs_map_to_unit_properties(knobs: dict[str, Any], props: dict[str, Any]) -> None:
    assert unit_properties(knobs) == props
    # The weight is the v2 file's value (the same conversion systemd uses).
    if "shares" in knobs:
        assert props["CPUWeight"] == cgroups.shares_to_weight(knobs["shares"])


def test_allowed_cpus_mask_round_trip() -> None:
    assert cpus_to_mask([1]) == b"\x02"
    assert cpus_to_mask([0, 9]) == b"\x01\x02"
    assert cpus_to_mask([]) == b""
    for cpus in ([], [0], [1, 3, 8, 15, 16, 63]):
        assert mask_to_cpus(cpus_to_mask(cpus)) == cpus


def test_unit_keys_keep_colons_in_unit_names() -> None:
    key = unit_key("systemd-fsck@dev-disk-by\\x2dpath-pci-0000:00:1f.2.service", "CPUWeight")
    assert parse_unit_key(key) == (
        "systemd-fsck@dev-disk-by\\x2dpath-pci-0000:00:1f.2.service", "CPUWeight")


# -- the unit protocol against a FAKE systemd --------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSystemd]:
    policies = policy_dir(tmp_path / "bus-policy", find_policy_dir())
    with PrivateBus(policies) as bus, FakeSystemd(bus.address) as systemd:
        yield systemd


@pytest.fixture
def backend(fake: FakeSystemd, journal: Journal) -> Iterator[Applier]:
    client = SystemdClient(fake.address)
    hierarchies = cgroups.detect_hierarchies()
    applier = Applier(Actuator(journal, hierarchies, client), hierarchies, "",
                      unit_groups=UnitGroups(client))
    try:
        yield applier
    finally:
        applier.restore(None)
        client.close()


def _cgroups(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def test_a_whole_unit_gets_runtime_properties_and_nothing_moves(
        fake: FakeSystemd, backend: Applier, spawn: Spawner) -> None:
    build = [spawn.sleeper(), spawn.sleeper()]
    other = spawn.sleeper()
    fake.add("run-u7.scope", [p.pid for p in build])
    fake.add("session-2.scope", [other.pid], CPUWeight=200)
    before = {p.pid: (_cgroups(p.pid), snapshot(p.pid)) for p in [*build, other]}
    doc = policy_doc([{"name": "build", "match": {"pid": [p.pid for p in build]},
                       "task": {"policy": "batch"},
                       "cgroup": {"shares": 4096, "cpus": "1", "quota_us": 80000,
                                  "period_us": 100000}}])
    result = backend.apply(doc, {"owner": "dep-u"}, False)
    assert result["problems"] == [], result
    props = fake.units["run-u7.scope"].props
    assert props["CPUWeight"] == 157 and props["AllowedCPUs"] == b"\x02"
    assert props["CPUQuotaPerSecUSec"] == 800000 and props["CPUQuotaPeriodUSec"] == 100000
    assert all(runtime for _, runtime, _ in fake.calls), fake.calls  # never persistent
    assert {name for name, _, _ in fake.calls} == {"run-u7.scope"}
    assert fake.units["session-2.scope"].props["CPUWeight"] == 200
    # No cgroup of ours, no process moved; the task knobs still apply per task.
    for proc in [*build, other]:
        assert _cgroups(proc.pid) == before[proc.pid][0]
    assert all(tasks.read_knob(p.pid, "policy") == "batch" for p in build)
    assert [p for h in cgroups.detect_hierarchies().values()
            for p in h.mount.glob("schedcp.dep-u.*")] == []
    entries = [e for e in backend.actuator.journal.pending_restore(owner="dep-u")
               if e.kind == KIND_UNIT]
    assert {parse_unit_key(e.key)[1]: e.prior for e in entries} == {
        "CPUWeight": UNSET, "CPUQuotaPeriodUSec": UNSET, "CPUQuotaPerSecUSec": UNSET,
        "AllowedCPUs": []}
    report = backend.restore("dep-u")
    assert set(report["summary"]) == {"restored"}, report["summary"]
    assert fake.units["run-u7.scope"].props == {"CPUWeight": UNSET, "CPUQuotaPerSecUSec": UNSET,
                                               "CPUQuotaPeriodUSec": UNSET, "AllowedCPUs": b""}
    for proc in [*build, other]:
        assert (_cgroups(proc.pid), snapshot(proc.pid)) == before[proc.pid]


def test_a_unit_with_other_processes_is_refused_before_anything_is_written(
        fake: FakeSystemd, backend: Applier, spawn: Spawner) -> None:
    target, shell = spawn.sleeper(), spawn.sleeper()
    fake.add("session-2.scope", [target.pid, shell.pid])
    before = snapshot(target.pid)
    doc = policy_doc([{"name": "batch", "match": {"pid": [target.pid]},
                       "task": {"policy": "batch"}, "cgroup": {"idle": True}}])
    with pytest.raises(NotSupported) as err:
        backend.apply(doc, {"owner": "dep-r"}, False)
    message = str(err.value)
    assert "session-2.scope" in message and str(shell.pid) in message, message
    assert "does not move processes out of their units" in message
    assert fake.calls == []
    assert backend.actuator.journal.pending_restore(owner="dep-r") == []
    assert snapshot(target.pid) == before


def test_forked_descendants_of_a_target_count_as_the_unit_s_targets(
        fake: FakeSystemd, backend: Applier, spawn: Spawner) -> None:
    forker = spawn.forker()
    child = forker.fork()
    fake.add("run-u9.scope", [forker.pid, child])
    doc = policy_doc([{"name": "g", "match": {"pid": [forker.pid]}, "cgroup": {"idle": True}}])
    assert backend.apply(doc, {"owner": "dep-d"}, False)["problems"] == []
    assert fake.units["run-u9.scope"].props["CPUWeight"] == 0
    doc["group"][0]["descendants"] = False
    backend.restore("dep-d")
    with pytest.raises(NotSupported, match=r"run-u9\.scope"):
        backend.apply(doc, {"owner": "dep-d2"}, False)


def test_restore_after_a_crash_and_an_override_left_alone(
        fake: FakeSystemd, journal: Journal, spawn: Spawner) -> None:
    a, b = spawn.sleeper(), spawn.sleeper()
    fake.add("a.service", [a.pid], CPUWeight=50)
    fake.add("b.service", [b.pid])
    hierarchies = cgroups.detect_hierarchies()
    first = SystemdClient(fake.address)
    applier = Applier(Actuator(journal, hierarchies, first), hierarchies, "",
                      unit_groups=UnitGroups(first))
    doc = policy_doc([{"name": "a", "match": {"pid": [a.pid]}, "cgroup": {"shares": 4096}},
                      {"name": "b", "match": {"pid": [b.pid]}, "cgroup": {"idle": True}}])
    assert applier.apply(doc, {"owner": "dep-c"}, False)["problems"] == []
    first.close()  # the daemon dies: nothing restored
    fake.units["b.service"].props["CPUWeight"] = 300  # an administrator's set-property
    second = SystemdClient(fake.address)
    try:
        report = Actuator(journal, hierarchies, second).restore()
    finally:
        second.close()
    outcomes = {parse_unit_key(e["key"])[0]: e["outcome"] for e in report["entries"]}
    assert outcomes == {"a.service": "restored", "b.service": "overridden"}, report
    assert fake.units["a.service"].props["CPUWeight"] == 50
    assert fake.units["b.service"].props["CPUWeight"] == 300


def test_a_unit_gone_before_restore_is_skipped(
        fake: FakeSystemd, backend: Applier, spawn: Spawner) -> None:
    proc = spawn.sleeper()
    fake.add("gone.service", [proc.pid])
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "cgroup": {"shares": 2048}}])
    assert backend.apply(doc, {"owner": "dep-g"}, False)["problems"] == []
    del fake.units["gone.service"]
    report = backend.restore("dep-g")
    assert set(report["summary"]) == {"skipped"}, report
    assert "NoSuchUnit" in report["entries"][0]["note"]


def test_the_verifier_sandbox_runs_in_scopes_of_its_own(
        fake: FakeSystemd, backend: Applier) -> None:
    """Each worker gets a transient scope (a whole unit for its group), the hogs another."""
    doc = policy_doc([{"name": "w", "match": {"comm": ["nothing-here"]},
                       "cgroup": {"shares": 2048}}])
    client = backend.unit_groups.units if backend.unit_groups else None
    assert isinstance(client, SystemdClient)

    def place(owner: str, role: str, pid: int) -> None:
        place_in_scope(client, owner, role, pid)

    findings = dynamic.dynamic_check(
        doc, 0.5,
        apply=lambda policy, owner: backend.apply(policy, {"owner": owner}, False),
        restore=lambda owner: backend.restore(owner), place=place,
        release=lambda owner: release_sandbox(client, owner))
    codes = {f["code"] for f in findings}
    assert "measurement" in codes and "no-scratch-cgroup" not in codes, findings
    assert "sandbox-failed" not in codes, findings
    scopes = {name: values for name, values in fake.transient}
    worker = next(name for name in scopes if name.endswith("-w.scope"))
    owner = worker[len("schedcp-"):-len("-w.scope")]
    assert (worker, scopes[worker]["Slice"]) == sandbox_units(owner, "w")
    assert sandbox_units(owner, "hogs")[0] in scopes
    assert all(len(values["PIDs"]) == 1 for values in scopes.values()), scopes
    # The policy's weight went to the worker's scope only, and came back.
    touched = {name for name, _, _ in fake.calls}
    assert touched == {worker}, fake.calls
    assert fake.calls[0][2] == {"CPUWeight": cgroups.shares_to_weight(2048)}
    assert fake.collected[worker].props["CPUWeight"] == UNSET
    # The end of the run stopped its slice and the (then empty) parents:
    # nothing of the sandbox is left in systemd's tree.
    run_slice = sandbox_units(owner, "w")[1]
    assert fake.stopped == [run_slice, "schedcp-verify.slice", "schedcp.slice"], fake.stopped
    assert not [u for u in fake.units if u.startswith("schedcp")], sorted(fake.units)


def test_releasing_a_sandbox_leaves_a_parent_that_still_holds_a_process(
        fake: FakeSystemd, spawn: Spawner) -> None:
    client = SystemdClient(fake.address)
    try:
        other, ours = spawn.sleeper(), spawn.sleeper()
        place_in_scope(client, "verify-other", "w", other.pid)
        place_in_scope(client, "verify-ours", "w", ours.pid)
        assert release_sandbox(client, "verify-ours") == ["schedcp-verify-ours.slice"]
        assert "schedcp-verify-other-w.scope" in fake.units
        assert {"schedcp-verify.slice", "schedcp.slice"} <= set(fake.units)
    finally:
        client.close()


def test_a_stopped_transient_unit_is_gone_not_overridden(
        fake: FakeSystemd, backend: Applier, spawn: Spawner) -> None:
    """systemd loads any name; a collected unit reads "not-found" with defaults, not ours."""
    proc = spawn.sleeper()
    fake.add("run-u3.service", [proc.pid])
    doc = policy_doc([{"name": "g", "match": {"pid": [proc.pid]}, "cgroup": {"cpus": "0"}}])
    assert backend.apply(doc, {"owner": "dep-s"}, False)["problems"] == []
    del fake.units["run-u3.service"]
    assert backend.actuator.check_overrides() == []
    states = {e.state for e in backend.actuator.journal.entries(owner="dep-s")}
    assert states == {"skipped"}, states
