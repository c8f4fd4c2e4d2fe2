"""Fixtures for the policy tests: a verifier over a real repository and plugin."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.scheduler import cgroups
from schedcpd.hookspecs import PluginContext
from schedcpd.journal import Journal
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority
from schedcpd.verifier import Verifier


@pytest.fixture
def tmp_path(memory_path: Path) -> Path:
    """These tests keep SQLite databases and journals: their tmp_path is on tmpfs."""
    return memory_path


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[tuple[Verifier, Repository]]:
    """A verifier with the scheduler plugin started (its cgroups under a test parent)."""
    parent = f"schedcp-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    journal = Journal(tmp_path / "journal.db")
    host = PluginHost(load_entry_points=False)
    host.startup(lambda name: PluginContext(state_dir=tmp_path, journal=journal,
                                            config={"cgroup_parent": parent}))
    store = StateStore(tmp_path / "db.sqlite", MIGRATIONS)
    repo = Repository(store, lambda s, d: host.call_first("schedcp_validate", subsystem=s,
                                                           policy=d), "scheduler")
    tokens = TokenAuthority(KeyStore(tmp_path / "keys"), store)
    try:
        yield Verifier(host, repo, tokens, dynamic_seconds=1.0), repo
    finally:
        host.call_first("schedcp_restore", subsystem="scheduler", scope={})
        host.shutdown()
        store.close()
        journal.close()
        for hierarchy in cgroups.detect_hierarchies().values():
            leftover = hierarchy.mount / parent
            if leftover.is_dir():  # the plugin removes its groups; the parent is ours
                for child in leftover.iterdir():
                    if child.is_dir():
                        child.rmdir()
                leftover.rmdir()


