"""The guest kernel: resolve, download and unpack a Debian cloud kernel with sched_ext.

Debian's trixie-backports cloud kernels are built with
``CONFIG_SCHED_CLASS_EXT=y`` (bookworm's and trixie's 6.12 are not).  The
version is resolved from the ``linux-image-cloud-amd64`` metapackage at
build time (old versions vanish from backports).  From 7.x the image is
split: ``linux-image-<ver>`` depends on ``linux-binary-<ver>`` (vmlinuz) and
``linux-base-<ver>`` (config); before, one package held
``/boot/vmlinuz-<ver>`` and ``/boot/config-<ver>``.  Both layouts are
handled.  The kernel's BTF (for ``vmlinux.h``) is read from the ELF
``vmlinux`` found inside the compressed ``vmlinuz`` (what the kernel's
``scripts/extract-vmlinux`` does).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import lzma
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from plugins.scheduler.microvm import apt

_LOGGER = logging.getLogger(__name__)

SUITE = "trixie-backports"
METAPACKAGE = "linux-image-cloud-amd64"
RESOLVE_TTL = 24 * 3600.0

# Compression magic -> how to decompress what starts there.
_MAGICS: list[tuple[str, bytes]] = [
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("xz", b"\xfd7zXZ\x00"),
    ("gzip", b"\x1f\x8b\x08"),
    ("lz4", b"\x02\x21\x4c\x18"),
]


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked guest kernel in the cache."""

    version: str
    vmlinuz: Path
    config: Path
    vmlinux_h: Path
    directory: Path

    def config_value(self, key: str) -> str | None:
        """The value of ``CONFIG_<key>`` in the kernel's config, or None."""
        prefix = f"CONFIG_{key}="
        for line in self.config.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        return None


def resolve_version(cache: Path, refresh: bool = False) -> str:
    """The current cloud kernel version in trixie-backports (cached for a day)."""
    memo = cache / "kernel-version.json"
    if memo.is_file() and not refresh:
        data = json.loads(memo.read_text())
        if time.time() - data.get("resolved", 0) < RESOLVE_TTL:
            return str(data["version"])
    suite = apt.Suite(cache, SUITE)
    try:
        suite.update()
        fields = suite.show(METAPACKAGE)
    except apt.FetchError:
        if memo.is_file():  # offline: keep using what we resolved before
            _LOGGER.warning("cannot refresh %s; using the cached version", METAPACKAGE)
            return str(json.loads(memo.read_text())["version"])
        raise
    images = [n for n in apt.depends_names(fields.get("Depends", ""))
              if n.startswith("linux-image-") and n != METAPACKAGE]
    if not images:
        raise apt.FetchError(f"{METAPACKAGE} names no linux-image-<version> package")
    version = images[0][len("linux-image-"):]
    memo.write_text(json.dumps({"version": version, "resolved": time.time()}))
    return version


def _extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    data = vmlinuz.read_bytes()
    for name, magic in _MAGICS:
        start = data.find(magic)
        while start >= 0:
            elf = _decompress(name, data[start:])
            if elf[:4] == b"\x7fELF":
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise RuntimeError(f"no compressed ELF vmlinux found inside {vmlinuz}")


def _decompress(name: str, blob: bytes) -> bytes:
    try:
        if name == "gzip":
            return gzip.GzipFile(fileobj=io.BytesIO(blob)).read()
        if name == "xz":
            return lzma.LZMADecompressor().decompress(blob)
    except (OSError, EOFError, lzma.LZMAError):
        return b""
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[name]
    if shutil.which(tool[0]) is None:
        return b""
    # Trailing bytes after the stream make the tool exit non-zero: the
    # output is still complete (extract-vmlinux ignores the status too).
    proc = subprocess.run(tool, input=blob, capture_output=True, timeout=300)
    return proc.stdout


def fetch(cache: Path, bpftool: Path, version: str | None = None) -> GuestKernel:
    """Download (once) and unpack the guest kernel; generate its vmlinux.h."""
    version = version or resolve_version(cache)
    kdir = cache / "kernel" / version
    done = kdir / "ready"
    kernel = GuestKernel(version, kdir / "vmlinuz", kdir / "config", kdir / "vmlinux.h", kdir)
    if done.is_file():
        return kernel
    if kdir.exists():
        shutil.rmtree(kdir)
    kdir.mkdir(parents=True)
    suite = apt.Suite(cache, SUITE)
    if not suite.lists.is_dir():
        suite.update()
    image = f"linux-image-{version}"
    fields = suite.show(image)
    wanted = [image] + [n for n in apt.depends_names(fields.get("Depends", ""))
                        if n in (f"linux-binary-{version}", f"linux-base-{version}")]
    debs = suite.download(wanted, kdir / "debs")
    tree = kdir / "tree"
    for deb in debs:
        apt.unpack(deb, tree)
    for src, dst in (("vmlinuz", kernel.vmlinuz), ("config", kernel.config)):
        found = [tree / "boot" / f"{src}-{version}", tree / "usr/lib/modules" / version / src,
                 tree / "lib/modules" / version / src]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise RuntimeError(f"{src} of {version} not found in {', '.join(map(str, debs))}")
        shutil.copyfile(path, dst)
    if kernel.config_value("SCHED_CLASS_EXT") != "y":
        raise RuntimeError(f"kernel {version} is not built with CONFIG_SCHED_CLASS_EXT=y")
    vmlinux = kdir / "vmlinux"
    _extract_vmlinux(kernel.vmlinuz, vmlinux)
    header = subprocess.run([str(bpftool), "btf", "dump", "file", str(vmlinux), "format", "c"],
                            capture_output=True, text=True, timeout=300)
    if header.returncode != 0 or "struct sched_ext_ops {" not in header.stdout:
        raise RuntimeError(f"bpftool could not dump the BTF of {version}: {header.stderr[-500:]}")
    kernel.vmlinux_h.write_text(header.stdout)
    # Keep only what the builder needs: the ELF vmlinux is ~60 MB.
    vmlinux.unlink()
    shutil.rmtree(tree)
    shutil.rmtree(kdir / "debs")
    done.write_text(version + "\n")
    _LOGGER.info("guest kernel %s ready in %s", version, kdir)
    return kernel
