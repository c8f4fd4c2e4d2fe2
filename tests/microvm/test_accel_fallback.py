"""KVM → TCG fallback of the micro-VM runner, with a fake qemu.

FAKE: ``qemu-system-x86_64`` here is a shell script put first on PATH.  It
plays the ways a broken /dev/kvm shows itself (seen on these hosts' PVM
hypervisor: qemu pauses the guest after "KVM internal error", or the guest
never boots) and a TCG guest that boots, so each path of ``guest.run`` is
exercised in a second instead of a several-minute real boot.  The real
guest, on whatever accelerator this host gives it, is tests/microvm/test_guest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugins.scheduler.microvm import guest

BOOT = '@@SCHEDCP:init {"event": "boot", "kernel": "fake"}'
END = '@@SCHEDCP:init {"event": "end"}'
BEHAVIOUR = {
    "internal-error": 'echo "KVM internal error. Suberror: 1"; echo "emulation failure"; '
                      'echo "RAX=0000000000000000"; exec sleep 600',
    "hang": "exec sleep 600",
    "exit": 'echo "qemu-system-x86_64: error: failed to set MSR 0x48b" >&2; exit 1',
    "boots": f"echo '{BOOT}'; echo '{END}'; exit 0",
}


def fake_qemu(tmp_path: Path, kvm: str, tcg: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / guest.QEMU
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
case "$*" in
  *"-accel kvm"*) {BEHAVIOUR[kvm]} ;;
  *) {BEHAVIOUR[tcg]} ;;
esac
""")
    script.chmod(0o755)
    return bindir


@pytest.fixture
def host_with_kvm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run ``guest.run`` as on a host whose /dev/kvm looks usable."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.delenv("SCHEDCP_MICROVM_TCG", raising=False)
    monkeypatch.setattr(guest.os.path, "exists", lambda p: p == "/dev/kvm" or os.path.lexists(p))
    monkeypatch.setattr(guest.os, "access", lambda p, mode: True)

    def run(kvm: str, tcg: str, boot_timeout: float = 60.0) -> guest.GuestResult:
        monkeypatch.setenv("PATH", f"{fake_qemu(tmp_path, kvm, tcg)}:{os.environ['PATH']}")
        return guest.run(cache, Path("/nonexistent/vmlinuz"), Path("/nonexistent/initrd"),
                         timeout=30, boot_timeout=boot_timeout)

    return cache, run


def accels_tried(tmp_path: Path) -> list[str]:
    return ["kvm" if "-accel kvm" in line else "tcg"
            for line in (tmp_path / "calls").read_text().splitlines()]


def test_kvm_internal_error_is_caught_at_once_and_remembered(host_with_kvm, tmp_path) -> None:
    cache, run = host_with_kvm
    result = run("internal-error", "boots")
    assert result.accel == "tcg" and result.booted and result.completed, result
    # The paused guest was killed when the error showed, not at the boot timeout.
    assert result.seconds < 10
    memo = cache / f"kvm-broken-{os.uname().release}"
    assert "KVM internal error" in memo.read_text()
    assert accels_tried(tmp_path) == ["kvm", "tcg"]
    assert guest.accelerators(cache) == ["tcg"]


def test_qemu_exiting_under_kvm_falls_back(host_with_kvm, tmp_path) -> None:
    cache, run = host_with_kvm
    result = run("exit", "boots")
    assert result.accel == "tcg" and result.completed, result
    assert "failed to set MSR" in (cache / f"kvm-broken-{os.uname().release}").read_text()


def test_kvm_boot_timeout_then_tcg_boot_remembers_kvm(host_with_kvm, tmp_path,
                                                       monkeypatch) -> None:
    cache, run = host_with_kvm
    monkeypatch.setattr(guest, "KVM_BOOT_TIMEOUT", 1.0)
    result = run("hang", "boots")
    assert result.accel == "tcg" and result.completed, result
    assert (cache / f"kvm-broken-{os.uname().release}").exists()


def test_guest_that_boots_nowhere_is_not_blamed_on_kvm(host_with_kvm, tmp_path) -> None:
    cache, run = host_with_kvm
    result = run("hang", "hang", boot_timeout=1.0)
    assert not result.booted and "did not boot within 1 s" in result.timed_out
    assert accels_tried(tmp_path) == ["kvm", "tcg"]
    assert not (cache / f"kvm-broken-{os.uname().release}").exists()


def test_working_kvm_is_used_and_not_remembered(host_with_kvm, tmp_path) -> None:
    cache, run = host_with_kvm
    result = run("boots", "hang")
    assert result.accel == "kvm" and result.completed
    assert accels_tried(tmp_path) == ["kvm"]
    assert not (cache / f"kvm-broken-{os.uname().release}").exists()
