"""Utilisation clamps on this host: the capability report and refusal, real tasks.

This host's kernel has no CONFIG_UCLAMP_TASK: ``sched_setattr`` with the
util-clamp flags fails with EOPNOTSUPP, and the plugin must say so and
refuse a group clamp with a named error before writing anything.  On a
kernel that has uclamp (the micro-VM guest, tests/microvm), the same test
applies and restores real clamps instead.  cgroup clamps are exercised on a
FAKE cgroup v2 tree here (this host's cpu controller is on cgroup v1) and for
real in the guest.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.dvfs import cpufreq, uclamp
from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import Journal, NotFound, NotSupported
from tests.fixtures_plugins import started

GROUP = {"name": "ui", "match": {"pids": []}, "uclamp": {"min": 512}}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                             "threading.Thread(target=time.sleep, args=(600,)).start()\n"
                             "print(flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def host_plugin(tmp_path: Path, journal: Journal) -> Iterator[DvfsPlugin]:
    """The dvfs plugin on this host's real sysfs and cgroups (it writes only clamps here)."""
    with started(DvfsPlugin(), "dvfs", tmp_path, journal) as plugin:
        yield plugin


def test_the_capability_report_says_what_this_host_lacks_and_why(
        host_plugin: DvfsPlugin) -> None:
    caps = host_plugin.schedcp_describe()["capabilities"]
    assert set(caps) == {"cpufreq.governor", "cpufreq.min_max_freq", "cpufreq.epp",
                         "cpufreq.boost", "uclamp.task", "uclamp.cgroup"}
    if not cpufreq.CpuFreq().policies():
        assert not caps["cpufreq.governor"]["available"]
        assert "/sys/devices/system/cpu/cpufreq/policy* is absent" in \
            caps["cpufreq.governor"]["reason"]
    ok, why = uclamp.probe()
    assert caps["uclamp.task"] == {"available": ok, "reason": why}
    if not ok:
        assert "EOPNOTSUPP" in why and "CONFIG_UCLAMP_TASK" in why, why


def test_a_group_clamp_is_applied_for_real_or_refused_by_name(
        host_plugin: DvfsPlugin, journal: Journal, sleeper: subprocess.Popen[bytes]) -> None:
    tids = uclamp.threads(sleeper.pid)
    assert len(tids) == 2
    before = {t: uclamp.get(t) for t in tids}
    doc = {"group": [{**GROUP, "match": {"pids": [sleeper.pid]}}]}
    if not host_plugin.clamp_ok[0]:
        with pytest.raises(NotSupported, match=r"group\[0\]\.uclamp: group 'ui': .*EOPNOTSUPP"):
            host_plugin.schedcp_apply("dvfs", doc, {"owner": "u1"}, False)
        assert journal.entries(owner="u1") == []
        return
    host_plugin.schedcp_apply("dvfs", doc, {"owner": "u1"}, False)
    assert {t: uclamp.get(t)[0] for t in tids} == dict.fromkeys(tids, 512)
    host_plugin.schedcp_restore("dvfs", {"owner": "u1"})
    assert {t: uclamp.get(t) for t in tids} == before


@pytest.fixture
def fake_cgroups(tmp_path: Path) -> Path:
    """A FAKE cgroup v2 root with the cpu controller and one child with clamp files."""
    root = tmp_path / "FAKE-cgroup2"
    (root / "app.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "app.slice" / "cpu.uclamp.min").write_text("0.00\n")
    (root / "app.slice" / "cpu.uclamp.max").write_text("max\n")
    (root / "bare").mkdir()
    return root


def test_cgroup_clamps_on_a_fake_v2_tree(tmp_path: Path, journal: Journal, fake_root: Path,
                                         fake_cgroups: Path) -> None:
    with started(DvfsPlugin(), "dvfs", tmp_path, journal, sysfs_cpu=str(fake_root),
                 cgroup_root=str(fake_cgroups)) as plugin:
        assert plugin.schedcp_describe()["capabilities"]["uclamp.cgroup"]["available"]
        app = fake_cgroups / "app.slice"
        doc = {"cgroup": [{"path": "app.slice", "uclamp_min": 20, "uclamp_max": 80.5}]}
        result = plugin.schedcp_apply("dvfs", doc, {"owner": "c1"}, False)
        assert result is not None and result["scope"] == "machine"
        assert (app / "cpu.uclamp.min").read_text() == "20.00"
        assert (app / "cpu.uclamp.max").read_text() == "80.50"
        held = {e.key: e.prior for e in journal.entries(owner="c1")}
        assert held == {"cg_uclamp:app.slice:cpu.uclamp.min": "0.00",
                        "cg_uclamp:app.slice:cpu.uclamp.max": "max"}
        (app / "cpu.uclamp.max").write_text("90.00")  # the administrator
        report = plugin.schedcp_restore("dvfs", {"owner": "c1"})
        assert report is not None and report["summary"] == {"restored": 1, "overridden": 1}
        assert (app / "cpu.uclamp.min").read_text() == "0.00"
        assert (app / "cpu.uclamp.max").read_text() == "90.00"
        with pytest.raises(NotFound, match=r"cgroup\[0\].path: no cgroup 'gone'"):
            plugin.schedcp_apply("dvfs", {"cgroup": [{"path": "gone", "uclamp_min": 1}]},
                                 {"owner": "c2"}, False)
        with pytest.raises(NotSupported, match=r"'bare' has no cpu\.uclamp\.min"):
            plugin.schedcp_apply("dvfs", {"cgroup": [{"path": "bare", "uclamp_min": 1}]},
                                 {"owner": "c2"}, False)
        assert journal.entries(owner="c2") == []


def test_this_host_s_cgroup_v2_has_no_cpu_controller_and_says_so(
        host_plugin: DvfsPlugin) -> None:
    root = uclamp.cgroup_v2_root()
    cap = host_plugin.schedcp_describe()["capabilities"]["uclamp.cgroup"]
    if root is None or "cpu" not in (root / "cgroup.controllers").read_text().split():
        assert not cap["available"] and cap["reason"], cap
        with pytest.raises(NotSupported, match="cgroup uclamp"):
            host_plugin.schedcp_apply("dvfs", {"cgroup": [{"path": "x", "uclamp_min": 5}]},
                                      {"owner": "c3"}, False)
    else:
        assert cap == {"available": uclamp.cgroup_available(root)[0],
                       "reason": uclamp.cgroup_available(root)[1]}


def test_the_builtin_dvfs_policy_is_valid_and_says_why_it_cannot_apply_here(
        host_plugin: DvfsPlugin, tmp_path: Path) -> None:
    import tomllib

    from plugins.dvfs import policy, verification

    paths = sorted(Path(__file__).parents[2].joinpath("policies").glob("dvfs-*.toml"))
    assert paths
    for path in paths:
        doc = tomllib.loads(path.read_text())
        assert doc["policy"]["subsystem"] == "dvfs"
        assert policy.validate(doc) == [], path.name
        act = host_plugin.actuator
        assert act is not None
        found = verification.static_check(doc, [], act, host_plugin.clamp_ok)
        if not act.freq.policies():
            # The first thing missing here, by name, with the capability's reason.
            assert [f["code"] for f in found] == ["not-supported"], found
            assert host_plugin.caps["cpufreq.governor"]["reason"] in found[0]["message"]
            assert found[0]["field"] == "cpufreq[0]"


def test_the_dynamic_stage_runs_clamps_on_a_task_of_its_own_or_refuses_by_name(
        host_plugin: DvfsPlugin) -> None:
    doc = {"cpufreq": [{"cpus": "all", "governor": "performance"}],
           "group": [{"name": "ui", "match": {"comm": ["nothing-has-this-name"]},
                      "uclamp": {"min": 512, "max": 900}}]}
    found = host_plugin.schedcp_dynamic_check("dvfs", doc, 0.5) or []
    codes = [(f["code"], f["severity"]) for f in found]
    assert codes[0] == ("machine-wide", "info"), found
    if host_plugin.clamp_ok[0]:
        assert codes[1:] == [("measured", "info")], found
    else:
        assert codes[1:] == [("not-supported", "error")], found
        assert "EOPNOTSUPP" in found[1]["message"]
