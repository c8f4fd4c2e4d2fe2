"""Fixtures for the scheduler plugin tests: real processes, real cgroups, own journal.

Every test works on processes it starts and on cgroups under a parent named
for this test run (``schedcp-test-<pid>``), or, for the default top-level
layout, on ``schedcp.<owner>.*`` groups of an owner named for the test
(``top_owner``), never on the daemon's own groups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.scheduler import cgroups
from plugins.scheduler.plugin import SchedulerPlugin
from schedcpd.journal import Journal
from tests.scheduler.helpers import Spawner, make_plugin


@pytest.fixture
def tmp_path(memory_path: Path) -> Path:
    """These tests keep SQLite databases and journals: their tmp_path is on tmpfs."""
    return memory_path


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    name = f"schedcp-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    yield name
    for hierarchy in cgroups.detect_hierarchies().values():
        path = hierarchy.mount / name
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir():
                    _empty_and_remove(hierarchy, child)
            _empty_and_remove(hierarchy, path)


@pytest.fixture
def top_owner() -> Iterator[str]:
    """An owner whose groups sit at the top of the hierarchy (cgroup_parent ""), removed after."""
    owner = f"dep-top-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    yield owner
    for hierarchy in cgroups.detect_hierarchies().values():
        for path in hierarchy.mount.glob(f"{cgroups.GROUP_PREFIX}{owner}.*"):
            _empty_and_remove(hierarchy, path)


def _empty_and_remove(hierarchy: cgroups.Hierarchy, path: Path) -> None:
    # Last-resort cleanup after a failed test: move leftovers to the root.
    for tid in (path / hierarchy.member_file).read_text().split():
        try:
            (hierarchy.mount / hierarchy.member_file).write_text(tid)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


@pytest.fixture
def plugin(journal: Journal, tmp_path: Path, cgroup_parent: str) -> Iterator[SchedulerPlugin]:
    p = make_plugin(journal, tmp_path, cgroup_parent)
    try:
        yield p
    finally:
        if p.applier is not None:
            p.schedcp_restore("scheduler", {})
        p.schedcp_shutdown()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    s = Spawner(tmp_path)
    try:
        yield s
    finally:
        s.close()
