"""Real parts for tests and benchmarks: a private system-like bus, schedcpd, polkit mock.

Everything here starts real processes: ``dbus-daemon`` with a deny-by-default
configuration modelled on Debian's system bus plus the project's shipped bus
policy, ``schedcpd`` as a subprocess, and python-dbusmock's polkitd template
(the one fake: a polkit whose answers the test sets).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from schedcp_bench.services import (
    BUS_CONF,
    PrivateBus,
    SchedcpdProcess,
    stop_process,
    wait_for,
)

__all__ = ["BUS_CONF", "POLICY_DIR", "ROOT", "PolkitMock", "PrivateBus", "SchedcpdProcess"]

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "etc" / "dbus-1" / "system.d"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-dbusmock lives in Debian's Python

# PrivateBus and SchedcpdProcess live in the package (the benchmark uses them too).
_wait_for = wait_for
_stop = stop_process


class PolkitMock:
    """python-dbusmock's polkitd template on the private bus (test fake for polkitd)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PolkitMock:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_for(self._owned, 15, "polkitd mock", self.proc)
        return self

    def _owned(self) -> bool:
        out = subprocess.run(
            ["busctl", f"--address={self.address}", "status", "org.freedesktop.PolicyKit1"],
            capture_output=True, text=True,
        )
        return out.returncode == 0

    def set_allowed(self, actions: list[str]) -> None:
        """Make polkit authorize exactly ``actions`` (for every subject)."""
        subprocess.run(
            ["busctl", f"--address={self.address}", "call", "org.freedesktop.PolicyKit1",
             "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.DBus.Mock",
             "SetAllowed", "as", str(len(actions)), *actions],
            check=True, capture_output=True,
        )

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)
