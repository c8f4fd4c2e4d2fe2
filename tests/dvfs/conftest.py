"""Fixtures of the dvfs tests: a FAKE cpufreq tree, a real journal, a started plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.dvfs.plugin import DvfsPlugin
from schedcpd.plugin_api import Journal, PluginContext
from tests.dvfs import fake_sysfs
from tests.fixtures_plugins import started


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """The FAKE sysfs CPU root (tests/dvfs/fake_sysfs.py)."""
    return fake_sysfs.build(tmp_path / "FAKE-sys-devices-system-cpu")


def start(tmp_path: Path, journal: Journal, fake_root: Path) -> DvfsPlugin:
    """A dvfs plugin on ``journal`` whose sysfs root is the FAKE tree."""
    plugin = DvfsPlugin()
    plugin.schedcp_startup(PluginContext(state_dir=tmp_path, journal=journal,
                                         config={"sysfs_cpu": str(fake_root)}))
    return plugin


@pytest.fixture
def dvfs(tmp_path: Path, journal: Journal, fake_root: Path) -> Iterator[DvfsPlugin]:
    """A started dvfs plugin on the FAKE tree; everything it wrote is restored after."""
    with started(DvfsPlugin(), "dvfs", tmp_path, journal, sysfs_cpu=str(fake_root)) as plugin:
        yield plugin
