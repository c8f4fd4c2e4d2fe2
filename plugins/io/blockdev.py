"""Block devices and their queue knobs under /sys/block/<dev>/queue.

The knobs an io policy may set, each with its type and range
(:data:`QUEUE_KNOBS`, :data:`TUNABLES`), and how to read and write them.  A
device is named by its kernel name (``loop3``); its identity is its
``MAJ:MIN`` (``/sys/block/<dev>/dev``), so a name that now stands for
another device is never written by a restore.  ``SYSFS`` is a module
variable so a test could point it elsewhere; everything here is real sysfs.
"""

from __future__ import annotations

import re
from pathlib import Path

SYSFS = Path("/sys/block")

SCHEDULERS = ("none", "mq-deadline", "kyber", "bfq")

QUEUE_KNOBS: dict[str, tuple[int, int]] = {
    # knob -> inclusive range; the kernel may refuse more (nr_requests above
    # the hardware depth of some devices), which apply reports as a named error.
    "read_ahead_kb": (0, 65536),
    "nr_requests": (4, 4096),
}
"""Queue settings (integers) and their allowed range."""

TUNABLES: dict[str, dict[str, tuple[int, int]]] = {
    "kyber": {"read_lat_nsec": (10_000, 10_000_000_000),
              "write_lat_nsec": (10_000, 10_000_000_000)},
    "mq-deadline": {"read_expire": (1, 60_000), "write_expire": (1, 60_000),
                    "fifo_batch": (1, 4096), "writes_starved": (0, 64),
                    "front_merges": (0, 1), "async_depth": (1, 4096),
                    "prio_aging_expire": (0, 600_000)},
    "bfq": {"low_latency": (0, 1), "slice_idle": (0, 1000), "back_seek_penalty": (1, 1000),
            "timeout_sync": (1, 10_000), "strict_guarantees": (0, 1)},
}
"""I/O-scheduler tunables (``queue/iosched/<name>``) per scheduler, and their range."""

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class DeviceGone(Exception):
    """The device (or its queue attribute) disappeared, or now is another device."""


def valid_name(name: str) -> bool:
    """A plausible kernel block-device name (no path separators)."""
    return bool(_NAME.match(name))


def devices() -> list[str]:
    """Kernel names of the whole block devices here."""
    return sorted(p.name for p in SYSFS.iterdir()) if SYSFS.is_dir() else []


def identity(name: str) -> str | None:
    """``MAJ:MIN`` of device ``name``, or ``None`` when there is no such device."""
    try:
        return (SYSFS / name / "dev").read_text().strip()
    except OSError:
        return None


def device_of_path(path: Path) -> str | None:
    """The whole block device holding ``path``'s file system (``None``: not a block device)."""
    import os

    dev = os.stat(path).st_dev
    majmin = f"{os.major(dev)}:{os.minor(dev)}"
    for name in devices():
        if identity(name) == majmin:
            return name
        for part in (SYSFS / name).glob(f"{name}*/dev"):
            if part.read_text().strip() == majmin:
                return name
    return None


def schedulers(name: str) -> tuple[str, list[str]]:
    """(active scheduler, offered schedulers) of device ``name``."""
    text = read(name, "scheduler")
    offered = [s.strip("[]") for s in text.split()]
    active = next((s.strip("[]") for s in text.split() if s.startswith("[")), "none")
    return active, offered


def knob_path(name: str, knob: str) -> Path:
    """``/sys/block/<name>/queue/<knob>`` (a tunable is ``iosched/<tunable>``)."""
    if not valid_name(name) or ".." in knob:
        raise ValueError(f"bad device {name!r} or knob {knob!r}")
    return SYSFS / name / "queue" / knob


def read(name: str, knob: str) -> str:
    """The value of a queue knob as the kernel shows it; :class:`DeviceGone` if absent."""
    try:
        return knob_path(name, knob).read_text().strip()
    except (FileNotFoundError, NotADirectoryError) as err:
        raise DeviceGone(f"{name}: no queue/{knob} ({err.strerror})") from err


def current(name: str, knob: str) -> str:
    """The value to save and compare: the active scheduler, or the knob's text."""
    if knob == "scheduler":
        return schedulers(name)[0]
    return read(name, knob)


def is_loop(name: str) -> bool:
    """Whether ``name`` is a loop device (what the tests and the sandbox use)."""
    return name.startswith("loop")
