"""The guest's initramfs: a gzip'd cpio (newc) archive, written in Python.

The base archive holds busybox (static), ``/init``, the loader, the
workloads, every built scheduler object under ``/scx`` and the kernel's
config as ``/boot/config-<ver>`` (libbpf reads it).  A run appends a small
second archive with ``/job/run.sh`` and its files: the kernel unpacks
concatenated archives in order, so the base is built once and cached.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import stat
import subprocess
from pathlib import Path

from plugins.scheduler.microvm.build import Artifacts
from plugins.scheduler.microvm.kernel import GuestKernel

MARK = "@@SCHEDCP"
BUSYBOX = Path("/bin/busybox")
HACKBENCH = Path("/usr/bin/hackbench")
_APPLETS = ("sh", "sleep", "cat", "mount", "echo")

INIT = f"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
echo "{MARK}:init {{\\"event\\":\\"boot\\",\\"kernel\\":\\"$(uname -r)\\",\\"cpus\\":$(nproc)}}"
if [ -x /job/run.sh ]; then
    /job/run.sh
    echo "{MARK}:init {{\\"event\\":\\"job_done\\",\\"status\\":$?}}"
fi
dmesg | sed 's/^/@@DMESG /'
echo "{MARK}:init {{\\"event\\":\\"end\\"}}"
sync
# The console is a 16550 UART: what was written may still sit in its queue,
# and poweroff -f drops it -- the likely cause of a rare "stopped before
# finishing its job" on a loaded host.
sleep 1
poweroff -f
"""


class Archive:
    """A cpio ``newc`` archive under construction."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, 0, 0, len(name) + 1, 0]
        self._ino += 1
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        head += b"\0" * (-len(head) % 4)
        self._parts.append(head + data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        """Add a directory and its parents (once)."""
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self._dirs:
                self._dirs.add(sub)
                self._entry(sub, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file (parents are created)."""
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def gzipped(self) -> bytes:
        """The finished archive, gzip-compressed."""
        self._entry("TRAILER!!!", 0)
        return gzip.compress(b"".join(self._parts), compresslevel=6)


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the dynamic loader) ``binary`` needs."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def build_base(cache: Path, kernel: GuestKernel, artifacts: Artifacts) -> Path:
    """Assemble (or reuse) the base initramfs for this build."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} missing (apt-get install busybox-static)")
    h = hashlib.sha256(INIT.encode() + kernel.version.encode() + BUSYBOX.read_bytes())
    for path in sorted([*artifacts.objects.values(), *artifacts.binaries.values()]):
        h.update(path.name.encode() + path.read_bytes())
    if HACKBENCH.is_file():
        h.update(HACKBENCH.read_bytes())
    out = artifacts.directory / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if out.is_file():
        return out
    arc = Archive()
    for d in ("proc", "sys", "dev", "tmp", "job", "etc", "root", "scx", "boot"):
        arc.directory(d)
    arc.file("init", INIT.encode(), 0o755)
    arc.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _APPLETS:
        arc.symlink(f"bin/{applet}", "busybox")
    for name, path in artifacts.binaries.items():
        arc.file(f"bin/{name}", path.read_bytes(), 0o755)
    for name, path in artifacts.objects.items():
        arc.file(f"scx/{name}.bpf.o", path.read_bytes())
    arc.file(f"boot/config-{kernel.version}", kernel.config.read_bytes())
    if HACKBENCH.is_file():  # Debian's rt-tests hackbench, with its libraries
        arc.file("bin/hackbench", HACKBENCH.read_bytes(), 0o755)
        for lib in shared_libraries(HACKBENCH):
            arc.file(str(lib), lib.resolve().read_bytes(), 0o755)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(arc.gzipped())
    tmp.rename(out)
    for old in artifacts.directory.glob("initramfs-*.cpio.gz"):
        if old != out:
            old.unlink()
    return out


def job_archive(script: str, files: dict[str, Path | bytes]) -> bytes:
    """The per-run archive: ``/job/run.sh`` plus ``files`` (guest path -> content)."""
    arc = Archive()
    arc.file("job/run.sh", script.encode(), 0o755)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        arc.file(name, data, 0o644)
    return arc.gzipped()


def combined(base: Path, job: bytes, dest: Path) -> Path:
    """Write base + job archive to ``dest`` (the kernel unpacks both)."""
    with open(dest, "wb") as out, open(base, "rb") as src:
        shutil.copyfileobj(src, out)
        out.write(job)
    return dest
