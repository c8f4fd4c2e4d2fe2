"""A sched_ext host on this machine: the guest kernel running this machine's schedcp.

``GuestHost().prepare()`` fills the micro-VM cache (kernel, schedulers,
loader) and builds the root filesystem image (:mod:`rootfs`); ``run()``
boots it under qemu (KVM where it works, TCG otherwise: :mod:`guest`) with
the image as a read-only emulated NVMe disk.  The guest's /init mounts
tmpfs on /run, /tmp and /var/lib/schedcp, starts a system-like
``dbus-daemon`` on /run/dbus/system_bus_socket and ``schedcpd --bus system``
with the shipped configuration, reports when schedcpd owns
``org.schedcp.Control1``, runs the job, stops schedcpd and powers off.

A job is a shell script plus files, handed to the guest as a tar archive on
a second NVMe namespace (nsid 2) and unpacked into /run/job; its
reports come back over the console protocol of :mod:`guest`
(``@@SCHEDCP:<step> {json}`` and ``@@OUT:<step> text``).

    python -m plugins.scheduler.microvm host [--cpus N] [--memory MB] [-- CMD ...]
"""

from __future__ import annotations

import io
import logging
import shlex
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugins.scheduler.microvm import MicroVM, guest, job, paths, rootfs
from plugins.scheduler.microvm.guest import GuestResult

_LOGGER = logging.getLogger(__name__)

APPEND = f"ro rootfstype=ext4 rootwait init={rootfs.INIT_PATH}"
COMMAND_STEP = "cmd"
DEFAULT_MEMORY_MB = 1024


JOB_DIR = "/run/job"


def trusted_config(extra: str = "") -> str:
    """schedcpd.toml for a guest host that deploys what this host's verifier signed.

    The guest trusts the public keys the job brings (``trusted_keys_dir``),
    loads the micro-VM build's loader and objects, finds objects the
    verifier built from source under ``verified/<sha256>.bpf.o`` in the job,
    and uses short deployer windows (TCG is slow).  ``extra`` is appended
    (more tables, e.g. ``[breaker]``).
    """
    return f"""[metrics]
enabled = false
[verifier]
trusted_keys_dir = "{JOB_DIR}"
[deployer]
baseline_seconds = 2.0
canary_seconds = 4.0
full_seconds = 3.0
[plugins.scheduler]
scx_loader = "/{rootfs.SCX_LINK}/scx_loader"
scx_object_dir = "/{rootfs.SCX_LINK}"
scx_verified_objects = "{JOB_DIR}/verified"
""" + extra


class GuestHostError(RuntimeError):
    """The guest host did not do its part; ``kind`` names what went wrong.

    Kinds: ``not-booted`` (no boot report: qemu or the kernel failed),
    ``bus-failed`` (dbus-daemon did not start), ``schedcpd-not-ready``
    (schedcpd did not own its name), ``incomplete`` (killed at the time
    limit, or stopped before the end of its job).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def problem(result: GuestResult) -> GuestHostError | None:
    """What went wrong in a guest host run, as a named error (None when all went well)."""
    tail = " | ".join(result.console_tail[-5:])
    if not result.booted:
        return GuestHostError("not-booted", result.problem() or f"console: {tail}")
    if result.first("init", "bus_failed"):
        log = " | ".join(result.output.get("dbus-log", [])[-5:])
        return GuestHostError("bus-failed", f"dbus-daemon did not start: {log}")
    failed = result.first("init", "schedcpd_failed")
    if failed is not None or result.first("init", "schedcpd_ready") is None:
        log = " | ".join(result.output.get("schedcpd-log", [])[-8:])
        why = "exited" if failed and not failed.get("alive") else "did not own its name in time"
        if failed is None:
            why = "never reported"
        return GuestHostError("schedcpd-not-ready", f"schedcpd {why}: {log or tail}")
    if result.problem():
        return GuestHostError("incomplete", result.problem())
    return None


def ready_seconds(result: GuestResult) -> float | None:
    """Guest uptime (s) when schedcpd owned its bus name, or None."""
    event = result.first("init", "schedcpd_ready")
    return float(event["uptime_s"]) if event else None


def command_script(argv: list[str], step: str = COMMAND_STEP) -> str:
    """A job that runs ``argv`` and streams its output as ``@@OUT:<step>`` lines."""
    line = " ".join(shlex.quote(a) for a in argv)
    return (job.event(step, "start")
            + f"{{ {line}; echo $? > /run/{step}.status; }} 2>&1 | sed 's/^/@@OUT:{step} /'\n"
            + f"rc=$(cat /run/{step}.status)\n"
            + job.event(step, "exit", status="$rc").replace('\\"$rc\\"', "$rc"))


def job_archive(script: str, files: dict[str, Path | bytes]) -> bytes:
    """The tar the guest unpacks into /run/job: ``run.sh`` and ``files`` (names relative).

    Files are 0644, but run.sh and a file given as a :class:`Path` that is
    executable (a program the job runs): 0755.
    """
    buf = io.BytesIO()
    executable = {"run.sh"} | {name for name, c in files.items()
                               if isinstance(c, Path) and c.stat().st_mode & 0o111}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = {"run.sh": ("#!/bin/sh\n" + script).encode(),
                   **{name: (c.read_bytes() if isinstance(c, Path) else c)
                      for name, c in files.items()}}
        dirs: set[str] = set()
        for name, data in members.items():
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"job file {name!r} must be a relative path inside /run/job")
            for parent in reversed(Path(name).parents[:-1]):  # directories first
                if str(parent) not in dirs:
                    dirs.add(str(parent))
                    folder = tarfile.TarInfo(str(parent))
                    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(folder)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return data + b"\0" * (-len(data) % 4096)


def qemu_disks(image: Path, job_tar: Path | None) -> list[str]:
    """qemu arguments: one NVMe controller, the image as namespace 1, the job as 2."""
    args = ["-device", "nvme,id=nvme0,serial=schedcp",
            "-drive", f"file={image},if=none,id=root,format=raw,readonly=on",
            "-device", "nvme-ns,drive=root,bus=nvme0,nsid=1"]
    if job_tar is not None:
        args += ["-drive", f"file={job_tar},if=none,id=job,format=raw,readonly=on",
                 "-device", "nvme-ns,drive=job,bus=nvme0,nsid=2"]
    return args


class GuestHost:
    """This machine's schedcp, booted on the sched_ext guest kernel."""

    def __init__(self, vm: MicroVM | None = None, *, cpus: int = 2,
                 memory_mb: int = DEFAULT_MEMORY_MB) -> None:
        if cpus < 1 or memory_mb < 256:
            raise ValueError(f"need at least 1 CPU and 256 MB (got {cpus}, {memory_mb})")
        self.vm = vm or MicroVM()
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.image: rootfs.RootImage | None = None

    def prepare(self) -> GuestHost:
        """Fill the micro-VM cache and build (or reuse) the root filesystem image."""
        if self.image is None:
            self.vm.prepare()
            assert self.vm.kernel is not None and self.vm.artifacts is not None
            with paths.locked("rootfs"):
                self.image = rootfs.build(self.vm.cache, self.vm.kernel, self.vm.artifacts)
        return self

    def scx_dir(self) -> str:
        """Where the built schedulers and the loader are in the guest."""
        return "/" + rootfs.SCX_LINK

    def run(self, script: str = "", files: dict[str, Path | bytes] | None = None, *,
            timeout: float = 600.0, boot_timeout: float = 120.0,
            on_output: Callable[[str, str], None] | None = None) -> GuestResult:
        """Boot, run ``script`` (sh, in /tmp) once schedcpd is up, power off.

        Never raises for a guest failure: see :func:`problem`.  ``on_output``
        sees each ``@@OUT:<step>`` line as it arrives (:func:`guest.run`).
        """
        self.prepare()
        assert self.image is not None and self.vm.kernel is not None
        with tempfile.TemporaryDirectory(prefix="schedcp-host-") as tmp:
            job_tar: Path | None = None
            append = f"root={self.image.root} {APPEND}"
            if script or files:
                job_tar = Path(tmp) / "job.tar"
                job_tar.write_bytes(job_archive(script, files or {}))
                append += " schedcp.job=1"
            return guest.run(self.vm.cache, self.vm.kernel.vmlinuz, None, timeout=timeout,
                             boot_timeout=boot_timeout, cpus=self.cpus,
                             memory_mb=self.memory_mb, append=append,
                             extra=qemu_disks(self.image.path, job_tar),
                             on_output=on_output)


def summary(result: GuestResult) -> dict[str, Any]:
    """The figures of one run, for people and for docs."""
    exit_event = next((e for e in result.step(COMMAND_STEP) if e.get("event") == "exit"), None)
    ready_at = next((t for e, t in zip(result.step("init"), result.arrived.get("init", []),
                                       strict=True)
                     if e.get("event") == "schedcpd_ready"), None)
    error = problem(result)
    return {"accel": result.accel, "kernel": result.kernel,
            "boot_to_schedcpd_s": ready_seconds(result),
            "qemu_start_to_schedcpd_s": ready_at, "run_s": result.seconds,
            "qemu_max_rss_mb": round(result.max_rss_kb / 1024, 1),
            "command_status": exit_event.get("status") if exit_event else None,
            "error": error.kind if error else None, "problem": str(error) if error else ""}
