"""A Debian 12 guest with systemd as PID 1: the way users run schedcp.

``SystemdGuest().prepare()`` fetches the sched_ext guest kernel (the same
trixie-backports cloud kernel as the other micro-VMs: :mod:`kernel`) and
builds or reuses the Debian image (:mod:`debian_image`); ``run(script,
files)`` boots it under qemu with the image as NVMe namespace 1 in
``snapshot=on`` mode (every write is discarded at exit) and the job
(``run.sh`` + files, a tar: :func:`host.job_archive`) as namespace 2.
systemd brings the guest up to multi-user.target (cgroup v2 unified, the
system bus, polkitd on demand); then ``schedcp-job.service`` reports
``init boot`` (with the monotonic time multi-user.target became active),
unpacks the job into /run/job, runs ``run.sh`` as root in /tmp, reports
``init end`` and powers off.  Job scripts may source
``/usr/local/lib/schedcp-guest/lib.sh`` for ``report`` and ``run`` (the
console protocol of :mod:`guest`).

    python -m plugins.scheduler.microvm systemd [-- CMD ...]
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.scheduler.microvm import debian_image, guest, host, kernel, paths, rootfs, toolchain
from plugins.scheduler.microvm.guest import GuestResult

_LOGGER = logging.getLogger(__name__)

# quiet + show_status=false: systemd prints nothing on ttyS0 but what units write.
APPEND = ("rw rootfstype=ext4 rootwait fsck.mode=skip quiet systemd.show_status=false "
          "udev.log_level=err schedcp.job=1")
LIB = f"/{debian_image.GUEST_DIR}/lib.sh"
DEFAULT_MEMORY_MB = 1536


class SystemdGuestError(RuntimeError):
    """The guest did not do its part; ``kind``: ``not-booted`` or ``incomplete``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def problem(result: GuestResult) -> SystemdGuestError | None:
    """What went wrong in a run, as a named error (None when the job ran to its end)."""
    if not result.booted:
        return SystemdGuestError("not-booted", result.problem())
    if result.problem():
        return SystemdGuestError("incomplete", result.problem())
    return None


def qemu_disks(image: Path, job_tar: Path | None) -> list[str]:
    """The image as namespace 1 (writes go to a temporary overlay), the job as 2."""
    args = ["-device", "nvme,id=nvme0,serial=schedcp",
            "-drive", f"file={image},if=none,id=root,format=raw,snapshot=on",
            "-device", "nvme-ns,drive=root,bus=nvme0,nsid=1"]
    if job_tar is not None:
        args += ["-drive", f"file={job_tar},if=none,id=job,format=raw,readonly=on",
                 "-device", "nvme-ns,drive=job,bus=nvme0,nsid=2"]
    return args


class SystemdGuest:
    """The sched_ext guest kernel booting a Debian userspace under systemd."""

    def __init__(self, cache: Path | None = None, *, cpus: int = 2,
                 memory_mb: int = DEFAULT_MEMORY_MB) -> None:
        if cpus < 1 or memory_mb < 512:
            raise ValueError(f"need at least 1 CPU and 512 MB (got {cpus}, {memory_mb})")
        self.cache = cache or paths.cache_dir()
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.kernel: kernel.GuestKernel | None = None
        self.image: rootfs.RootImage | None = None

    def prepare(self) -> SystemdGuest:
        """Fetch the kernel and build the image where missing (FetchError without network)."""
        if self.image is None:
            with paths.locked("build"):
                tools = toolchain.fetch(self.cache)
                self.kernel = kernel.fetch(self.cache, tools.bpftool)
            with paths.locked("debian"):
                self.image = debian_image.build(self.cache)
        return self

    def run(self, script: str = "", files: dict[str, Path | bytes] | None = None, *,
            timeout: float = 900.0, boot_timeout: float = 300.0,
            on_output: Callable[[str, str], None] | None = None) -> GuestResult:
        """Boot, run ``script`` (sh, as root) once multi-user.target is up, power off.

        ``boot_timeout`` bounds the time to the job unit's ``boot`` report
        (multi-user.target active).  Never raises for a guest failure: see
        :func:`problem`.
        """
        self.prepare()
        assert self.image is not None and self.kernel is not None
        with tempfile.TemporaryDirectory(prefix="schedcp-systemd-") as tmp:
            job_tar = Path(tmp) / "job.tar"
            job_tar.write_bytes(host.job_archive(script, files or {}))
            return guest.run(self.cache, self.kernel.vmlinuz, None, timeout=timeout,
                             boot_timeout=boot_timeout, cpus=self.cpus,
                             memory_mb=self.memory_mb,
                             append=f"root={self.image.root} {APPEND}",
                             extra=qemu_disks(self.image.path, job_tar), on_output=on_output)


def summary(result: GuestResult) -> dict[str, Any]:
    """Boot figures of one run: seconds from kernel start (guest monotonic clock)."""
    boot = result.first("init", "boot") or {}
    end = result.first("init", "end") or {}
    error = problem(result)

    def seconds(key: str) -> float | None:
        value = boot.get(key)
        return round(int(value) / 1e6, 2) if value else None

    return {"accel": result.accel, "kernel": result.kernel,
            "userspace_start_s": seconds("userspace_us"),
            "multi_user_s": seconds("multi_user_us"),
            "job_unit_s": boot.get("uptime_s"), "end_s": end.get("uptime_s"),
            "run_s": result.seconds, "qemu_max_rss_mb": round(result.max_rss_kb / 1024, 1),
            "error": error.kind if error else None, "problem": str(error) if error else ""}
