"""A scratch block device for fio: a loop device over a file in a private directory.

Used by the dynamic verification stage, the tests and the benchmark.  The
loop device runs with direct I/O to its backing file, so its queue (the one
the policy's device settings go to) sees the I/O fio submits.  Everything
made here is removed by :meth:`ScratchDevice.close`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class SandboxError(Exception):
    """The scratch device or fio could not run."""


_LOOP_CTL_ADD = 0x4C80
_LOOP_CTL_REMOVE = 0x4C81


def _new_loop_node() -> int:
    """Add a loop device with a number no other uses (LOOP_CTL_ADD); return it."""
    used = {int(p.name[4:]) for p in Path("/sys/block").glob("loop*") if p.name[4:].isdigit()}
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        return fcntl.ioctl(fd, _LOOP_CTL_ADD, max(used, default=-1) + 1)
    finally:
        os.close(fd)


class ScratchDevice:
    """A loop device over a sparse file of ``size_mib`` MiB in a new temp dir.

    ``own_node`` (default): on a loop device node of its own, added here and
    removed by :meth:`close` (its /sys/block entry goes, as when a disk is
    unplugged), so the queue settings a test or the sandbox made never
    outlive it on a shared ``loopN``.
    """

    def __init__(self, size_mib: int = 256, parent: Path | None = None,
                 direct_io: bool = True, own_node: bool = True) -> None:
        self.node: int | None = None
        if shutil.which("losetup") is None:
            raise SandboxError("losetup is not installed (util-linux)")
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-io-", dir=parent))
        self.file = self.dir / "backing.img"
        with self.file.open("wb") as f:
            f.truncate(size_mib * 2**20)
        args = ["losetup", "--find", "--show", str(self.file)]
        if own_node:
            self.node = _new_loop_node()
            if not Path(f"/dev/loop{self.node}").exists():
                os.mknod(f"/dev/loop{self.node}", 0o600 | 0o060000, os.makedev(7, self.node))
            args = ["losetup", "--show", f"/dev/loop{self.node}", str(self.file)]
        if direct_io:
            args.insert(1, "--direct-io=on")
        try:
            out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)
        except (subprocess.SubprocessError, OSError) as err:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise SandboxError(f"losetup failed: {err}") from err
        self.path = out.stdout.strip()
        self.name = Path(self.path).name

    def close(self) -> None:
        """Detach the loop device and remove its file."""
        subprocess.run(["losetup", "-d", self.path], check=False, capture_output=True,
                       timeout=30)
        if self.node is not None:
            fd = os.open("/dev/loop-control", os.O_RDWR)
            try:
                for _ in range(50):  # the detach completes asynchronously
                    try:
                        fcntl.ioctl(fd, _LOOP_CTL_REMOVE, self.node)
                        break
                    except OSError as err:
                        busy = err
                        time.sleep(0.1)
                else:
                    raise SandboxError(f"loop{self.node} could not be removed ({busy}): "
                                       "something still holds it open")
            finally:
                os.close(fd)
                shutil.rmtree(self.dir, ignore_errors=True)
            self.node = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ScratchDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fio(jobs: list[dict[str, Any]], filename: str, seconds: float,
        timeout: float | None = None) -> dict[str, dict[str, float]]:
    """Run fio jobs (each a dict of fio options with a ``name``) together.

    Returns per job: ``read_iops``, ``write_iops``, ``read_mib_s``,
    ``write_mib_s``, ``clat_p50_us``, ``clat_p99_us`` (of its reads, else
    its writes), ``io_mib`` (total moved).
    """
    if shutil.which("fio") is None:
        raise SandboxError("fio is not installed (Debian package fio)")
    args = ["fio", "--output-format=json", f"--filename={filename}", "--direct=1",
            "--time_based=1", f"--runtime={max(1, round(seconds))}", "--group_reporting=0"]
    for job in jobs:
        args.append(f"--name={job['name']}")
        args += [f"--{k}={v}" for k, v in job.items() if k != "name"]
    try:
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             timeout=timeout or seconds * 4 + 30)
    except subprocess.CalledProcessError as err:
        raise SandboxError(f"fio failed: {err.stderr.strip()[-500:]}") from err
    except (subprocess.SubprocessError, OSError) as err:
        raise SandboxError(f"fio failed: {err}") from err
    text = out.stdout[out.stdout.index("{"):]
    result: dict[str, dict[str, float]] = {}
    for job in json.loads(text)["jobs"]:
        rd, wr = job["read"], job["write"]
        main = rd if rd["total_ios"] else wr
        pct = main.get("clat_ns", {}).get("percentile", {})
        result[job["jobname"]] = {
            "read_iops": rd["iops"], "write_iops": wr["iops"],
            "read_mib_s": rd["bw_bytes"] / 2**20, "write_mib_s": wr["bw_bytes"] / 2**20,
            "clat_p50_us": pct.get("50.000000", 0) / 1000,
            "clat_p99_us": pct.get("99.000000", 0) / 1000,
            "io_mib": (rd["io_bytes"] + wr["io_bytes"]) / 2**20,
        }
    return result


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a fio started by us and every job process it forked, and reap it.

    fio runs each job in a child process: killing only the parent leaves
    the job writing (and the loop device busy).
    """
    from plugins.io.ioprio import Selector

    for pid in reversed(Selector([], [proc.pid]).scan()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
