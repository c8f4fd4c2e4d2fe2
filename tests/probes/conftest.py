"""Fixtures for the BPF probe tests: built objects, a synthetic load, bpftool checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedcpd.probes.catalogue import ENV_BPF_DIR, OBJECT_PREFIX, SOURCE_BPF_DIR
from tests.harness import Procs, poll, wait_until

ROOT = Path(__file__).resolve().parents[2]

def _missing() -> str | None:
    if os.geteuid() != 0:
        return "loading BPF probes needs root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    return None


@pytest.fixture(scope="session")
def bpf_dir() -> Path:
    """The probe objects, built from the current sources unless $SCHEDCP_BPF_DIR names them.

    Every test that loads BPF depends on this fixture, so it skips them all
    where the kernel or the privileges are missing.
    """
    reason = _missing()
    if reason:
        pytest.skip(reason)
    env = os.environ.get(ENV_BPF_DIR)
    if env:
        return Path(env)
    # make is a no-op when the objects are up to date.
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    return SOURCE_BPF_DIR


def loaded_schedcp_objects() -> list[str]:
    """Our programs and maps the kernel still holds, by name."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    names = []
    for kind in ("prog", "map"):
        out = subprocess.run(
            [bpftool, "-j", kind, "show"], check=True, capture_output=True, text=True
        ).stdout
        names += [
            f"{kind}:{entry.get('name', '')}"
            for entry in json.loads(out or "[]")
            if entry.get("name", "").startswith(OBJECT_PREFIX)
        ]
    return names


def wait_until_unloaded(timeout: float = 10.0) -> list[str]:
    """Wait for the kernel to free our objects (it does so after an RCU grace period)."""
    return poll(loaded_schedcp_objects, lambda left: not left, timeout, 0.1)


def wait_until_loaded(timeout: float = 10.0, expected: set[str] | None = None) -> list[str]:
    """Wait until our programs are loaded: any of them, or all of ``expected``.

    An object's programs are loaded one after another, so a listing taken
    while it loads may hold only some of them.
    """
    progs = poll(lambda: [n for n in loaded_schedcp_objects() if n.startswith("prog:")],
                 lambda p: bool(p) and (expected is None or expected <= set(p)), timeout)
    return progs


HOG = "while :; do :; done"
# A periodic sleeper: ~2 ms sleeps give hundreds of voluntary switches a second.
SLEEPER = "import time\nwhile True:\n    time.sleep(0.002)\n"


class Workload(Procs):
    """Processes the test owns: 4 CPU hogs and one sleeper, pinned to (at most) 2 CPUs.

    In the test's own session (one autogroup: see :class:`~tests.harness.Procs`).
    """

    def __init__(self) -> None:
        super().__init__("schedcp-probes-", new_session=False)
        cpus = sorted(os.sched_getaffinity(0))[:2]
        self.hogs = [self.start(["sh", "-c", HOG]) for _ in range(4)]
        self.sleeper = self.start([sys.executable, "-c", SLEEPER])
        for proc in self.procs:
            os.sched_setaffinity(proc.pid, cpus)

    @property
    def hog_pids(self) -> list[int]:
        """Pids of the CPU-bound processes."""
        return [p.pid for p in self.hogs]

    @property
    def pids(self) -> list[int]:
        """The hogs' pids and the sleeper's."""
        return [*self.hog_pids, self.sleeper.pid]


def _sleeping_often(pid: int) -> bool:
    """Whether ``pid`` has made more voluntary switches than a Python start-up does."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0]) > 50


@pytest.fixture(scope="module")
def workload() -> Iterator[Workload]:
    """The module's :class:`Workload`, once every process of it runs (killed at the end)."""
    with Workload() as load:
        # Running and competing: each hog has had CPU time, the sleeper is in its loop.
        wait_until(lambda: all(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) > 0
                               for pid in load.hog_pids), 10, "the hogs running")
        wait_until(lambda: _sleeping_often(load.sleeper.pid), 10, "the sleeper's loop")
        yield load
