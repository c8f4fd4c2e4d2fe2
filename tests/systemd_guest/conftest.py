"""Fixtures for the systemd guest: the .deb (this build, a previous one) and the image.

The .deb is tests/conftest.py's ``built_deb`` (one packaging/build-deb per
session, or ``$SCHEDCP_DEB``).  "The previous build" is the same package repacked with
a lower version (``<version>~prev1``): what an upgrade exercises is dpkg's
and the maintainer scripts' handling of a running schedcpd.service, which
does not depend on the code differing.  The tests skip, with the reason,
when the kernel or the Debian packages cannot be downloaded (no network)
or when not root (mmdebstrap, qemu's disk).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from plugins.scheduler.microvm import FetchError
from plugins.scheduler.microvm.systemd_guest import SystemdGuest
from schedcpd import __version__

PREVIOUS_SUFFIX = "~prev1"


def _run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def repack_previous(deb: Path, dest: Path) -> Path:
    """``deb`` with its version lowered to ``<version>~prev1`` (dpkg-deb -R, edit, -b)."""
    tree = dest / "tree"
    out = _run(["dpkg-deb", "-R", str(deb), str(tree)])
    assert out.returncode == 0, out.stderr
    control = tree / "DEBIAN" / "control"
    version = __version__ + PREVIOUS_SUFFIX
    text = control.read_text()
    assert f"\nVersion: {__version__}\n" in text, text
    control.write_text(text.replace(f"\nVersion: {__version__}\n", f"\nVersion: {version}\n"))
    built = dest / f"schedcp_{version}_amd64.deb"
    # gzip -1: this copy only has to install, not to be small.
    out = _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(built)])
    assert out.returncode == 0, out.stderr
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return built


@pytest.fixture(scope="session")
def systemd_guest() -> SystemdGuest:
    if os.geteuid() != 0:
        pytest.skip("building the Debian image and booting it need root")
    try:
        return SystemdGuest().prepare()
    except FetchError as err:
        pytest.skip(f"cannot download the guest kernel or the Debian packages: {err}")
