"""Real parts for tests and benchmarks: a private system-like bus, schedcpd, polkit mock.

Everything here starts real processes: ``dbus-daemon`` with a deny-by-default
configuration modelled on Debian's system bus plus the project's shipped bus
policy, ``schedcpd`` as a subprocess, and python-dbusmock's polkitd template
(the one fake: a polkit whose answers the test sets).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUS_CONF = ROOT / "tests" / "data" / "system-like-bus.conf.in"
POLICY_DIR = ROOT / "etc" / "dbus-1" / "system.d"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-dbusmock lives in Debian's Python


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = log.read_text() if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout} s\n{detail}")


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
          timeout: float = 10.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class PrivateBus:
    """A private dbus-daemon that behaves like the system bus."""

    def __init__(self, policy_dir: Path = POLICY_DIR) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-bus-"))
        self.dir.chmod(0o755)  # unprivileged test clients must reach the socket
        self.socket = self.dir / "bus"
        self.address = f"unix:path={self.socket}"
        conf = BUS_CONF.read_text().replace("@SOCKET@", str(self.socket))
        conf = conf.replace("@POLICY_DIR@", str(policy_dir))
        self.config = self.dir / "bus.conf"
        self.config.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateBus:
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_for(self.socket.exists, 10, "dbus-daemon", self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class SchedcpdProcess:
    """schedcpd running as a subprocess on a given bus."""

    def __init__(self, address: str, config_text: str | None = None,
                 state_dir: Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.address = address
        self.dir = Path(tempfile.mkdtemp(prefix="schedcpd-test-"))
        self.state_dir = state_dir or self.dir / "state"
        self.config = self.dir / "schedcpd.toml"
        self.config.write_text(config_text if config_text is not None else
                               "[metrics]\nport = 0\n")
        self.log = self.dir / "schedcpd.log"
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> SchedcpdProcess:
        """Start the daemon; with ``wait``, return once it owns its bus name."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "schedcpd", "--config", str(self.config),
                 "--bus", self.address, "--state-dir", str(self.state_dir), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
            )
        if wait:
            _wait_for(self.owns_name, 20, "schedcpd", self.proc, self.log)
        return self

    def owns_name(self) -> bool:
        """Whether org.schedcp.Control1 has an owner on the bus."""
        out = subprocess.run(
            ["busctl", f"--address={self.address}", "status", "org.schedcp.Control1"],
            capture_output=True, text=True,
        )
        return out.returncode == 0

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the daemon with ``sig``; return its exit status."""
        return _stop(self.proc, sig)

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.read_text() if self.log.exists() else ""

    def __enter__(self) -> SchedcpdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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
