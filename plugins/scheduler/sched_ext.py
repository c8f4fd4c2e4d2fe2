"""sched_ext backend: detection and a supervised loader (host side untested here).

On kernels with ``CONFIG_SCHED_EXT`` the kernel exposes
``/sys/kernel/sched_ext/{state,root/ops,enable_seq,events}``.  The hosts this
project is developed on have no sched_ext, so :func:`detect` reports the
capability absent with the reason, and :class:`SupervisedLoader` - which
starts a BPF scheduler loader process (the project's own loader from bpf/
or an allow-listed ``scx_*`` binary), watches ``state`` and reports
ejection or loader death - has not run against a host kernel.  The loader
it starts and the state it watches are proved in the micro-VM
(plugins/scheduler/microvm, docs/sched_ext.md); deploying a T2 policy on a
host with sched_ext is not wired yet (Apply refuses T2 with NotSupported).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

SCHED_EXT_DIR = Path("/sys/kernel/sched_ext")


def detect(root: Path = SCHED_EXT_DIR) -> dict[str, Any]:
    """Report sched_ext presence, state and the active scheduler's ops name."""
    if not root.is_dir():
        return {"available": False, "reason": f"kernel has no {root} (no CONFIG_SCHED_EXT)"}
    info: dict[str, Any] = {"available": True, "reason": "sched_ext present"}
    for name, rel in (("state", "state"), ("ops", "root/ops"), ("enable_seq", "enable_seq")):
        try:
            info[name] = (root / rel).read_text().strip()
        except OSError:
            info[name] = None
    try:
        info["events"] = (root / "root" / "events").read_text()
    except OSError:
        info["events"] = None
    return info


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


class SupervisedLoader:
    """Runs one sched_ext loader process and reports when it dies or is ejected.

    Untested here (no sched_ext); see the module docstring.  ``poll`` is meant
    to be called by the daemon every few hundred ms; ``on_failure`` gets a
    reason string once.
    """

    def __init__(self, spec: LoaderSpec, on_failure: Callable[[str], None]) -> None:
        self.spec = spec
        self.on_failure = on_failure
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed = False

    def build_argv(self, args: dict[str, int]) -> list[str]:
        """Validate ``args`` against the allow-list and build the command line."""
        argv = [str(self.spec.binary)]
        if self.spec.scheduler is not None:
            argv.append(str(self.spec.scheduler))
        for name, value in sorted(args.items()):
            if name not in self.spec.allowed_args:
                raise ValueError(f"argument {name!r} is not allowed for {self.spec.binary}")
            lo, hi = self.spec.allowed_args[name]
            if not lo <= int(value) <= hi:
                raise ValueError(f"argument {name}={value} outside {lo}..{hi}")
            if self.spec.scheduler is not None:
                argv.append(f"{name}={int(value)}")
            else:
                argv += [f"--{name}", str(int(value))]
        return argv

    def start(self, args: dict[str, int]) -> None:
        """Start the loader (refuses when the kernel has no sched_ext)."""
        if not detect()["available"]:
            raise RuntimeError("sched_ext is not available on this kernel")
        self._proc = subprocess.Popen(self.build_argv(args))

    def poll(self) -> str | None:
        """Return a failure reason (loader died, scheduler ejected) or ``None``."""
        if self._failed or self._proc is None:
            return None
        reason = None
        if self._proc.poll() is not None:
            reason = f"loader exited with {self._proc.returncode}"
        else:
            state = detect().get("state")
            if state not in ("enabled", "enabling"):
                reason = f"sched_ext state is {state!r}: scheduler ejected"
        if reason:
            self._failed = True
            self.on_failure(reason)
        return reason

    def stop(self) -> None:
        """Stop the loader; the kernel falls back to EEVDF when it exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
