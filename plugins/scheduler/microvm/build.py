"""Compile the schedulers, the static loader and the guest workloads (cached).

Everything built for one guest kernel lives in ``<cache>/build/<key>/``
where the key digests the kernel version, the toolchain and every source
file; a second run with unchanged sources rebuilds nothing.  BPF objects
are compiled against that kernel's ``vmlinux.h``; the loader and the
workloads are linked statically (the guest has no libc).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from plugins.scheduler.microvm.kernel import GuestKernel
from plugins.scheduler.microvm.toolchain import Toolchain

_LOGGER = logging.getLogger(__name__)

BPF_FLAGS = ["-g", "-O2", "-Wall", "-Wno-missing-declarations", "-target", "bpf",
             "-D__TARGET_ARCH_x86"]
KEEP_BUILDS = 3
# A schbench-like message/worker latency program written by the benchmark
# work; built for the guest when present (optional).
MSGLAT = Path(__file__).resolve().parents[3] / "schedcp_bench" / "native" / "msglat.c"


class BuildError(RuntimeError):
    """A compiler or linker failed; ``log`` holds its output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass
class Artifacts:
    """What a build produced, by name."""

    directory: Path
    objects: dict[str, Path] = field(default_factory=dict)
    binaries: dict[str, Path] = field(default_factory=dict)


def _digest(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BuildError(f"building {what} failed", (proc.stderr or proc.stdout)[-20000:])


def _prune(builds: Path, keep: int = KEEP_BUILDS) -> None:
    """Remove all but the ``keep`` most recent build directories."""
    dirs = sorted((d for d in builds.iterdir() if d.is_dir()),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for old in dirs[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def bpf_command(tools: Toolchain, kernel: GuestKernel, source: Path, out: Path,
                include: Path) -> list[str]:
    """The clang command that builds one scheduler object for ``kernel``."""
    return [tools.clang, *BPF_FLAGS, f"-I{kernel.directory}", f"-I{tools.include}",
            f"-I{include}", "-c", str(source), "-o", str(out)]


def sources(src: Path) -> dict[str, Path]:
    """Scheduler name -> source: ``bpf/scx/*.bpf.c`` and the test ones in ``tests/``."""
    found = {p.name[: -len(".bpf.c")]: p for p in sorted(src.glob("*.bpf.c"))}
    found.update({p.name[: -len(".bpf.c")]: p for p in sorted((src / "tests").glob("*.bpf.c"))})
    return found


# Every header the schedulers and the loader include (part of the build's digest).
HEADERS = ("scx_common.h", "scx_jsonl.h", "scx_ops_flags.h", "scx_globals.h")


def build_all(cache: Path, src: Path, kernel: GuestKernel, tools: Toolchain) -> Artifacts:
    """Build (or reuse) every object and binary for ``kernel``."""
    scheds = sources(src)
    inputs = [*scheds.values(), *(src / h for h in HEADERS),
              src / "scx_loader.c", src / "scx_workload.c"]
    if MSGLAT.is_file():
        inputs.append(MSGLAT)
    key = _digest(inputs, f"{kernel.version}|{tools.identity()}|{' '.join(BPF_FLAGS)}")
    out = cache / "build" / key
    manifest = out / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        return Artifacts(out, {k: out / v for k, v in data["objects"].items()},
                         {k: out / v for k, v in data["binaries"].items()})
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        objects, binaries = {}, {}
        for name, source in scheds.items():
            _LOGGER.info("compiling %s for %s", name, kernel.version)
            dst = tmp / f"{name}.bpf.o"
            _run(bpf_command(tools, kernel, source, dst, src), f"{name}.bpf.o")
            objects[name] = dst.name
        lib = str(tools.libbpf_a)
        static = [tools.cc, "-static", "-O2", "-Wall", f"-I{tools.include}"]
        _run([*static, str(src / "scx_loader.c"), lib, "-lelf", "-lz", "-lzstd",
              "-o", str(tmp / "scx_loader")], "scx_loader")
        _run([*static, "-pthread", str(src / "scx_workload.c"), "-o",
              str(tmp / "scx_workload")], "scx_workload")
        binaries = {"scx_loader": "scx_loader", "scx_workload": "scx_workload"}
        if MSGLAT.is_file():
            try:
                _run([*static, "-pthread", str(MSGLAT), "-lm", "-o", str(tmp / "msglat")],
                     "msglat")
                binaries["msglat"] = "msglat"
            except BuildError as err:  # someone else's program: report, carry on
                _LOGGER.warning("msglat.c did not build statically: %s", err.log[-400:])
        for name in binaries:
            subprocess.run(["strip", str(tmp / name)], check=False, capture_output=True)
        (tmp / "manifest.json").write_text(json.dumps(
            {"kernel": kernel.version, "objects": objects, "binaries": binaries}, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _prune(out.parent)
    return Artifacts(out, {k: out / v for k, v in objects.items()},
                     {k: out / v for k, v in binaries.items()})


def compile_source(cache: Path, src: Path, kernel: GuestKernel, tools: Toolchain,
                   text: str, name: str = "policy") -> Path:
    """Compile one scheduler given as text (a T2 policy's source); cached by digest.

    Only ``scx_common.h`` (and what it includes) is reachable: the source is
    compiled from an empty directory.  Raises :class:`BuildError` with the
    compiler's output on failure.
    """
    header = (src / "scx_common.h").read_bytes()
    key = hashlib.sha256(text.encode() + b"\0" + header + kernel.version.encode()
                         + tools.identity().encode()).hexdigest()[:20]
    out = cache / "objects" / f"{name}-{key}.bpf.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scx-src-") as tmp:
        source = Path(tmp) / f"{name}.bpf.c"
        source.write_text(text)
        (Path(tmp) / "scx_common.h").write_bytes(header)
        partial = Path(tmp) / "out.bpf.o"
        proc = subprocess.run(bpf_command(tools, kernel, source, partial, Path(tmp)),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BuildError(f"compiling {name} failed",
                             proc.stderr.replace(tmp + "/", "")[-20000:])
        shutil.move(str(partial), out)
    return out
