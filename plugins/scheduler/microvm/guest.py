"""Boot the micro-VM and collect what the guest reports on its serial console.

The guest speaks in lines: ``@@SCHEDCP:<step> {json}`` (events, from the
init script and from the loader's ``--prefix``), ``@@OUT:<step> text``
(output of a command a job ran) and ``@@DMESG text`` (the kernel log,
dumped before power-off).  Anything else on the console is kept only as a
tail for diagnosis.

qemu runs with a hard time limit: a guest that does not report ``boot``
within ``boot_timeout`` or does not finish within ``timeout`` is killed and
the result says so.  KVM is used where it works (tried first when
/dev/kvm is usable; a failure is remembered per host kernel), TCG
otherwise.  KVM counts as failed when qemu exits before the guest boots
(here: "failed to set MSR"), when qemu reports a KVM internal error (it
then pauses the guest instead of exiting, so the console is watched for
it), or when the guest does not boot under KVM within ``KVM_BOOT_TIMEOUT``
but then boots under TCG: a guest that fails both ways is the guest's
fault, and the memo is not written.

qemu never outlives its caller: it is killed on a timeout, on any
exception (KeyboardInterrupt included), and it gets SIGKILL from the
kernel if the calling process dies (``PR_SET_PDEATHSIG``).  Its peak
resident memory is measured when it is reaped (``max_rss_kb``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
APPEND = "console=ttyS0 loglevel=1 panic=-1 edd=off"
_TAIL = 80
# A guest that works under KVM reports "boot" within a few seconds; one that
# has not after this long is retried under TCG.
KVM_BOOT_TIMEOUT = 30.0
# What qemu prints when KVM cannot run the guest and it pauses the VM
# (e.g. the PVM /dev/kvm of these hosts with a Debian guest kernel).
_KVM_FAULTS = ("KVM internal error", "emulation failure")


@dataclass
class GuestResult:
    """What one boot of the guest produced."""

    accel: str = ""
    booted: bool = False
    kvm_fault: str = ""
    completed: bool = False
    timed_out: str = ""
    exit_status: int | None = None
    seconds: float = 0.0
    max_rss_kb: int = 0
    kernel: str = ""
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Seconds since qemu started at which each event arrived (parallel to events).
    arrived: dict[str, list[float]] = field(default_factory=dict)
    started: float = 0.0
    output: dict[str, list[str]] = field(default_factory=dict)
    dmesg: list[str] = field(default_factory=list)
    console_tail: list[str] = field(default_factory=list)

    def step(self, name: str) -> list[dict[str, Any]]:
        """The events one step reported (empty when it reported none)."""
        return self.events.get(name, [])

    def first(self, step: str, event: str) -> dict[str, Any] | None:
        """The first event of kind ``event`` in ``step``."""
        return next((e for e in self.step(step) if e.get("event") == event), None)

    def problem(self) -> str:
        """Why the guest run as a whole failed, or ""."""
        if self.timed_out:
            return self.timed_out
        if not self.booted:
            return "the guest did not boot (qemu exited with status " \
                f"{self.exit_status}); console: {' | '.join(self.console_tail[-5:])}"
        if not self.completed:
            seen = ", ".join(sorted(self.events)) or "none"
            return (f"the guest stopped before finishing its job (qemu status "
                    f"{self.exit_status}, reports from: {seen}); console: "
                    f"{' | '.join(self.console_tail[-5:])}")
        return ""


def _parse(result: GuestResult, raw: str) -> None:
    text = raw.rstrip("\r\n")
    at = text.find("@@")
    if at < 0:
        result.console_tail = [*result.console_tail[-_TAIL:], text]
        if result.accel == "kvm" and not result.kvm_fault and any(
                fault in text for fault in _KVM_FAULTS):
            result.kvm_fault = text.strip()
        return
    body = text[at:]
    head, _, rest = body.partition(" ")
    if head.startswith("@@SCHEDCP:"):
        step = head.split(":", 1)[1]
        try:
            event = json.loads(rest)
        except ValueError:
            result.console_tail = [*result.console_tail[-_TAIL:], text]
            return
        result.events.setdefault(step, []).append(event)
        result.arrived.setdefault(step, []).append(
            round(time.monotonic() - result.started, 2) if result.started else 0.0)
        if step == "init" and event.get("event") == "boot":
            result.booted = True
            result.kernel = str(event.get("kernel", ""))
        if step == "init" and event.get("event") == "end":
            result.completed = True
    elif head.startswith("@@OUT:"):
        result.output.setdefault(head.split(":", 1)[1], []).append(rest)
    elif head == "@@DMESG":
        result.dmesg.append(rest)
    else:
        result.console_tail = [*result.console_tail[-_TAIL:], text]


def _kvm_memo(cache: Path) -> Path:
    return cache / f"kvm-broken-{os.uname().release}"


def accelerators(cache: Path) -> list[str]:
    """Accelerators to try in order: KVM first where it may work, then TCG."""
    usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    if usable and not _kvm_memo(cache).exists() and not os.environ.get("SCHEDCP_MICROVM_TCG"):
        return ["kvm", "tcg"]
    return ["tcg"]


def _command(accel: str, vmlinuz: Path, initrd: Path | None, cpus: int, memory_mb: int,
             append: str, extra: Sequence[str] = ()) -> list[str]:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise RuntimeError(f"{QEMU} not found (apt-get install qemu-system-x86)")
    # thread=single: with multi-threaded TCG the guest sometimes died of an
    # "Oops: int3" while sched_ext flipped static keys (live code patching
    # across vCPUs); docs/sched_ext.md has the figures.
    # split-wx: TCG's code buffer mapped twice (RW and RX), never W+X, so
    # the guest also runs under schedcpd.service's MemoryDenyWriteExecute=yes.
    machine = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=single,split-wx=on", "-cpu", "max"]
    initramfs = ["-initrd", str(initrd)] if initrd is not None else []
    return [qemu, *machine, "-m", str(memory_mb), "-smp", str(cpus), "-nographic",
            "-no-reboot", "-nic", "none", "-kernel", str(vmlinuz), *initramfs,
            "-append", f"{APPEND} {append}".strip(), *extra]


# Looked up once in the parent: the child between fork and exec only calls it.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started qemu exits.

    Callers start qemu from a thread that waits for it (``_boot``), so this
    fires only when that process dies without cleaning up (e.g. SIGKILL).
    """
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _reap(proc: subprocess.Popen[bytes], block: bool) -> tuple[int | None, int]:
    """Reap qemu with wait4 (for its rusage): (exit status or None, max RSS in kB)."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None, 0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def _boot(cmd: list[str], accel: str, timeout: float, boot_timeout: float,
          on_output: Callable[[str, str], None] | None = None) -> GuestResult:
    result = GuestResult(accel=accel)
    start = result.started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    stdout = proc.stdout

    def reader() -> None:
        for raw in iter(stdout.readline, b""):
            text = raw.decode("utf-8", "replace")
            _parse(result, text)
            at = text.find("@@OUT:")
            if on_output is not None and at >= 0:
                head, _, rest = text[at:].rstrip("\r\n").partition(" ")
                on_output(head.split(":", 1)[1], rest)

    thread = threading.Thread(target=reader, name="microvm-console", daemon=True)
    thread.start()
    try:
        while proc.returncode is None:
            status, rss = _reap(proc, block=False)
            if status is not None:
                result.max_rss_kb = rss
                break
            elapsed = time.monotonic() - start
            if result.kvm_fault:
                result.timed_out = f"qemu could not run the guest under KVM: {result.kvm_fault}"
            elif not result.booted and elapsed > boot_timeout:
                result.timed_out = f"the guest did not boot within {boot_timeout:.0f} s: killed"
            elif elapsed > timeout:
                result.timed_out = f"the guest did not finish within {timeout:.0f} s: killed"
            if result.timed_out:
                proc.kill()
                break
            time.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            result.max_rss_kb = _reap(proc, block=True)[1]
        thread.join(timeout=5)
    result.exit_status = proc.returncode
    result.seconds = round(time.monotonic() - start, 2)
    return result


def run(cache: Path, vmlinuz: Path, initrd: Path | None, *, timeout: float = 120.0,
        boot_timeout: float = 60.0, cpus: int = 2, memory_mb: int = 1024,
        append: str = "", extra: Sequence[str] = (),
        on_output: Callable[[str, str], None] | None = None) -> GuestResult:
    """Boot the guest once; return its reports (never raises for a guest failure).

    ``on_output(step, text)`` is called, from the console reader thread, for
    each ``@@OUT`` line as it arrives (e.g. to show a command's output live).
    """
    result = GuestResult()
    kvm_failed: GuestResult | None = None
    for accel in accelerators(cache):
        limit = min(boot_timeout, KVM_BOOT_TIMEOUT) if accel == "kvm" else boot_timeout
        result = _boot(_command(accel, vmlinuz, initrd, cpus, memory_mb, append, extra),
                       accel, timeout, limit, on_output)
        if accel == "kvm" and not result.booted:
            kvm_failed = result
            continue
        break
    if kvm_failed is not None:
        why = kvm_failed.kvm_fault or kvm_failed.timed_out or " | ".join(
            kvm_failed.console_tail[-2:])
        # Remember only what is KVM's fault: qemu itself failing or reporting a
        # KVM error, or a guest that boots under TCG but did not under KVM.
        if kvm_failed.kvm_fault or not kvm_failed.timed_out or result.booted:
            _LOGGER.warning("KVM could not run the guest (%s); using TCG from now on", why)
            _kvm_memo(cache).write_text(why + "\n" + " ".join(kvm_failed.console_tail[-3:]))
        else:
            _LOGGER.warning("the guest booted neither under KVM (%s) nor under TCG", why)
    _LOGGER.info("guest (%s) ran %.1f s: %s", result.accel, result.seconds,
                 result.problem() or "completed")
    return result
