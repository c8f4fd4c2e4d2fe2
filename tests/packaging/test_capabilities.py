"""schedcpd.service's CapabilityBoundingSet is enough, and every capability in it is needed.

tests/packaging/capprobe.py performs each kernel operation the daemon uses
on a process owned by ``nobody``, under ``setpriv`` with the unit's bounding
set and no_new_privs (as systemd would start it), then with one capability
less: the operations that capability exists for must then fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.packaging.conftest import SYSTEMD_DIR, unit_capabilities

if os.geteuid() != 0:
    pytest.skip("dropping capabilities of root needs root", allow_module_level=True)
if not Path("/sys/kernel/btf/vmlinux").exists():
    pytest.skip("the kernel has no BTF: the BPF probes cannot load", allow_module_level=True)

CAPPROBE = Path(__file__).with_name("capprobe.py")
OPERATIONS = ("nice", "sched_fifo", "sched_setattr", "affinity", "timer_slack", "autogroup",
              "sysctl", "cgroup", "proc_io", "taskstats", "perf_stat", "bpf_probe")
# What fails without each capability (measured on Linux 6.18, cgroup v1).
NEEDED_FOR = {
    "sys_nice": {"nice", "sched_fifo", "sched_setattr", "affinity", "timer_slack"},
    "dac_override": {"autogroup", "cgroup", "proc_io"},
    "sys_ptrace": {"proc_io"},
    "bpf": {"bpf_probe"},
    "perfmon": {"perf_stat", "bpf_probe"},
    "net_admin": {"taskstats"},
}
UNIT_CAPS = unit_capabilities(SYSTEMD_DIR / "schedcpd.service")


@pytest.fixture(scope="module")
def target() -> Iterator[int]:
    """A process of user nobody that wakes every 5 ms (perf needs it to run)."""
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
         "import time\nwhile True: time.sleep(0.005)"],
        start_new_session=True,  # its own autogroup, whatever session the test runner has
    )
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def bpf_dir() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True, timeout=300)
    return ROOT / "bpf" / "build"


def probe(caps: set[str], target: int, bpf_dir: Path) -> dict[str, str]:
    """Run capprobe.py as root restricted to ``caps``; its outcome per operation."""
    bounding = "-all" + "".join(f",+{c}" for c in sorted(caps))
    out = subprocess.run(
        ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
         sys.executable, str(CAPPROBE), str(target), str(bpf_dir)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, str] = json.loads(out.stdout)
    assert set(result) == set(OPERATIONS)
    return result


def test_the_unit_grants_exactly_the_measured_set() -> None:
    assert UNIT_CAPS == set(NEEDED_FOR)


def test_unit_capabilities_are_enough(target: int, bpf_dir: Path) -> None:
    result = probe(UNIT_CAPS, target, bpf_dir)
    assert result == dict.fromkeys(OPERATIONS, "ok")


def test_no_capabilities_fail_everything_but_sysctl(target: int, bpf_dir: Path) -> None:
    """Root without capabilities: only root-owned sysctl files stay writable."""
    result = probe(set(), target, bpf_dir)
    assert {op for op, outcome in result.items() if outcome == "ok"} == {"sysctl"}


@pytest.mark.parametrize("cap", sorted(NEEDED_FOR))
def test_each_capability_is_needed(cap: str, target: int, bpf_dir: Path) -> None:
    result = probe(UNIT_CAPS - {cap}, target, bpf_dir)
    failed = {op for op, outcome in result.items() if outcome != "ok"}
    assert failed == NEEDED_FOR[cap], result
