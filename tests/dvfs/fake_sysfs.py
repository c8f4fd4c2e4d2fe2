"""A FAKE sysfs CPU tree for the dvfs tests (this machine has no cpufreq driver).

It has the files the kernel's cpufreq core and an intel_pstate-like driver
export, with plain-file semantics: nothing is enforced by a kernel, so the
plugin's own checks are what the tests exercise.  Four CPUs, two policies
(``policy0`` covers CPUs 0-1, ``policy2`` covers 2-3), boost on.
"""

from __future__ import annotations

from pathlib import Path

GOVERNORS = "performance powersave schedutil"
PREFERENCES = "default performance balance_performance balance_power power"
CPUINFO_MIN, CPUINFO_MAX = 800_000, 3_600_000


def build(root: Path, with_epp: bool = True, with_boost: bool = True) -> Path:
    """Make the FAKE tree under ``root`` and return ``root``."""
    for cpu in range(4):
        (root / f"cpu{cpu}").mkdir(parents=True, exist_ok=True)
    for pol, cpus in (("policy0", "0 1"), ("policy2", "2 3")):
        d = root / "cpufreq" / pol
        d.mkdir(parents=True, exist_ok=True)
        files = {"related_cpus": cpus, "affected_cpus": cpus,
                 "scaling_available_governors": GOVERNORS, "scaling_governor": "schedutil",
                 "scaling_min_freq": str(CPUINFO_MIN), "scaling_max_freq": str(CPUINFO_MAX),
                 "cpuinfo_min_freq": str(CPUINFO_MIN), "cpuinfo_max_freq": str(CPUINFO_MAX)}
        if with_epp:
            files["energy_performance_preference"] = "balance_performance"
            files["energy_performance_available_preferences"] = PREFERENCES
        for name, text in files.items():
            (d / name).write_text(text + "\n")
    if with_boost:
        (root / "cpufreq" / "boost").write_text("1\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file of the FAKE tree and its value (text without the trailing newline,
    which sysfs adds on read and ignores on write)."""
    return {str(p.relative_to(root)): p.read_text().strip() for p in sorted(root.rglob("*"))
            if p.is_file()}
