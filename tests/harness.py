"""The one home of the tests' helpers: real parts to run, calls to make, waits to poll.

- Real parts: ``dbus-daemon`` with a deny-by-default configuration modelled
  on Debian's system bus plus the project's shipped bus policy
  (:class:`PrivateBus`), ``schedcpd`` as a subprocess
  (:class:`SchedcpdProcess`), and python-dbusmock's polkitd template
  (:class:`PolkitMock`, the one fake: a polkit whose answers the test sets).
- D-Bus calls to the daemon's Manager: :func:`calls_as` (as any uid),
  :func:`call` (the result, or the test fails) and :func:`call_error`; on a
  test's own dbus-fast connection: :func:`bus_call` and :func:`add_match`.
- Waiting: :func:`wait_until` and :func:`wait_until_async` poll a condition
  until it holds (no fixed sleeps in tests); :func:`poll` and
  :func:`poll_async` return the last value for the test to assert on.
- Processes a test owns: :class:`Procs` (killed with their process groups
  at the end), :func:`worker_argv` for the sandbox worker.
"""

from __future__ import annotations

import asyncio
import atexit
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from plugins.scheduler import sandbox
from plugins.scheduler.sandbox_worker import RECORD
from schedcp_bench import services
from schedcp_bench.services import (
    BUS_CONF,
    PrivateBus,
    stop_process,
    wait_for,  # a started process coming up (it fails early when the process exits)
)
from schedcpd.const import BUS_NAME, OBJECT_PATH
from tests.client_probe import run_calls

__all__ = [
    "BUS_CONF",
    "CTL",
    "FAST_WINDOWS",
    "POLICY_DIR",
    "ROOT",
    "STATE_ROOT",
    "WORKER",
    "PolkitMock",
    "PrivateBus",
    "Procs",
    "SchedcpdProcess",
    "add_match",
    "bus_call",
    "call",
    "call_error",
    "calls_as",
    "client_probe",
    "ctl",
    "ctl_json",
    "ctl_ok",
    "handles_signal",
    "outcome",
    "poll",
    "poll_async",
    "remove_client_probe",
    "run_as",
    "wait_deployment",
    "wait_for",
    "wait_for_log",
    "wait_until",
    "wait_until_async",
    "wait_workers_ready",
    "worker_argv",
]

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "etc" / "dbus-1" / "system.d"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-dbusmock lives in Debian's Python
WORKER = sandbox.WORKER
MANAGER = "org.schedcp.Control1.Manager"

T = TypeVar("T")

FAST_WINDOWS = """[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 1.5
canary_seconds = 2.0
full_seconds = 2.0
backoff_seconds = 30
"""
"""The daemon's verifier and deployer tables for tests: the shortest windows whose
statistics stay reliable here (a dynamic stage, a baseline, a canary and a full
probation each long enough for the breaker to judge)."""

# -- waiting ----------------------------------------------------------------


def poll(read: Callable[[], T], done: Callable[[T], object], timeout: float = 10.0,
         interval: float = 0.05) -> T:
    """Call ``read`` until ``done(value)`` or ``timeout`` seconds; return the last value.

    For a caller that asserts on the value itself (what is left, what was
    seen); :func:`wait_until` fails the test instead.  ``read`` is called once
    more at the deadline, so a slow host costs time, not a false failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that.

    Fails the test (AssertionError naming ``what``) after ``timeout`` seconds.
    """
    value = poll(predicate, bool, timeout, interval)
    if not value:
        raise AssertionError(f"{what}: not met within {timeout:g} s (last: {value!r})")
    return value


async def poll_async(read: Callable[[], T | Awaitable[T]], done: Callable[[T], object],
                     timeout: float = 10.0, interval: float = 0.05) -> T:
    """:func:`poll` for a test's event loop (``read`` may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if isinstance(value, Awaitable):
            value = await value
        if done(value) or time.monotonic() >= deadline:  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        await asyncio.sleep(interval)


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0,
                           what: str = "condition", interval: float = 0.05) -> T:
    """:func:`wait_until` for a test's event loop (the predicate may be a coroutine function)."""
    value = await poll_async(predicate, bool, timeout, interval)
    if not value:
        raise AssertionError(f"{what}: not met within {timeout:g} s (last: {value!r})")
    return value


def wait_for_log(proc: SchedcpdProcess, text: str, timeout: float = 10.0,
                 after: str = "") -> None:
    """Wait until the daemon has logged ``text`` (after the first ``after``, when given)."""
    def logged() -> bool:
        log = proc.log_text()
        return after in log and text in log.split(after, 1)[1] if after else text in log

    try:
        wait_until(logged, timeout)
    except AssertionError:
        raise AssertionError(f"{text!r} not logged:\n{proc.log_text()}") from None


# -- calls to the daemon ------------------------------------------------------


async def bus_call(bus: MessageBus, member: str, signature: str = "", *body: Any,
                   interface: str = MANAGER, path: str = OBJECT_PATH,
                   destination: str = BUS_NAME, ok: bool = True,
                   timeout: float = 30.0) -> Message:
    """One call on a test's own connection; the reply.

    Bounded: a reply that never comes fails the test instead of hanging it.
    With ``ok`` (the default) anything but a method return fails the test;
    with ``ok=False`` the reply is returned as it came (errors included).
    """
    reply = await asyncio.wait_for(bus.call(Message(
        destination=destination, path=path, interface=interface, member=member,
        signature=signature, body=list(body))), timeout)
    assert reply is not None, f"{member}: no reply"
    if ok:
        assert reply.message_type == MessageType.METHOD_RETURN, (member, reply.error_name,
                                                                 reply.body)
    return reply


async def add_match(bus: MessageBus, rule: str) -> None:
    """Ask the bus to route the signals ``rule`` matches to ``bus`` (org.freedesktop.DBus)."""
    await bus_call(bus, "AddMatch", "s", rule, interface="org.freedesktop.DBus",
                   path="/org/freedesktop/DBus", destination="org.freedesktop.DBus")


def run_as(uid: int, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``uid`` with that user's groups (root when uid is 0).

    The working directory is ``/``: the checkout may not be readable by other
    users (a clone in a 0700 directory); they run the installed package.
    """
    extra: dict[str, Any] = {}
    if uid != 0:
        pw = pwd.getpwuid(uid)
        groups = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem]
        extra = {"user": uid, "group": pw.pw_gid, "extra_groups": groups}
    kwargs.setdefault("cwd", "/")
    kwargs.setdefault("timeout", 60)
    return subprocess.run(argv, capture_output=True, text=True, **extra, **kwargs)


_probe_dir: Path | None = None


def client_probe() -> Path:
    """tests/client_probe.py where every user can read it (the checkout may be 0700).

    Copied on first use into a 0755 directory of this process's own, removed
    by :func:`remove_client_probe` (at the end of the test session, or when the
    process exits).  Made lazily: a process that imports the harness and never
    calls as another user (a crash test's child, killed with SIGKILL) leaves
    nothing in /tmp.
    """
    global _probe_dir
    if _probe_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="schedcp-client-"))
        directory.chmod(0o755)
        shutil.copy(Path(__file__).parent / "client_probe.py", directory / "client_probe.py")
        (directory / "client_probe.py").chmod(0o644)
        _probe_dir = directory
    return _probe_dir / "client_probe.py"


def remove_client_probe() -> None:
    """Remove :func:`client_probe`'s copy, if this process made one."""
    global _probe_dir
    if _probe_dir is not None:
        shutil.rmtree(_probe_dir, ignore_errors=True)
        _probe_dir = None


atexit.register(remove_client_probe)


def _in_process(address: str, calls: list[list[Any]], timeout: float) -> list[dict[str, Any]]:
    """The calls from this process, on a loop of their own (the test may be running one)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["out"] = asyncio.run(asyncio.wait_for(run_calls(address, calls), timeout))
        except BaseException as err:  # re-raised in the test's thread
            result["err"] = err

    thread = threading.Thread(target=run, name="calls_as")
    thread.start()
    thread.join()
    if "err" in result:
        raise result["err"]
    return json.loads(json.dumps(result["out"]))  # the same plain values as from a child


def calls_as(uid: int, address: str, calls: list[list[Any]],
             timeout: float = 60) -> list[dict[str, Any]]:
    """Make Manager calls as ``uid``; each outcome ({"ok": ...} or {"error", "message"}).

    As another uid the calls come from a child process running as that user
    (tests/client_probe.py), so the daemon sees that uid.  As the test's own
    uid they are made from this process: the daemon sees the same uid,
    without a Python start-up per call.  All of them within ``timeout``
    seconds (a T2 verification takes minutes).
    """
    if uid == os.geteuid():
        return _in_process(address, calls, timeout)
    out = run_as(uid, [sys.executable, str(client_probe()), address, json.dumps(calls)],
                 timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def outcome(address: str, member: str, signature: str = "", *body: Any, uid: int = 0,
            interface: str = MANAGER, timeout: float = 60) -> dict[str, Any]:
    """One Manager call as ``uid``: {"ok": result} or {"error": name, "message": text}."""
    return calls_as(uid, address, [[member, signature, list(body), interface]], timeout)[0]


def call(address: str, member: str, signature: str = "", *body: Any, uid: int = 0,
         interface: str = MANAGER, timeout: float = 60) -> Any:
    """One Manager call as ``uid``; its result (the test fails on an error reply)."""
    result = outcome(address, member, signature, *body, uid=uid, interface=interface,
                     timeout=timeout)
    assert "ok" in result, (member, result)
    return result["ok"]


def call_error(address: str, member: str, signature: str = "", *body: Any,
               uid: int = 0) -> str:
    """One Manager call as ``uid`` that must fail; the D-Bus error name."""
    result = outcome(address, member, signature, *body, uid=uid)
    assert "error" in result, (member, result)
    return str(result["error"])


def verify_passes_every_stage(address: str, policy_id: str,
                              timeout: float = 420) -> tuple[str, dict[str, dict[str, Any]]]:
    """VerifyPolicy as root, within ``timeout`` (a T2 verification takes minutes).

    Asserts the report passed all four stages, the kernel stage for real;
    returns the token and the stages by name.
    """
    token, report_text = call(address, "VerifyPolicy", "s", policy_id, timeout=timeout)
    report = json.loads(report_text)
    assert report["passed"], json.dumps(report, indent=1)[:6000]
    assert token.startswith("schedcp1.")
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["schema", "static", "kernel", "dynamic"]
    assert not stages["kernel"]["skipped"] and stages["kernel"]["passed"]
    return token, stages


def wait_deployment(address: str, dep: str, states: set[str],
                    timeout: float = 30.0) -> dict[str, Any]:
    """Poll GetDeployment until ``dep`` is in one of ``states``; its record."""
    last: dict[str, Any] = {}

    def reached() -> bool:
        last.update(json.loads(call(address, "GetDeployment", "s", dep)))
        return last["state"] in states

    try:
        wait_until(reached, timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"deployment {dep} stuck in {last.get('state')}: "
                             f"{last.get('events')}") from None
    return dict(last)


CTL = [sys.executable, "-m", "schedcpd.cli"]
"""schedcpctl from this checkout (the installed copy may be older than the code under test)."""


def ctl(address: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``schedcpctl --bus ADDRESS ARGS`` as root; the completed process."""
    return subprocess.run([*CTL, "--bus", address, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def ctl_ok(address: str, *args: str) -> str:
    """schedcpctl's stdout; the test fails on a non-zero exit."""
    out = ctl(address, *args)
    assert out.returncode == 0, (args, out.returncode, out.stdout, out.stderr)
    return out.stdout


def ctl_json(address: str, *args: str) -> Any:
    """schedcpctl --json's answer, decoded."""
    return json.loads(ctl_ok(address, "--json", *args))


# -- processes a test owns ------------------------------------------------------


def handles_signal(pid: int, sig: int) -> bool:
    """Whether ``pid`` has installed a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines()
                  if line.startswith("SigCgt:"))
    return bool(caught & (1 << (sig - 1)))


def wait_workers_ready(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """Wait until each sandbox worker is set up (its step log holds its first record)."""
    for proc in procs:
        log = Path(str(proc.args[2]).replace("%d", str(proc.pid)))  # type: ignore[index]
        wait_until(lambda log=log: log.exists() and log.stat().st_size >= RECORD.size,
                   timeout, f"sandbox worker {proc.pid} started")


def worker_argv(directory: Path, role: str) -> list[str]:
    """The sandbox worker (``spin``, ``periodic``, ...) logging its steps to ``directory``/r-PID."""
    return [sys.executable, str(WORKER), str(directory / "r-%d"), role]


class Procs:
    """Child processes a test owns; all killed at the end (``stop()``, or ``with``).

    ``new_session`` (the default) starts each in a session of its own, and
    ``stop()`` kills its whole process group (what it forked too).  A new
    session is also a new autogroup where the kernel has them
    (kernel.sched_autogroup_enabled): the CPU is then shared between the
    groups first, so a test that judges how processes share a CPU by their
    policy and nice (SCHED_IDLE starving beside hogs) passes
    ``new_session=False`` to keep them in the test's own autogroup.
    ``stop()`` also removes the scratch directory :attr:`dir` (made on first
    use) and :attr:`extra_dirs`; the set may start processes again after it.
    """

    def __init__(self, prefix: str = "schedcp-test-", new_session: bool = True) -> None:
        self.prefix = prefix
        self.new_session = new_session
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leaders: set[int] = set()  # started in a session of their own
        self.extra_dirs: list[Path] = []
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        """The set's scratch directory (``prefix``*), made on first use."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        return self._dir

    @property
    def regex(self) -> str:
        """A --match regex selecting exactly the workers (their argv names :attr:`dir`)."""
        return re.escape(str(self.dir))

    def start(self, argv: list[str], *, new_session: bool | None = None,
              **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own (``new_session``, default: the set's)."""
        own = self.new_session if new_session is None else new_session
        proc = subprocess.Popen(argv, start_new_session=own, **popen)
        self.procs.append(proc)
        if own:
            self.leaders.add(proc.pid)
        return proc

    def worker(self, role: str) -> subprocess.Popen[bytes]:
        """A sandbox worker (spin or periodic) reporting under :attr:`dir`."""
        return self.start(worker_argv(self.dir, role))

    def stop(self) -> None:
        """Kill every process (with ``new_session``, every process group) started here."""
        for proc in self.procs:
            try:
                if proc.pid in self.leaders:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        self.procs.clear()
        self.leaders.clear()
        for path in [*([self._dir] if self._dir else []), *self.extra_dirs]:
            shutil.rmtree(path, ignore_errors=True)
        self.extra_dirs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

# PrivateBus and SchedcpdProcess live in the package (the benchmark uses them too).


def _memory_dir() -> str | None:
    """/dev/shm when it is a writable tmpfs here, else None (the system's temporary dir)."""
    shm = Path("/dev/shm")
    try:
        mounted = any(line.split()[1:3] == ["/dev/shm", "tmpfs"]
                      for line in Path("/proc/mounts").read_text().splitlines())
    except OSError:
        return None
    return str(shm) if mounted and os.access(shm, os.W_OK | os.X_OK) else None


STATE_ROOT = _memory_dir()
"""Where the tests' daemons keep their state (tmpfs when there is one).

The daemon's SQLite databases run with ``synchronous=FULL``: every
migration and every journal step is an fsync.  On a disk that other work
keeps busy, a daemon's start (eight migrations) took 12 to over 20 s (its
start-up wait is 20 s) against 4 to 9 s on tmpfs, measured side by side.
What the tests examine does not change: a killed daemon's files stay in
memory just as in the page cache, and no test can cut the power.
"""


class SchedcpdProcess(services.SchedcpdProcess):
    """:class:`schedcp_bench.services.SchedcpdProcess` with its state under :data:`STATE_ROOT`.

    A state directory the test passes is used as given (and left to it).
    """

    def __init__(self, address: str, config_text: str | None = None,
                 state_dir: Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self._remove_state: Callable[[], object] = lambda: None
        if state_dir is None:
            own = Path(tempfile.mkdtemp(prefix="schedcpd-test-state-", dir=STATE_ROOT))
            # Removed on __exit__, or when a test that never entered it is done with it.
            self._remove_state = weakref.finalize(self, shutil.rmtree, own, True)
            state_dir = own / "state"
        super().__init__(address, config_text, state_dir, env, extra_args)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._remove_state()


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
        wait_for(self._owned, 15, "polkitd mock", self.proc)
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
        stop_process(self.proc)
