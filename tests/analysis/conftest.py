from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Procs

WORKLOADS = Path(__file__).with_name("workloads.py")

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start child processes in their own sessions; kill their groups afterwards."""
    with Procs("schedcp-analysis-") as procs:
        def start(*argv: str, cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
            return procs.start(list(argv), cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

        yield start


class Argv:
    """Command lines of the test workloads."""

    @staticmethod
    def workload(kind: str, *args: str) -> list[str]:
        """Run one of workloads.py's loops."""
        return [sys.executable, str(WORKLOADS), kind, *args]

    @staticmethod
    def hog() -> list[str]:
        """A pure CPU loop with no forks."""
        return ["sh", "-c", "while :; do :; done"]

    @staticmethod
    def dd(path: Path, blocks: int = 65536) -> list[str]:
        """dd writing 4 KiB blocks synchronously (O_DIRECT|O_DSYNC), up to 256 MiB."""
        return ["dd", "if=/dev/zero", f"of={path}", "bs=4k", f"count={blocks}",
                "oflag=direct,dsync", "status=none"]

    @staticmethod
    def make(directory: Path, targets: int = 20000) -> list[str]:
        """make -j2 over a Makefile whose every target forks a short shell."""
        path = directory / "Makefile"
        names = " ".join(f"t{i}" for i in range(targets))
        path.write_text(f'all: {names}\nt%:\n\t@sh -c ":"\n.PHONY: all\n')
        return ["make", "-s", "-j2", "-f", str(path)]


@pytest.fixture
def argv() -> type[Argv]:
    """The workload command lines."""
    return Argv


CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


@pytest.fixture
def cpu_cgroup() -> Iterator[Callable[[str], str]]:
    """Create cgroups under the v1 cpu hierarchy; empty and remove them afterwards.

    The factory takes a relative path (may be nested) and returns the cgroup
    path as /proc/<pid>/cgroup shows it.
    """
    if not (CPU_CGROUP_ROOT / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    base = CPU_CGROUP_ROOT / f"schedcp-analysis-test-{os.getpid()}"
    made: list[Path] = []

    def make(rel: str) -> str:
        d = base / rel
        for parent in [*reversed(d.relative_to(CPU_CGROUP_ROOT).parents), d.relative_to(
                CPU_CGROUP_ROOT)]:
            full = CPU_CGROUP_ROOT / parent
            if full != CPU_CGROUP_ROOT and not full.exists():
                full.mkdir()
                made.append(full)
        return "/" + str(d.relative_to(CPU_CGROUP_ROOT))

    try:
        yield make
    finally:
        for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    (CPU_CGROUP_ROOT / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            d.rmdir()


def as_nobody(work: Callable[[], bytes]) -> bytes:
    """What ``work`` returns when run in a forked child that dropped to ``nobody``."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(wr, work())
        finally:
            os._exit(0)
    os.close(wr)
    chunks = []
    while chunk := os.read(rd, 65536):
        chunks.append(chunk)
    os.close(rd)
    os.waitpid(pid, 0)
    return b"".join(chunks)
