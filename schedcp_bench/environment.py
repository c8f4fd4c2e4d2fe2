"""The environment a result was measured in: kernel, CPU, governor, versions, host, date."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

# Debian packages whose versions matter for the workloads and the daemon.
DEBIAN_PACKAGES = ("dbus-daemon", "dbus", "rt-tests", "stress-ng", "sysbench", "redis-server",
                   "redis-tools", "nginx", "wrk", "sqlite3", "linux-perf", "gcc", "make",
                   "python3")
PYTHON_PACKAGES = ("schedcp", "dbus-fast", "anthropic", "matplotlib", "tqdm")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def governor() -> str:
    """The cpufreq governor of cpu0, or ``none`` (no cpufreq, as in most VMs)."""
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        return path.read_text().strip()
    except OSError:
        return "none"


def debian_versions(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> dict[str, str | None]:
    """Installed version of each Debian package (None: not installed / no dpkg)."""
    if shutil.which("dpkg-query") is None:
        return dict.fromkeys(packages)
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status} ${Version}\n",
                          *packages], capture_output=True, text=True, check=False)
    found: dict[str, str | None] = dict.fromkeys(packages)
    for line in out.stdout.splitlines():
        m = re.match(r"(\S+) install ok installed (\S+)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def python_versions() -> dict[str, str | None]:
    """Versions of the Python packages the benchmark depends on."""
    out: dict[str, str | None] = {}
    for name in PYTHON_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def sched_ext_state() -> str:
    """``/sys/kernel/sched_ext/state`` or ``absent``."""
    try:
        return Path("/sys/kernel/sched_ext/state").read_text().strip()
    except OSError:
        return "absent"


def capture() -> dict[str, Any]:
    """Everything above, plus the kernel, the core count and a hash of the hostname."""
    uname = platform.uname()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "governor": governor(),
        "sched_ext": sched_ext_state(),
        "python": platform.python_version(),
        "python_packages": python_versions(),
        "debian_packages": debian_versions(),
        "hostname_sha256": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16],
        "uid": os.geteuid(),
    }
