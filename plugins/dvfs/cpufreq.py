"""cpufreq policies under a sysfs CPU root: governor, EPP, frequency limits, boost.

The root is ``/sys/devices/system/cpu`` on a real machine and is injectable
(``[plugins.dvfs] sysfs_cpu`` in schedcpd.toml, or :class:`CpuFreq`'s
constructor), so the tests run against a FAKE tree they build in a temporary
directory.  Layout read here (as the kernel's cpufreq core exports it)::

    <root>/cpu<N>/                                   a CPU that exists
    <root>/cpufreq/policy<K>/related_cpus            CPUs the policy covers
    <root>/cpufreq/policy<K>/scaling_governor        (+ scaling_available_governors)
    <root>/cpufreq/policy<K>/scaling_min_freq        kHz (+ scaling_max_freq)
    <root>/cpufreq/policy<K>/cpuinfo_min_freq        kHz, hardware limits (+ cpuinfo_max_freq)
    <root>/cpufreq/policy<K>/energy_performance_preference   (intel_pstate, amd-pstate)
    <root>/cpufreq/policy<K>/energy_performance_available_preferences
    <root>/cpufreq/boost                             1 = boost on (acpi-cpufreq, amd-pstate)
    <root>/intel_pstate/no_turbo                     1 = boost off (intel_pstate)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/sys/devices/system/cpu")
GOVERNORS = ("performance", "powersave", "schedutil", "ondemand", "conservative", "userspace")
"""Governors the Linux kernel has (a policy naming another is a schema error)."""
POLICY_KNOBS = ("scaling_governor", "energy_performance_preference", "scaling_min_freq",
                "scaling_max_freq")
_POLICY_DIR = re.compile(r"policy(\d+)")


class CpuFreqError(Exception):
    """A cpufreq file that should be there is not (a policy removed, a CPU offlined)."""


def parse_cpus(text: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``; :class:`ValueError` on bad text."""
    out: set[int] = set()
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{text!r}: CPU lists are like '0-3,6'")
        first, last = int(lo), int(hi or lo)
        if last < first or last > 8191:
            raise ValueError(f"{text!r}: bad CPU range {part!r}")
        out.update(range(first, last + 1))
    if not out:
        raise ValueError(f"{text!r}: empty CPU list")
    return sorted(out)


@dataclass(frozen=True)
class Boost:
    """Where boost is switched: ``path`` and whether the file's 1 means "off"."""

    path: Path
    inverted: bool

    @property
    def key(self) -> str:
        """The journal key of this switch."""
        return "boost:intel_pstate" if self.inverted else "boost:cpufreq"


class CpuFreq:
    """The cpufreq tree under one sysfs CPU root (reads only: the core's actuator writes)."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def policies(self) -> list[str]:
        """The cpufreq policy names (``policy0`` ...), sorted by number."""
        base = self.root / "cpufreq"
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if _POLICY_DIR.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=lambda n: int(n[6:]))

    def cpus(self) -> list[int]:
        """The CPUs that exist (``cpu<N>`` directories)."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name[3:]) for p in self.root.iterdir()
                      if re.fullmatch(r"cpu\d+", p.name))

    def path(self, policy: str, knob: str) -> Path:
        """The file of ``knob`` of ``policy`` (its name is checked, not its existence)."""
        if not _POLICY_DIR.fullmatch(policy) or "/" in knob or knob.startswith("."):
            raise ValueError(f"not a cpufreq policy file: {policy}/{knob}")
        return self.root / "cpufreq" / policy / knob

    def read(self, policy: str, knob: str) -> str:
        """The value of a policy file; :class:`CpuFreqError` when it is gone."""
        try:
            return self.path(policy, knob).read_text().strip()
        except FileNotFoundError as err:
            raise CpuFreqError(f"cpufreq {policy} has no {knob} (gone, or not offered by "
                               "this driver)") from err

    def has(self, policy: str, knob: str) -> bool:
        """Whether ``policy`` offers ``knob``."""
        return self.path(policy, knob).is_file()

    def related(self, policy: str) -> list[int]:
        """The CPUs ``policy`` covers."""
        return parse_cpus(self.read(policy, "related_cpus"))

    def policy_of(self) -> dict[int, str]:
        """CPU -> the policy that covers it."""
        return {cpu: pol for pol in self.policies() for cpu in self.related(pol)}

    def governors(self, policy: str) -> list[str]:
        """Governors ``policy`` offers."""
        return self.read(policy, "scaling_available_governors").split()

    def preferences(self, policy: str) -> list[str]:
        """EPP values ``policy`` offers (empty when the driver has no EPP)."""
        if not self.has(policy, "energy_performance_available_preferences"):
            return []
        return self.read(policy, "energy_performance_available_preferences").split()

    def limits(self, policy: str) -> tuple[int, int]:
        """(cpuinfo_min_freq, cpuinfo_max_freq) in kHz: what the hardware allows."""
        return int(self.read(policy, "cpuinfo_min_freq")), int(self.read(policy,
                                                                         "cpuinfo_max_freq"))

    def boost(self) -> Boost | None:
        """The boost switch of this driver, or ``None``."""
        generic = self.root / "cpufreq" / "boost"
        if generic.is_file():
            return Boost(generic, inverted=False)
        intel = self.root / "intel_pstate" / "no_turbo"
        if intel.is_file():
            return Boost(intel, inverted=True)
        return None

    def boost_file(self, key: str) -> Path:
        """The file behind a boost journal key."""
        if key == "boost:cpufreq":
            return self.root / "cpufreq" / "boost"
        if key == "boost:intel_pstate":
            return self.root / "intel_pstate" / "no_turbo"
        raise ValueError(f"unknown boost key {key!r}")

    def why_absent(self) -> str:
        """Why this root has no cpufreq policy (empty when it has some)."""
        if self.policies():
            return ""
        base = self.root / "cpufreq"
        if not base.is_dir():
            return f"{base} is absent: the kernel has no cpufreq (CONFIG_CPU_FREQ)"
        return (f"no cpufreq driver: {base}/policy* is absent (the kernel has cpufreq, but no "
                "driver bound to these CPUs; a VM has none unless the hypervisor exposes one)")
