"""Fixtures for the tuning tests: the deployment tests' workload and fast daemon settings."""

from __future__ import annotations

from tests.deploy.conftest import FAST, workload

__all__ = ["FAST", "workload"]
