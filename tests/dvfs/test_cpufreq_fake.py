"""cpufreq and boost through the dvfs plugin, on a FAKE sysfs tree (no cpufreq driver here).

The tree is plain files (tests/dvfs/fake_sysfs.py): what is proven is the
plugin's side (plans, named errors, journal protocol, exact restore,
override detection), not what a real driver does with the values.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from plugins.dvfs import applier, policy
from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import InvalidArgument, Journal, NotFound, NotSupported
from tests.dvfs import fake_sysfs

POL0 = Path("cpufreq/policy0")


def doc(**tables: Any) -> dict[str, Any]:
    return {"policy": {"name": "t", "description": "t", "subsystem": "dvfs"}, **tables}


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


def test_apply_writes_the_values_journals_the_old_ones_and_restore_is_exact(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    before = fake_sysfs.snapshot(fake_root)
    d = doc(cpufreq=[{"cpus": "0-1", "governor": "performance", "epp": "performance",
                      "min_khz": 2_000_000, "max_khz": 3_000_000}],
            boost={"enabled": False})
    assert dvfs.schedcp_validate("dvfs", d) == []
    plan = dvfs.schedcp_apply("dvfs", d, {"owner": "d1"}, True)
    assert plan is not None and plan["scope"] == "machine"
    assert len(plan["changes"]) == 5
    assert fake_sysfs.snapshot(fake_root) == before  # a dry run writes nothing

    dvfs.schedcp_apply("dvfs", d, {"owner": "d1"}, False)
    assert read(fake_root, "cpufreq/policy0/scaling_governor") == "performance"
    assert read(fake_root, "cpufreq/policy0/energy_performance_preference") == "performance"
    assert read(fake_root, "cpufreq/policy0/scaling_min_freq") == "2000000"
    assert read(fake_root, "cpufreq/policy0/scaling_max_freq") == "3000000"
    assert read(fake_root, "cpufreq/boost") == "0"
    assert read(fake_root, "cpufreq/policy2/scaling_governor") == "schedutil"  # CPUs 2-3
    held = {e.key: (e.prior, e.new, e.state) for e in journal.entries(owner="d1")}
    assert held == {
        "cpufreq:policy0:scaling_governor": ("schedutil", "performance", "applied"),
        "cpufreq:policy0:energy_performance_preference": ("balance_performance",
                                                          "performance", "applied"),
        "cpufreq:policy0:scaling_min_freq": ("800000", "2000000", "applied"),
        "cpufreq:policy0:scaling_max_freq": ("3600000", "3000000", "applied"),
        "boost:cpufreq": ("1", "0", "applied")}
    keys = {dvfs.schedcp_describe_key("dvfs", k)["knob"] for k in held}  # type: ignore[index]
    assert "scaling_governor" in keys and "boost" in keys

    report = dvfs.schedcp_restore("dvfs", {"owner": "d1"})
    assert report is not None and report["summary"] == {"restored": 5}, report
    assert fake_sysfs.snapshot(fake_root) == before
    assert not journal.pending_restore(subsystem="dvfs")


def test_all_cpus_and_a_second_apply_writes_only_what_is_new(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    d = doc(cpufreq=[{"cpus": "all", "governor": "powersave"}])
    first = dvfs.schedcp_apply("dvfs", d, {"owner": "d2"}, False)
    assert first is not None and first["summary"]["writes"] == 2  # policy0 and policy2
    again = dvfs.schedcp_apply("dvfs", d, {"owner": "d2"}, False)
    assert again is not None and again["summary"]["writes"] == 0
    assert len(journal.entries(owner="d2")) == 2


def test_raising_the_floor_above_the_ceiling_writes_the_ceiling_first(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    (fake_root / POL0 / "scaling_max_freq").write_text("1500000\n")
    d = doc(cpufreq=[{"cpus": "0", "min_khz": 2_000_000, "max_khz": 3_000_000}])
    dvfs.schedcp_apply("dvfs", d, {"owner": "d3"}, False)
    order = [e.key for e in sorted(journal.entries(owner="d3"), key=lambda e: e.id)]
    assert order == ["cpufreq:policy0:scaling_max_freq", "cpufreq:policy0:scaling_min_freq"]
    dvfs.schedcp_restore("dvfs", {"owner": "d3"})
    assert read(fake_root, "cpufreq/policy0/scaling_max_freq") == "1500000"
    assert read(fake_root, "cpufreq/policy0/scaling_min_freq") == "800000"


def test_a_value_changed_by_someone_else_is_detected_and_not_clobbered(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    d = doc(cpufreq=[{"cpus": "0-3", "governor": "performance", "max_khz": 3_000_000}])
    dvfs.schedcp_apply("dvfs", d, {"owner": "d4"}, False)
    (fake_root / POL0 / "scaling_governor").write_text("powersave\n")  # the administrator
    health = dvfs.schedcp_health("dvfs", {"owner": "d4"})
    assert health is not None and health["healthy"]
    state = dvfs.schedcp_state("dvfs")
    assert state is not None
    assert [o["key"] for o in state["overridden"]] == ["cpufreq:policy0:scaling_governor"]
    report = dvfs.schedcp_restore("dvfs", {"owner": "d4"})
    assert report is not None and report["summary"] == {"restored": 3}, report
    assert read(fake_root, "cpufreq/policy0/scaling_governor") == "powersave"  # left alone
    assert read(fake_root, "cpufreq/policy2/scaling_governor") == "schedutil"
    assert read(fake_root, "cpufreq/policy0/scaling_max_freq") == "3600000"


def test_an_override_seen_only_at_restore_is_left_alone(
        dvfs: DvfsPlugin, fake_root: Path) -> None:
    dvfs.schedcp_apply("dvfs", doc(boost={"enabled": False}), {"owner": "d5"}, False)
    (fake_root / "cpufreq/boost").write_text("1\n")
    (fake_root / "cpufreq/boost").write_text("1\n")
    dvfs.schedcp_apply("dvfs", doc(cpufreq=[{"cpus": "2", "epp": "power"}]),
                       {"owner": "d5"}, False)
    (fake_root / "cpufreq/policy2/energy_performance_preference").write_text("default\n")
    report = dvfs.schedcp_restore("dvfs", {"owner": "d5"})
    assert report is not None
    outcome = {e["key"]: e["outcome"] for e in report["entries"]}
    # boost already back at its prior by someone's hand: restored (nothing to write)
    assert outcome == {"boost:cpufreq": "restored",
                       "cpufreq:policy2:energy_performance_preference": "overridden"}
    assert read(fake_root, "cpufreq/policy2/energy_performance_preference") == "default"


@pytest.mark.parametrize(("tables", "error", "words"), [
    ({"cpufreq": [{"cpus": "0", "governor": "ondemand"}]}, NotSupported,
     "cpufreq[0].governor: policy0 does not offer 'ondemand'"),
    ({"cpufreq": [{"cpus": "0", "min_khz": 500_000}]}, InvalidArgument,
     "cpufreq[0].min_khz: 500000 kHz is outside policy0's cpuinfo range [800000, 3600000]"),
    ({"cpufreq": [{"cpus": "2", "max_khz": 4_000_000}]}, InvalidArgument,
     "outside policy2's cpuinfo range"),
    ({"cpufreq": [{"cpus": "1", "min_khz": 3_000_000}, {"cpus": "0", "max_khz": 1_000_000}]},
     InvalidArgument, "policy0 max_khz"),
    ({"cpufreq": [{"cpus": "0-7", "governor": "performance"}]}, NotFound,
     "cpufreq[0].cpus: CPU 4 does not exist here (CPUs: 0,1,2,3)"),
    ({"cpufreq": [{"cpus": "0", "governor": "performance"},
                  {"cpus": "1", "governor": "powersave"}]}, InvalidArgument,
     "cpufreq[1]: policy0 governor is set by cpufreq[0] too"),
], ids=["governor-not-offered", "below-cpuinfo-min", "above-cpuinfo-max", "min-above-max",
        "unknown-cpu", "same-policy-twice"])
def test_bad_input_is_a_named_error_and_nothing_is_written(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal, tables: dict[str, Any],
        error: type[Exception], words: str) -> None:
    before = fake_sysfs.snapshot(fake_root)
    with pytest.raises(error, match=None) as caught:
        dvfs.schedcp_apply("dvfs", doc(**tables), {"owner": "bad"}, False)
    assert words in str(caught.value), str(caught.value)
    assert fake_sysfs.snapshot(fake_root) == before
    assert journal.entries(owner="bad") == []


def test_min_above_max_against_the_live_ceiling(dvfs: DvfsPlugin, fake_root: Path) -> None:
    (fake_root / POL0 / "scaling_max_freq").write_text("1000000\n")
    with pytest.raises(InvalidArgument, match="minimum of 2000000 kHz above its maximum"):
        dvfs.schedcp_apply("dvfs", doc(cpufreq=[{"cpus": "0", "min_khz": 2_000_000}]),
                           {"owner": "bad"}, False)


def test_schema_names_each_bad_field() -> None:
    found = policy.validate(doc(
        cpufreq=[{"cpus": "0-x", "governor": "turbo", "epp": "fast", "min_khz": 3_000_000,
                  "max_khz": 1_000_000}, {"governor": "performance"}],
        boost={"enabled": "yes"},
        group=[{"name": "g", "match": {"comm": ["x"]}, "uclamp": {"min": 900, "max": 100}},
               {"name": "h", "match": {"pids": [1]}, "uclamp": {"min": 2000}}],
        cgroup=[{"path": "../etc", "uclamp_min": 120}], frequency={}))
    got = {(f["code"], f["field"]) for f in found}
    assert got == {
        ("cpus", "cpufreq[0].cpus"), ("unknown-governor", "cpufreq[0].governor"),
        ("unknown-epp", "cpufreq[0].epp"), ("min-above-max", "cpufreq[0].min_khz"),
        ("required", "cpufreq[1].cpus"), ("type", "boost"),
        ("min-above-max", "group[0].uclamp.min"), ("range", "group[1].uclamp.min"),
        ("cgroup-path", "cgroup[0].path"), ("range", "cgroup[0].uclamp_min"),
        ("unknown-key", "frequency")}, found
    assert all(f["severity"] == "error" and f["message"] for f in found)


def test_a_write_the_kernel_refuses_restores_what_was_written_first(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    before = fake_sysfs.snapshot(fake_root)
    d = doc(cpufreq=[{"cpus": "all", "governor": "performance"}])
    act = dvfs.actuator
    assert act is not None
    plan = applier.plan(d, act, None, dvfs.clamp_ok)
    assert [w.key for w in plan.writes] == ["cpufreq:policy0:scaling_governor",
                                            "cpufreq:policy2:scaling_governor"]
    # FAKE refusal between plan and write: policy2's file becomes a directory (EISDIR).
    target = fake_root / "cpufreq/policy2/scaling_governor"
    target.unlink()
    target.mkdir()
    with pytest.raises(InvalidArgument, match=r"policy2: the kernel refused scaling_governor "
                       r"= 'performance'.*what this deployment wrote is restored"):
        applier.apply(act, plan, "half")
    target.rmdir()
    target.write_text(before["cpufreq/policy2/scaling_governor"])
    assert fake_sysfs.snapshot(fake_root) == before  # policy0's write was undone
    assert read(fake_root, "cpufreq/policy0/scaling_governor") == "schedutil"
    assert not journal.pending_restore(owner="half", subsystem="dvfs")
    assert {e.state for e in journal.entries(owner="half")} == {"restored"}


def test_no_cpufreq_driver_is_reported_and_refused(tmp_path: Path, journal: Journal) -> None:
    from tests.dvfs.conftest import start

    root = tmp_path / "FAKE-no-driver"
    (root / "cpu0").mkdir(parents=True)
    (root / "cpufreq").mkdir()
    plugin = start(tmp_path, journal, root)
    try:
        caps = plugin.schedcp_describe()["capabilities"]
        for name in ("cpufreq.governor", "cpufreq.min_max_freq", "cpufreq.epp",
                     "cpufreq.boost"):
            assert not caps[name]["available"]
            assert "no cpufreq driver" in caps[name]["reason"], caps[name]
        with pytest.raises(NotSupported, match=r"cpufreq\[0\]: cpufreq: no cpufreq driver"):
            plugin.schedcp_apply("dvfs", doc(cpufreq=[{"cpus": "0", "governor": "performance"}]),
                                 {"owner": "x"}, False)
        with pytest.raises(NotSupported, match="boost"):
            plugin.schedcp_apply("dvfs", doc(boost={"enabled": True}), {"owner": "x"}, False)
    finally:
        plugin.schedcp_shutdown()
    shutil.rmtree(root)
