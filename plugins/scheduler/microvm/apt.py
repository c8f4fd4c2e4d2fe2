"""Fetch Debian packages from an extra suite without touching the system's apt setup.

Every call passes its own sources file, lists directory and cache directory
(``Dir::Etc::SourceList``, ``Dir::Etc::SourceParts=-``, ``Dir::State::Lists``,
``Dir::Cache``), so ``/etc/apt`` and ``/var/lib/apt/lists`` are never read
for sources nor written.  Packages are downloaded (``apt-get download``) and
unpacked with ``dpkg-deb -x`` into a directory of the cache: nothing is
installed on the host.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

DEBIAN_MIRROR = "http://deb.debian.org/debian"


class FetchError(RuntimeError):
    """A download or package query failed (often: no network)."""


class Suite:
    """One Debian suite (e.g. ``trixie-backports``) with its private apt state."""

    def __init__(self, cache: Path, suite: str, mirror: str = DEBIAN_MIRROR) -> None:
        self.suite = suite
        self.root = cache / "apt" / suite
        self.sources = self.root / "sources.list"
        self.lists = self.root / "lists"
        self.mirror = mirror

    def _options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={self.lists}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "APT::Sandbox::User=root",
        ]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self._options(), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise FetchError(f"{' '.join([tool, *args])} ({self.suite}) failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc.stdout

    def update(self) -> None:
        """Download this suite's package lists into the private lists directory."""
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.sources.write_text(f"deb {self.mirror} {self.suite} main\n")
        _LOGGER.info("apt: updating the %s package lists", self.suite)
        self._run("apt-get", "update")

    def show(self, package: str) -> dict[str, str]:
        """The candidate's control fields (Version, Depends, ...) of ``package``."""
        out = self._run("apt-cache", "show", package)
        fields: dict[str, str] = {}
        for line in out.split("\n\n", 1)[0].splitlines():
            match = re.match(r"^([A-Za-z-]+):\s?(.*)$", line)
            if match:
                fields[match.group(1)] = match.group(2)
        if not fields:
            raise FetchError(f"package {package} not found in {self.suite}")
        return fields

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        """Download ``packages`` (exact names) as .deb files into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        _LOGGER.info("apt: downloading %s from %s", " ".join(packages), self.suite)
        self._run("apt-get", "download", *packages, cwd=dest)
        debs = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob("*.deb"))
        return debs


def depends_names(depends: str) -> list[str]:
    """Package names of a Depends field (first alternative of each clause)."""
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0])
    return names


def unpack(deb: Path, dest: Path) -> None:
    """Unpack a .deb's files into ``dest`` (``dpkg-deb -x``; no maintainer scripts)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, capture_output=True,
                   timeout=300)
