"""Fixtures for the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp_path(memory_path: Path) -> Path:
    """These tests keep SQLite databases and journals: their tmp_path is on tmpfs."""
    return memory_path
