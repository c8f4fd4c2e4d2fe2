"""sched_ext backend: detection and the supervised scheduler loader on the host.

On kernels with ``CONFIG_SCHED_EXT`` the kernel exposes
``/sys/kernel/sched_ext/{state,root/ops,enable_seq,nr_rejected,root/events}``.
:func:`detect` reports the capability (absent, with the reason, on the hosts
this project is developed on).  :class:`SupervisedLoader` runs one loader
process -- the project's own ``scx_loader OBJECT name=value ...``
(bpf/scx/scx_loader.c) or an allow-listed ``scx_*`` binary -- waits until
the kernel reports the scheduler ``enabled``, and :meth:`SupervisedLoader.poll`
reports, as a :class:`LoaderFailure`:

- the loader process died (the kernel detaches a scheduler whose link closes);
- ``state`` left ``enabled`` (the kernel ejected the scheduler: watchdog
  stall, a BPF error, sysrq-S);
- an error counter of ``root/events`` rose since the scheduler was enabled
  (:data:`ERROR_EVENTS`).

The sysfs root is a parameter so tests can run the whole path against a
FAKE sched_ext directory on hosts whose kernel has none (tests/deploy/
fake_sched_ext.py); production uses :data:`SCHED_EXT_DIR`.  The real loader
and the real kernel's ejection are proved in the micro-VM (docs/sched_ext.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

SCHED_EXT_DIR = Path("/sys/kernel/sched_ext")
# ``root/events`` counters that count a scheduler's mistakes or the kernel
# falling back to bypass mode; any rise while deployed trips the breaker.
ERROR_EVENTS = ("SCX_EV_SELECT_CPU_FALLBACK", "SCX_EV_DISPATCH_LOCAL_DSQ_OFFLINE",
                "SCX_EV_INSERT_NOT_OWNED", "SCX_EV_BYPASS_ACTIVATE")
RUNNING_STATES = ("enabled",)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def detect(root: Path = SCHED_EXT_DIR) -> dict[str, Any]:
    """Report sched_ext presence, state and the active scheduler's ops name."""
    if not root.is_dir():
        return {"available": False, "reason": f"kernel has no {root} (no CONFIG_SCHED_EXT)"}
    info: dict[str, Any] = {"available": True, "reason": "sched_ext present"}
    if root != SCHED_EXT_DIR:
        info["reason"] = f"sched_ext at {root} (not the kernel's own directory)"
    for name, rel in (("state", "state"), ("ops", "root/ops"), ("enable_seq", "enable_seq")):
        info[name] = _read(root / rel)
    info["events"] = read_events(root) if (root / "root" / "events").exists() else None
    return info


def read_events(root: Path = SCHED_EXT_DIR) -> dict[str, int]:
    """The ``root/events`` counters (``SCX_EV_NAME value`` lines) and ``nr_rejected``."""
    out: dict[str, int] = {}
    for line in (_read(root / "root" / "events") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    rejected = _read(root / "nr_rejected")
    if rejected and rejected.isdigit():
        out["nr_rejected"] = int(rejected)
    return out


def error_count(events: dict[str, int]) -> int:
    """The sum of the error counters in ``events``."""
    return sum(events.get(name, 0) for name in ERROR_EVENTS)


@dataclass
class LoaderSpec:
    """An allow-listed loader: binary path and the argument schema it accepts.

    With ``scheduler`` set, ``binary`` is the project's own loader
    (bpf/scx/scx_loader.c): ``scx_loader OBJECT name=value ...``.  Without
    it, ``binary`` is an external ``scx_*`` scheduler taking ``--name value``.
    """

    binary: Path
    allowed_args: dict[str, tuple[int, int]]
    scheduler: Path | None = None
    partial: bool = False
    """Attach with ``SCX_OPS_SWITCH_PARTIAL`` (``--partial``): only SCHED_EXT tasks switch."""


@dataclass
class LoaderFailure:
    """Why a running scheduler is no longer healthy (a breaker trip)."""

    guard: str  # sched_ext_loader | sched_ext_state | sched_ext_events
    baseline: float
    observed: float
    detail: str


class LoaderError(RuntimeError):
    """The loader did not get the scheduler to ``enabled``; ``log`` is its output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class SupervisedLoader:
    """Runs one sched_ext loader process and reports when it dies or is ejected.

    ``poll`` is called by the deployer every few hundred ms during probation
    and while the deployment is active; ``on_failure`` (optional) gets the
    first failure's reason once.
    """

    def __init__(self, spec: LoaderSpec, on_failure: Callable[[str], None] | None = None,
                 *, root: Path = SCHED_EXT_DIR, log: Path | None = None,
                 env: dict[str, str] | None = None, event_limit: int = 1) -> None:
        self.spec = spec
        self.on_failure = on_failure or (lambda reason: None)
        self.root = root
        self.log = log
        self.env = env or {}
        self.event_limit = event_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._failure: LoaderFailure | None = None
        self.errors_at_start = 0

    @property
    def pid(self) -> int | None:
        """The loader's pid once started."""
        return self._proc.pid if self._proc is not None else None

    def build_argv(self, args: dict[str, int]) -> list[str]:
        """Validate ``args`` against the allow-list and build the command line."""
        argv = [str(self.spec.binary)]
        if self.spec.scheduler is not None:
            argv += ["--partial"] * self.spec.partial + [str(self.spec.scheduler)]
        for name, value in sorted(args.items()):
            if name not in self.spec.allowed_args:
                raise ValueError(f"argument {name!r} is not allowed for {self.spec.binary}")
            lo, hi = self.spec.allowed_args[name]
            if isinstance(value, bool) or not lo <= int(value) <= hi:
                raise ValueError(f"argument {name}={value} outside {lo}..{hi}")
            if self.spec.scheduler is not None:
                argv.append(f"{name}={int(value)}")
            else:
                argv += [f"--{name}", str(int(value))]
        return argv

    def state(self) -> str | None:
        """The kernel's sched_ext state now (None when unreadable)."""
        return _read(self.root / "state")

    def start(self, args: dict[str, int], timeout: float = 15.0) -> int:
        """Start the loader; return its pid once the scheduler is ``enabled``.

        Refuses when sched_ext is absent or another BPF scheduler is loaded;
        raises :class:`LoaderError` (with the loader's output) when it exits
        or does not enable the scheduler within ``timeout``.
        """
        info = detect(self.root)
        if not info["available"]:
            raise RuntimeError(f"sched_ext is not available: {info['reason']}")
        if info.get("state") not in ("disabled", None):
            raise RuntimeError(f"sched_ext is {info['state']!r} (ops {info.get('ops')!r}): "
                               "another BPF scheduler is loaded; not replacing it")
        argv = self.build_argv(args)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          env={**os.environ, **self.env})
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while self.state() != "enabled" or self._proc.poll() is not None:
            if self._proc.poll() is not None:
                raise LoaderError(f"the loader exited with {self._proc.returncode} before the "
                                  f"scheduler was enabled (state {self.state()!r})",
                                  self.output())
            if time.monotonic() > deadline:
                self.stop()
                raise LoaderError(f"the scheduler was not enabled within {timeout:.0f} s "
                                  f"(state {self.state()!r})", self.output())
            time.sleep(0.02)
        self.errors_at_start = error_count(read_events(self.root))
        _LOGGER.info("sched_ext loader %s enabled %s", self._proc.pid,
                     _read(self.root / "root" / "ops"))
        return self._proc.pid

    def output(self) -> str:
        """The last 8 KiB of the loader's output (its JSON event lines)."""
        if self.log is None:
            return ""
        try:
            return self.log.read_bytes()[-8192:].decode(errors="replace")
        except OSError:
            return ""

    def poll(self) -> LoaderFailure | None:
        """The failure (loader died, scheduler ejected, error events) or ``None``."""
        if self._failure is not None or self._proc is None:
            return self._failure
        failure = None
        code = self._proc.poll()
        state = self.state()
        if code == 2 or (code is None and state not in RUNNING_STATES):
            # scx_loader exits with 2 once it sees the kernel eject its scheduler.
            failure = LoaderFailure("sched_ext_state", 1.0, 0.0,
                                    f"sched_ext state is {state!r}, not 'enabled': the kernel "
                                    f"ejected the scheduler (loader pid {self._proc.pid}"
                                    + (", exited with 2)" if code == 2 else " still running)"))
        elif code is not None:
            failure = LoaderFailure("sched_ext_loader", 1.0, 0.0,
                                    f"the sched_ext loader (pid {self._proc.pid}) exited with "
                                    f"{code}; the kernel fell back to EEVDF")
        else:
            errors = error_count(read_events(self.root))
            if errors - self.errors_at_start >= self.event_limit:
                failure = LoaderFailure(
                    "sched_ext_events", float(self.errors_at_start), float(errors),
                    f"sched_ext error events rose from {self.errors_at_start} to {errors} "
                    f"({', '.join(ERROR_EVENTS)})")
        if failure is not None:
            self._failure = failure
            self.on_failure(failure.detail)
        return failure

    def stop(self, timeout: float = 0.8) -> dict[str, Any]:
        """Stop the loader (SIGTERM, SIGKILL after ``timeout``); EEVDF takes over."""
        proc = self._proc
        if proc is None:
            return {"stopped": False, "state": self.state()}
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {"stopped": True, "pid": proc.pid, "exit": proc.returncode,
                "state": wait_left_enabled(self.root, timeout)}


def wait_left_enabled(root: Path, timeout: float) -> str | None:
    """Wait up to ``timeout`` for sched_ext to leave ``enabled``; the state then."""
    deadline = time.monotonic() + timeout
    state = _read(root / "state")
    while state in ("enabled", "disabling") and time.monotonic() < deadline:
        time.sleep(0.01)
        state = _read(root / "state")
    return state
