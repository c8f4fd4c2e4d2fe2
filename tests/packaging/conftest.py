"""Shared helpers for the packaging tests: unit files, a temporary unit root."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest

from tests.harness import ROOT

SYSTEMD_DIR = ROOT / "systemd"
UNITS = ("schedcpd.service", "schedcp-agent.service")


def unit_values(unit: Path, key: str) -> list[str]:
    """Every value of ``key`` in ``unit`` (keys may repeat in systemd units)."""
    values = []
    for line in unit.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def unit_capabilities(unit: Path) -> set[str]:
    """The CapabilityBoundingSet of ``unit``, as lower-case names without CAP_."""
    caps: set[str] = set()
    for value in unit_values(unit, "CapabilityBoundingSet"):
        caps |= {c.lower().removeprefix("cap_") for c in value.split()}
    return caps


def ini(path: Path) -> configparser.ConfigParser:
    """Parse a D-Bus .service (ini-like) file."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A file-system root for ``systemd-analyze verify --root``.

    verify checks that every Exec*= binary exists and that the units the
    service depends on (dbus.socket, sysinit.target, ...) can be loaded, so
    the root holds this host's unit files, stub executables at the paths the
    units name (the package installs the real ones), and our units.
    """
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    for exe in ("schedcpd", "schedcp-agent"):
        stub = root / "usr" / "bin" / exe
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    shutil.copy("/bin/kill", root / "usr" / "bin" / "kill")
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD_DIR / unit, root / "usr" / "lib" / "systemd" / "system" / unit)
    return root
