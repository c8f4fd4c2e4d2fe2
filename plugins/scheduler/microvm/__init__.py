"""A qemu micro-VM with a sched_ext kernel, for running schedcp's BPF schedulers.

``MicroVM().prepare()`` downloads the guest kernel and build tools (once),
builds the schedulers, the static loader and the workloads, and assembles
the base initramfs -- all cached under ``$SCHEDCP_MICROVM_CACHE``
(default /var/cache/schedcp/microvm) and keyed by kernel version and
source digests.  ``run(script)`` boots the guest with a job script and
returns a :class:`~plugins.scheduler.microvm.guest.GuestResult`.
See docs/sched_ext.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from plugins.scheduler.microvm import build, guest, initramfs, job, kernel, paths, toolchain
from plugins.scheduler.microvm.apt import FetchError
from plugins.scheduler.microvm.build import Artifacts, BuildError
from plugins.scheduler.microvm.guest import GuestResult

__all__ = ["BuildError", "FetchError", "GuestResult", "MicroVM", "available", "job"]

# What preparing the cache runs on this machine (toolchain.fetch, kernel.fetch,
# rootfs.build): apt-get for the private apt state, dpkg-deb to unpack, mke2fs
# for the guest host's root image.
_PREPARE_TOOLS = ("apt-get", "dpkg-deb", "mke2fs")

_LOGGER = logging.getLogger(__name__)


class MicroVM:
    """The guest kernel, its build products and a way to boot it."""

    def __init__(self, cache: Path | None = None, source: Path | None = None) -> None:
        self.cache = cache or paths.cache_dir()
        self.source = source or paths.scx_source_dir()
        self.tools: toolchain.Toolchain | None = None
        self.kernel: kernel.GuestKernel | None = None
        self.artifacts: Artifacts | None = None
        self.base: Path | None = None

    def prepare(self) -> MicroVM:
        """Fetch and build what is missing (FetchError without network)."""
        if self.base is not None:
            return self
        with paths.locked("build"):
            self.tools = toolchain.fetch(self.cache)
            self.kernel = kernel.fetch(self.cache, self.tools.bpftool)
            self.artifacts = build.build_all(self.cache, self.source, self.kernel, self.tools)
            self.base = initramfs.build_base(self.cache, self.kernel, self.artifacts)
        return self

    def object(self, name: str) -> str:
        """The guest path of a built scheduler object (``vtime`` -> /scx/vtime.bpf.o)."""
        self.prepare()
        assert self.artifacts is not None
        if name not in self.artifacts.objects:
            raise KeyError(f"no scheduler {name!r}; built: {sorted(self.artifacts.objects)}")
        return f"/scx/{name}.bpf.o"

    def has_binary(self, name: str) -> bool:
        """Whether the guest has ``/bin/<name>`` from this build."""
        self.prepare()
        assert self.artifacts is not None
        return name in self.artifacts.binaries

    def compile(self, text: str, name: str = "policy") -> Path:
        """Compile a scheduler source for the guest kernel (BuildError on failure)."""
        self.prepare()
        assert self.tools is not None and self.kernel is not None
        with paths.locked("build"):
            return build.compile_source(self.cache, self.source, self.kernel, self.tools,
                                        text, name)

    def run(self, script: str, files: dict[str, Path | bytes] | None = None, *,
            timeout: float = 120.0, boot_timeout: float = 60.0, append: str = "",
            cpus: int = 2) -> GuestResult:
        """Boot the guest with ``script`` as /job/run.sh; files go to their guest paths."""
        self.prepare()
        assert self.base is not None and self.kernel is not None
        archive = initramfs.job_archive(job.HEADER + script, files or {})
        with tempfile.TemporaryDirectory(prefix="schedcp-vm-") as tmp:
            initrd = initramfs.combined(self.base, archive, Path(tmp) / "initrd.cpio.gz")
            return guest.run(self.cache, self.kernel.vmlinuz, initrd, timeout=timeout,
                             boot_timeout=boot_timeout, append=append, cpus=cpus)


def available(cache: Path | None = None) -> str | None:
    """Why a sched_ext micro-VM cannot run here, or None (cheap: no download, no boot).

    Needs qemu, and a cache that is prepared (the guest kernel unpacked) or
    preparable (the cache directory writable and the tools that fill it
    present; the download itself needs the network, which is not tried here).
    """
    if shutil.which(guest.QEMU) is None:
        return f"{guest.QEMU} not found (apt-get install qemu-system-x86)"
    cache = cache or paths.cache_dir()
    if any((d / "ready").is_file() for d in (cache / "kernel").glob("*")):
        return None
    missing = [t for t in _PREPARE_TOOLS if shutil.which(t) is None]
    if missing:
        return (f"the micro-VM cache {cache} is not prepared and {', '.join(missing)} "
                f"(needed to prepare it) not found")
    parent = next((p for p in (cache, *cache.parents) if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK):
        return f"the micro-VM cache {cache} is not prepared and cannot be written here"
    return None
