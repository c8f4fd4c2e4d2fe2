"""A schedcpd to talk to: the host's (system bus) or a private bus + daemon started here.

:class:`PrivateBus` is a private ``dbus-daemon`` whose configuration is
modelled on Debian's system bus (deny by default) plus the project's shipped
bus policy; :class:`SchedcpdProcess` runs ``schedcpd`` as a subprocess on a
given bus.  Tests use both (``tests/harness.py`` re-exports them); the
benchmark uses :func:`open_daemon`, which picks the system bus when run as
root on a systemd host where ``org.schedcp.Control1`` is owned, and otherwise
starts a private bus and a daemon with short deployment windows
(:data:`BENCH_DAEMON_CONFIG`).

Works from a checkout and from an installed (non-editable) package: the bus
configuration template is package data, and the shipped D-Bus policy is
looked up in the checkout, ``/usr/share/dbus-1/system.d``,
``/etc/dbus-1/system.d`` and, last, the package's own copy (``data/``, a
symlink to ``etc/dbus-1/system.d`` in the source tree, a file in the wheel).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from schedcpd.const import BUS_NAME

_LOGGER = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
BUS_CONF = PACKAGE_DIR / "data" / "system-like-bus.conf.in"
POLICY_FILE = f"{BUS_NAME}.conf"


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when installed."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "schedcpd").is_dir():
        return root
    return None


def find_policy_dir() -> Path:
    """The directory holding schedcpd's shipped D-Bus policy (``org.schedcp.Control1.conf``)."""
    root = checkout_root()
    candidates = [root / "etc" / "dbus-1" / "system.d"] if root else []
    candidates += [Path("/usr/share/dbus-1/system.d"), Path("/etc/dbus-1/system.d"),
                   PACKAGE_DIR / "data"]  # a copy shipped in the wheel (pip installs)
    for cand in candidates:
        if (cand / POLICY_FILE).is_file():
            return cand
    raise FileNotFoundError(
        f"schedcpd's D-Bus policy {POLICY_FILE} is in none of "
        f"{', '.join(map(str, candidates))}: install the schedcp package or run from a checkout")


def system_like_bus_config(socket: str | Path, policy_dir: str | Path) -> str:
    """A deny-by-default, system-like bus configuration listening on ``socket``.

    ``policy_dir`` is included (it holds schedcpd's shipped policy).  Used by
    :class:`PrivateBus` and by the sched_ext guest host's system bus
    (plugins/scheduler/microvm/rootfs.py).
    """
    return (BUS_CONF.read_text().replace("@SOCKET@", str(socket))
            .replace("@POLICY_DIR@", str(policy_dir)))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[Any] | None = None, log: Path | None = None) -> None:
    """Poll ``predicate`` until true; raise RuntimeError (with ``log``) on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    detail = log.read_text() if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout} s\n{detail}")


def stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> int | None:
    """Send ``sig`` (then SIGKILL after ``timeout``); return the exit status."""
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

    def __init__(self, policy_dir: Path | None = None) -> None:
        policy_dir = policy_dir if policy_dir is not None else find_policy_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="schedcp-bus-"))
        # Removed on __exit__, or with the object when it was never entered (or its
        # start failed): the directory does not outlive its user.
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.dir.chmod(0o755)  # unprivileged clients must reach the socket
        self.socket = self.dir / "bus"
        self.address = f"unix:path={self.socket}"
        self.config = self.dir / "bus.conf"
        self.config.write_text(system_like_bus_config(self.socket, policy_dir))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(self.socket.exists, 10, "dbus-daemon", self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        self._remove_dir()


class SchedcpdProcess:
    """schedcpd running as a subprocess on a given bus.

    From a checkout it runs with the checkout as working directory, so
    ``python -m schedcpd`` imports the checkout's code (as the tests expect).
    """

    def __init__(self, address: str, config_text: str | None = None,
                 state_dir: Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.address = address
        self.dir = Path(tempfile.mkdtemp(prefix="schedcpd-test-"))
        # Removed on __exit__, or with the object: a test that only start()s a
        # daemon (one that must fail to start) leaves nothing behind.
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.state_dir = state_dir or self.dir / "state"
        self.config = self.dir / "schedcpd.toml"
        self.config.write_text(config_text if config_text is not None else
                               "[metrics]\nport = 0\n")
        self.log = self.dir / "schedcpd.log"
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The daemon's command line (a subclass may run it through a wrapper)."""
        return [sys.executable, "-m", "schedcpd", "--config", str(self.config),
                "--bus", self.address, "--state-dir", str(self.state_dir), *self.extra_args]

    def start(self, wait: bool = True) -> Self:
        """Start the daemon; with ``wait``, return once it owns its bus name."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                cwd=checkout_root() or self.dir,
            )
        if wait:
            wait_for(self.owns_name, 20, "schedcpd", self.proc, self.log)
        return self

    def owns_name(self) -> bool:
        """Whether org.schedcp.Control1 has an owner on the bus."""
        return name_owned(f"--address={self.address}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the daemon with ``sig``; return its exit status."""
        return stop_process(self.proc, sig)

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.read_text() if self.log.exists() else ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:  # not up in time: stopped and removed all the same
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._remove_dir()


def name_owned(bus_arg: str) -> bool:
    """Whether ``org.schedcp.Control1`` has an owner (``bus_arg``: ``--system``/``--address=``)."""
    if shutil.which("busctl") is None:
        return False
    out = subprocess.run(["busctl", bus_arg, "status", BUS_NAME],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0


BENCH_DAEMON_CONFIG = """[metrics]
enabled = false
[analysis]
rate_hz = 4.0
window_seconds = 5.0
[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 1.0
canary_seconds = 1.0
full_seconds = 1.0
backoff_seconds = 1
"""
"""The private daemon's configuration: short probation so a window's deploy is quick."""


@dataclass
class Daemon:
    """The schedcpd the benchmark talks to."""

    address: str
    """A bus spec for :class:`schedcp_agent.client.SchedcpClient` (``system`` or an address)."""
    kind: str
    """``system`` (the host's daemon), ``private`` (started here) or ``address`` (given)."""
    own_pids: list[int]
    """Processes started for it here (the bus, the daemon): not foreign load."""
    log: Path | None = None


def system_daemon_available() -> bool:
    """Root, systemd running, and ``org.schedcp.Control1`` owned on the system bus."""
    return (os.geteuid() == 0 and Path("/run/systemd/system").is_dir()
            and name_owned("--system"))


@contextmanager
def open_daemon(bus: str = "auto", config_text: str = BENCH_DAEMON_CONFIG) -> Iterator[Daemon]:
    """The daemon to use for ``bus``: ``auto``, ``system``, ``private`` or a D-Bus address."""
    if bus == "auto":
        bus = "system" if system_daemon_available() else "private"
    if bus == "system":
        if not name_owned("--system"):
            raise RuntimeError(f"{BUS_NAME} is not owned on the system bus "
                               f"(is schedcpd running? systemctl status schedcpd)")
        yield Daemon("system", "system", [])
        return
    if bus != "private":
        yield Daemon(bus, "address", [])
        return
    with PrivateBus() as pbus, SchedcpdProcess(pbus.address, config_text) as daemon:
        pids = [p.pid for p in (pbus.proc, daemon.proc) if p is not None]
        _LOGGER.info("private bus %s, schedcpd pid %s", pbus.address, pids[-1])
        yield Daemon(pbus.address, "private", pids, daemon.log)
