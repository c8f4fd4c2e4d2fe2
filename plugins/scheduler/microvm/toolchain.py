"""Build tools for the guest: clang, a static libbpf >= 1.4 and bpftool.

Debian 12's libbpf (1.1) is too old for sched_ext; bookworm-backports has
1.4.  Its ``libbpf-dev`` (headers, ``libbpf.a``) and ``bpftool`` are
downloaded into the cache and unpacked there -- nothing is installed on the
host.  ``libbpf.a`` links statically with the host's ``libelf.a``,
``libz.a`` and ``libzstd.a`` (libelf-dev, zlib1g-dev, libzstd-dev).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from plugins.scheduler.microvm import apt

SUITE = "bookworm-backports"
PACKAGES = ("libbpf-dev", "bpftool")
CLANGS = ("clang-19", "clang-18", "clang-17", "clang-16", "clang")
MIN_CLANG = 16


@dataclass(frozen=True)
class Toolchain:
    """Paths of the tools the builder uses."""

    clang: str
    clang_version: str
    cc: str
    include: Path
    libbpf_a: Path
    bpftool: Path
    libbpf_version: str

    def identity(self) -> str:
        """What changes the build output (part of the cache key)."""
        return f"{self.clang_version}|libbpf {self.libbpf_version}|{self.cc}"


def find_clang() -> tuple[str, str]:
    """The newest usable clang (>= 16, for sched_ext's BPF features) and its version."""
    for name in CLANGS:
        path = shutil.which(name)
        if not path:
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        first = out.splitlines()[0] if out else ""
        try:
            major = int(first.split("version ")[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if major >= MIN_CLANG:
            return path, first.strip()
    raise RuntimeError(f"no clang >= {MIN_CLANG} found (apt-get install clang-19)")


def fetch(cache: Path) -> Toolchain:
    """Download (once) libbpf-dev and bpftool from bookworm-backports; find clang."""
    clang, clang_version = find_clang()
    root = cache / "tools"
    tree = root / "tree"
    ready = root / "ready"
    if not ready.is_file():
        if root.exists():
            shutil.rmtree(root)
        suite = apt.Suite(cache, SUITE)
        suite.update()
        versions = {p: suite.show(p)["Version"] for p in PACKAGES}
        for deb in suite.download(list(PACKAGES), root / "debs"):
            apt.unpack(deb, tree)
        shutil.rmtree(root / "debs")
        ready.write_text(f"{versions['libbpf-dev']}\n")
    libbpf_a = next(iter(sorted(tree.glob("usr/lib/*/libbpf.a"))), None)
    bpftool = tree / "usr" / "sbin" / "bpftool"
    if libbpf_a is None or not bpftool.is_file():
        raise RuntimeError(f"unexpected layout of the unpacked tools in {tree}")
    cc = shutil.which("gcc") or shutil.which("cc") or "cc"
    return Toolchain(clang=clang, clang_version=clang_version, cc=cc,
                     include=tree / "usr" / "include", libbpf_a=libbpf_a, bpftool=bpftool,
                     libbpf_version=ready.read_text().strip())
