"""cgroup v1 blkio throttling, in cgroups the io plugin creates.

A group with ``throttle`` rules gets the cgroup ``schedcp.<owner>.<group>``
at the top of the blkio hierarchy; its processes are moved there (each
move journaled with the cgroup it came from) and the group's limits are
written to ``blkio.throttle.{read,write}_{bps,iops}_device`` as
``MAJ:MIN value`` lines (``0`` removes a limit).  cgroup v2 ``io.max``,
``io.weight`` and ``io.latency`` need the v2 ``io`` controller, which
:func:`v2_io_available` reports; this module does not write them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/blkio")
UNIFIED = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
FILES = {"read_bps": "blkio.throttle.read_bps_device",
         "write_bps": "blkio.throttle.write_bps_device",
         "read_iops": "blkio.throttle.read_iops_device",
         "write_iops": "blkio.throttle.write_iops_device"}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def v1_available() -> tuple[bool, str]:
    """Whether the v1 blkio hierarchy with throttling is mounted here."""
    if not (ROOT / FILES["write_bps"]).exists():
        return False, f"no cgroup v1 blkio hierarchy with throttling at {ROOT}"
    return True, ""


def v2_io_available() -> tuple[bool, str]:
    """Whether a cgroup v2 hierarchy offers the io controller."""
    for root in UNIFIED:
        controllers = root / "cgroup.controllers"
        if controllers.exists():
            if "io" in controllers.read_text().split():
                return False, (f"{root} offers the v2 io controller, but the io plugin does "
                               "not write io.max/io.weight/io.latency yet")
            return False, (f"the cgroup v2 hierarchy at {root} has no io controller (it is "
                           "bound to the v1 blkio hierarchy here)")
    return False, "no cgroup v2 hierarchy is mounted"


def group_dir(owner: str, group: str) -> Path:
    """The blkio cgroup of one group of one deployment."""
    return ROOT / _SAFE.sub("_", f"schedcp.{owner}.{group}")


def cgroup_of(pid: int) -> str:
    """The blkio cgroup path (relative to the hierarchy, ``/`` = root) of ``pid``."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return path
    raise FileNotFoundError(f"process {pid} has no blkio cgroup")


def move(pid: int, path: str) -> None:
    """Move process ``pid`` (all its threads) into the blkio cgroup ``path``."""
    (ROOT / path.lstrip("/") / "cgroup.procs").write_text(str(pid))


def remove_dir(path: Path) -> None:
    """Remove a cgroup we created.

    Processes still in it (children forked there after the apply; the
    moved ones went back first, newest entry first) go to the hierarchy's
    root, where every process is by default, so the directory can go.
    """
    if not path.is_dir():
        return
    for pid in (path / "cgroup.procs").read_text().split():
        try:
            (ROOT / "cgroup.procs").write_text(pid)
        except ProcessLookupError:
            pass
    path.rmdir()


def read_limit(path: Path, name: str, majmin: str) -> int:
    """The limit for device ``majmin`` in ``path`` (0: none)."""
    for line in (path / FILES[name]).read_text().splitlines():
        dev, _, val = line.partition(" ")
        if dev == majmin:
            return int(val)
    return 0


def write_limit(path: Path, name: str, majmin: str, value: int) -> None:
    """Set (0: remove) the limit for device ``majmin`` in ``path``."""
    (path / FILES[name]).write_text(f"{majmin} {value}")
