"""A FAKE sched_ext for tests on hosts whose kernel has no sched_ext.

This host's kernel is built without ``CONFIG_SCHED_CLASS_EXT``: there is no
/sys/kernel/sched_ext and no BPF scheduler can be attached.  The real loader
(bpf/scx/scx_loader.c) and the real kernel's ejection are proved in the qemu
micro-VM (tests/microvm, docs/sched_ext.md).  To run the daemon's whole T2
deployment path here -- token, Deploy, canary, supervision, breaker, revert,
crash recovery -- two things stand in for what the kernel would do:

- :class:`FakeSchedExt`: a temporary directory shaped like
  /sys/kernel/sched_ext (``state``, ``root/ops``, ``root/events``,
  ``nr_rejected``, ``enable_seq``) plus a thread playing the kernel: when the
  loader process that enabled the scheduler dies, ``state`` goes back to
  ``disabled`` (the kernel detaches a scheduler whose struct_ops link
  closes).  :meth:`FakeSchedExt.eject` and :meth:`FakeSchedExt.count_errors`
  do what the kernel's watchdog and its event counters would.
- the FAKE loader (``python fake_sched_ext.py loader ROOT OBJECT name=value
  ...``), started by the daemon through a wrapper script named like the real
  one would be configured: it checks its arguments, "attaches" (writes
  ``enabled`` and the ops name), prints JSON lines like scx_loader, exits 0
  on SIGTERM after "detaching", and exits 2 when it sees the state leave
  ``enabled`` (as scx_loader does after an ejection).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

EVENTS = ("SCX_EV_SELECT_CPU_FALLBACK", "SCX_EV_DISPATCH_LOCAL_DSQ_OFFLINE",
          "SCX_EV_DISPATCH_KEEP_LAST", "SCX_EV_ENQ_SKIP_EXITING", "SCX_EV_INSERT_NOT_OWNED",
          "SCX_EV_BYPASS_ACTIVATE")
PID_FILE = "FAKE-loader.pid"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].startswith(("Z", "X"))


class FakeSchedExt:
    """A FAKE /sys/kernel/sched_ext directory and the kernel's part of it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="FAKE-sched_ext-"))
        self.root = self.dir / "sched_ext"
        (self.root / "root").mkdir(parents=True)
        _write(self.root / "state", "disabled\n")
        _write(self.root / "root" / "ops", "\n")
        _write(self.root / "enable_seq", "0\n")
        _write(self.root / "nr_rejected", "0\n")
        self.counters = dict.fromkeys(EVENTS, 0)
        self._write_events()
        self.objects = self.dir / "objects"
        self.objects.mkdir()
        for name in ("vtime", "latency"):
            (self.objects / f"{name}.bpf.o").write_text("FAKE scheduler object\n")
        self.loader = self.dir / "FAKE-scx_loader"
        self.loader.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} "
                               f"loader {self.root} \"$@\"\n")
        self.loader.chmod(0o755)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._kernel, name="FAKE-sched_ext", daemon=True)
        self._thread.start()

    def config(self) -> str:
        """The ``[plugins.scheduler]`` table pointing the daemon at this fake."""
        return (f'[plugins.scheduler]\nscx_root = "{self.root}"\nscx_loader = "{self.loader}"\n'
                f'scx_object_dir = "{self.objects}"\n')

    def _write_events(self) -> None:
        _write(self.root / "root" / "events",
               "".join(f"{k} {v}\n" for k, v in self.counters.items()))

    def state(self) -> str:
        """The fake kernel's sched_ext state."""
        return (self.root / "state").read_text().strip()

    def ops(self) -> str:
        """The fake kernel's ``root/ops``."""
        return (self.root / "root" / "ops").read_text().strip()

    def loader_pid(self) -> int | None:
        """The pid of the fake loader that enabled the scheduler last."""
        try:
            return int((self.root / PID_FILE).read_text())
        except (OSError, ValueError):
            return None

    def loader_running(self) -> bool:
        """Whether that loader process still runs."""
        pid = self.loader_pid()
        return pid is not None and not _dead(pid)

    def eject(self) -> None:
        """What the kernel does on a watchdog stall or a BPF error: disable the scheduler."""
        _write(self.root / "state", "disabled\n")
        _write(self.root / "root" / "ops", "\n")

    def count_errors(self, name: str = "SCX_EV_DISPATCH_LOCAL_DSQ_OFFLINE", n: int = 3) -> None:
        """Raise an event counter, as the kernel does when a scheduler errs."""
        self.counters[name] += n
        self._write_events()

    def _kernel(self) -> None:
        while not self._stop.wait(0.02):
            pid = self.loader_pid()
            if self.state() == "enabled" and pid is not None and _dead(pid):
                self.eject()  # the struct_ops link closed with the loader

    def close(self) -> None:
        """Stop the fake kernel; kill a fake loader left running; remove the directory."""
        self._stop.set()
        self._thread.join(timeout=2)
        pid = self.loader_pid()
        if pid is not None and not _dead(pid):
            os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


# -- the FAKE loader process --------------------------------------------------


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def fake_loader(root: Path, args: list[str]) -> int:
    """Act like ``scx_loader [--partial] OBJECT name=value ...`` against a FAKE sched_ext root."""
    partial = bool(args) and args[0] == "--partial"
    args = args[1:] if partial else args
    if not args or not Path(args[0]).is_file():
        _emit("error", stage="open", message=f"cannot open {args[:1]}")
        return 3
    obj = Path(args[0])
    _emit("open", object=str(obj), struct_ops=f"{obj.name.split('.')[0]}_ops")
    for arg in args[1:]:
        name, _, value = arg.partition("=")
        if not name or not value.lstrip("-").isdigit():
            _emit("error", stage="param", message=f"bad parameter {arg!r}")
            return 3
        _emit("param", name=name, value=int(value))
    _emit("loaded", ms=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _write(root / PID_FILE, str(os.getpid()))
    _write(root / "state", "enabling\n")
    _write(root / "root" / "ops", f"schedcp_{obj.name.split('.')[0]}\n")
    seq = int((root / "enable_seq").read_text() or "0") + 1
    _write(root / "enable_seq", f"{seq}\n")
    _write(root / "switch_all", "0\n" if partial else "1\n")
    _write(root / "state", "enabled\n")
    _emit("attached", state="enabled", ops=(root / "root" / "ops").read_text().strip())
    while not stop.wait(0.05):
        state = (root / "state").read_text().strip()
        if state != "enabled":
            _emit("state", state=state)
            _emit("detached", state=state, ejected=True)
            _emit("final", status=2)
            return 2
    _write(root / "state", "disabled\n")
    _write(root / "root" / "ops", "\n")
    _emit("detached", state="disabled", ejected=False)
    _emit("final", status=0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "loader":
        sys.exit(fake_loader(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit("usage: fake_sched_ext.py loader ROOT OBJECT [name=value ...]")
