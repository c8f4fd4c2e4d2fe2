"""Fixtures for the BPF probe tests: built objects, a synthetic load, bpftool checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from schedcpd.probes.catalogue import ENV_BPF_DIR, OBJECT_PREFIX, SOURCE_BPF_DIR
from tests.harness import poll

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


@dataclass
class Workload:
    """Processes the test owns: CPU hogs (more than CPUs) and one sleeper."""

    hogs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sleeper: subprocess.Popen[bytes] | None = None

    @property
    def hog_pids(self) -> list[int]:
        """Pids of the CPU-bound processes."""
        return [p.pid for p in self.hogs]


@pytest.fixture(scope="module")
def workload() -> Iterator[Workload]:
    """4 single-threaded CPU hogs and a 2 ms sleeper, all pinned to (at most) 2 CPUs."""
    load = Workload()
    cpus = sorted(os.sched_getaffinity(0))[:2]
    try:
        for _ in range(4):
            load.hogs.append(subprocess.Popen(["sh", "-c", HOG]))
        load.sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER])
        for proc in [*load.hogs, load.sleeper]:
            os.sched_setaffinity(proc.pid, cpus)
        time.sleep(0.5)  # let them all be running and competing
        yield load
    finally:
        procs = [*load.hogs, *([load.sleeper] if load.sleeper else [])]
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
