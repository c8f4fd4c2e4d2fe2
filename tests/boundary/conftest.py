"""Fixtures of the privilege-boundary tests: the dvfs tests' FAKE tree and started plugin."""

from __future__ import annotations

from tests.dvfs.conftest import dvfs, fake_root, journal

__all__ = ["dvfs", "fake_root", "journal"]
