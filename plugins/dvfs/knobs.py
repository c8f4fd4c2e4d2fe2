"""The dvfs plugin's knob declarations: what it may ask the core's actuator to write.

Every file the plugin changes is declared here, under the sysfs CPU root and
the cgroup v2 root of its configuration, and written by the core
(:class:`schedcpd.plugin_api.KnobActuator`), which refuses anything else.
The knob names are the journal kinds of the entries.

Task clamps are the ``uclamp`` knob: the core's ``sched_setattr.uclamp``
syscall on a thread (target ``<tid>:<start>``), ``[min, max]`` on 0..1024,
restored with ``reset`` (a clamp that was the kernel default goes back to
"not set", so a task is left as it was found).  This host's kernel has no
``CONFIG_UCLAMP_TASK``; the micro-VM guest (tests/microvm) proves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins.dvfs import cpufreq
from schedcpd.plugin_api import FILE, SYSCALL, Knob

FREQ_KHZ_MAX = 100_000_000
"""A frequency the declarations refuse above (100 GHz); the plugin checks cpuinfo limits."""

KIND_OF_FILE = {"scaling_governor": "cpufreq.scaling_governor",
                "energy_performance_preference": "cpufreq.energy_performance_preference",
                "scaling_min_freq": "cpufreq.scaling_min_freq",
                "scaling_max_freq": "cpufreq.scaling_max_freq"}
BOOST = "boost"
CG_UCLAMP = "cg_uclamp"
UCLAMP = "uclamp"


def declare(sysfs_cpu: Path, cgroup_root: Path | None) -> list[Knob]:
    """The knobs under ``sysfs_cpu`` (and ``cgroup_root``, when there is one)."""
    pol = f"{sysfs_cpu}/cpufreq/policy[0-9]*"
    out = [
        Knob(KIND_OF_FILE["scaling_governor"], FILE, paths=(f"{pol}/scaling_governor",),
             allowed=cpufreq.GOVERNORS, description="cpufreq governor of a policy"),
        Knob(KIND_OF_FILE["energy_performance_preference"], FILE,
             paths=(f"{pol}/energy_performance_preference",), regex=r"[a-z_]+|[0-9]{1,3}",
             description="energy/performance preference of a policy"),
        Knob(KIND_OF_FILE["scaling_min_freq"], FILE, paths=(f"{pol}/scaling_min_freq",),
             type="int", minimum=0, maximum=FREQ_KHZ_MAX, description="kHz"),
        Knob(KIND_OF_FILE["scaling_max_freq"], FILE, paths=(f"{pol}/scaling_max_freq",),
             type="int", minimum=0, maximum=FREQ_KHZ_MAX, description="kHz"),
        Knob(BOOST, FILE, paths=(f"{sysfs_cpu}/cpufreq/boost",
                                 f"{sysfs_cpu}/intel_pstate/no_turbo"),
             allowed=("0", "1"), description="boost switch (no_turbo: inverted)"),
        Knob(UCLAMP, SYSCALL, syscall="sched_setattr.uclamp", type="int_list", length=2,
             minimum=0, maximum=1024, restore="reset",
             description="a thread's utilisation clamps [min, max]"),
    ]
    if cgroup_root is not None:
        out.append(Knob(CG_UCLAMP, FILE, paths=(f"{cgroup_root}/**/cpu.uclamp.min",
                                                f"{cgroup_root}/**/cpu.uclamp.max"),
                        regex=r"max|[0-9]{1,3}(\.[0-9]{1,2})?",
                        description="cgroup v2 utilisation clamp, percent"))
    return out


def declare_from(config: dict[str, Any], cgroup_root: Path | None) -> list[Knob]:
    """The declarations for a ``[plugins.dvfs]`` table."""
    return declare(Path(config.get("sysfs_cpu", cpufreq.DEFAULT_ROOT)), cgroup_root)
