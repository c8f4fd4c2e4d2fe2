"""The dvfs plugin's files are written by the core's actuator, within its declarations.

On the FAKE cpufreq tree of tests/dvfs (plain files in tmp): the plugin's
writes arrive as journal entries the core made (with the real path as
target), and the core refuses a change outside what the plugin declared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import Journal, KnobChange, KnobNotDeclared, KnobValueRefused
from tests.dvfs import fake_sysfs

DOC = {"policy": {"name": "t", "description": "t", "subsystem": "dvfs"},
       "cpufreq": [{"cpus": "0-1", "governor": "performance", "max_khz": 3_000_000}],
       "boost": {"enabled": False}}


def test_the_plugins_writes_are_the_cores_journaled_with_their_real_paths(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    dvfs.schedcp_apply("dvfs", DOC, {"owner": "p1"}, False)
    held = {e.key: (e.kind, e.target) for e in journal.entries(owner="p1")}
    assert held == {
        "cpufreq:policy0:scaling_governor": (
            "cpufreq.scaling_governor", str(fake_root / "cpufreq/policy0/scaling_governor")),
        "cpufreq:policy0:scaling_max_freq": (
            "cpufreq.scaling_max_freq", str(fake_root / "cpufreq/policy0/scaling_max_freq")),
        "boost:cpufreq": ("boost", str(fake_root / "cpufreq/boost"))}


def test_the_core_refuses_what_dvfs_did_not_declare(
        dvfs: DvfsPlugin, fake_root: Path, journal: Journal) -> None:
    before = fake_sysfs.snapshot(fake_root)
    assert dvfs.actuator is not None
    core = dvfs.actuator.core
    refused = [
        (KnobChange("cpufreq.scaling_governor", str(fake_root / "cpufreq/policy0/related_cpus"),
                    "performance"), KnobNotDeclared),
        (KnobChange("cpufreq.scaling_governor",
                    str(fake_root / "cpufreq/policy0/../policy2/../../cpu0/../cpufreq/boost"),
                    "performance"), KnobNotDeclared),
        (KnobChange("cpuinfo_max_freq", str(fake_root / "cpufreq/policy0/cpuinfo_max_freq"),
                    "1"), KnobNotDeclared),
        (KnobChange("cpufreq.scaling_governor",
                    str(fake_root / "cpufreq/policy0/scaling_governor"), "turbo"),
         KnobValueRefused),
        (KnobChange("boost", str(fake_root / "cpufreq/boost"), "2"), KnobValueRefused)]
    for change, error in refused:
        with pytest.raises(error):
            core.apply("p2", [change])
    assert fake_sysfs.snapshot(fake_root) == before
    assert journal.entries(owner="p2") == []
