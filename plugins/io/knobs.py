"""The io plugin's knob declarations: what it may ask the core's actuator to write.

The knob names are the journal kinds of the entries (the same kinds the
plugin used when it wrote these values itself, so old entries keep their
meaning):

- ``sched``: ``/sys/block/<dev>/queue/scheduler``, read as its bracketed
  word (``format = "selected"``).  Switching the scheduler makes the kernel
  reset ``nr_requests``: the knob ``resets`` it, so the core journals the
  depth before the switch and writes it back right after a restore of the
  scheduler (which resets it again);
- ``queue``: ``read_ahead_kb``, ``nr_requests`` and the I/O scheduler's
  tunables (``queue/iosched/<name>``), integers (the policy schema holds
  each one's own range, :mod:`plugins.io.blockdev`);
- ``ioprio``: a thread's I/O priority word, the core's ``ioprio_set``
  syscall (target ``<tid>:<start>``);
- ``sysctl``: ``kernel.task_delayacct`` (turned on for the guards);
- ``throttle``: the ``blkio.throttle.*_device`` files of the cgroups the
  plugin creates (``schedcp.*``), one ``MAJ:MIN value`` line per device
  (``format = "keyed"``).

Not declared, because no knob can express them: creating and removing the
blkio cgroup directories, and moving processes between cgroups (the value
read, ``/proc/<pid>/cgroup``, is not the file written, ``cgroup.procs``).
:mod:`plugins.io.actuator` makes those with the core's journal rules.
"""

from __future__ import annotations

from plugins.io import blkio, blockdev
from schedcpd.plugin_api import FILE, SYSCALL, Knob

SCHED, QUEUE, IOPRIO, SYSCTL, THROTTLE = "sched", "queue", "ioprio", "sysctl", "throttle"
IOPRIO_MAX = (3 << 13) | 7
"""The highest I/O priority word (class idle, level 7)."""
DELAYACCT = "/proc/sys/kernel/task_delayacct"


def declare() -> list[Knob]:
    """The io plugin's knobs on this machine's sysfs, procfs and blkio hierarchy."""
    queue = f"{blockdev.SYSFS}/*/queue"
    return [
        Knob(SCHED, FILE, paths=(f"{queue}/scheduler",), format="selected",
             allowed=blockdev.SCHEDULERS, resets=("nr_requests",),
             description="the I/O scheduler of a device (resets nr_requests)"),
        Knob(QUEUE, FILE, paths=(f"{queue}/read_ahead_kb", f"{queue}/nr_requests",
                                 f"{queue}/iosched/*"),
             type="int", minimum=0, maximum=10_000_000_000,
             description="a queue setting or I/O scheduler tunable of a device"),
        Knob(IOPRIO, SYSCALL, syscall="ioprio_set", type="int", minimum=0,
             maximum=IOPRIO_MAX, description="a thread's I/O priority (class << 13 | level)"),
        Knob(SYSCTL, FILE, paths=(DELAYACCT,), allowed=("0", "1"),
             description="task delay accounting, for the guards"),
        Knob(THROTTLE, FILE, paths=(f"{blkio.ROOT}/schedcp.*/blkio.throttle.*_device",),
             format="keyed", regex=r"[0-9]+:[0-9]+ [0-9]+",
             description="a blkio throttle limit of one device in a cgroup of ours"),
    ]
