"""A small blocking client of systemd's manager (org.freedesktop.systemd1) over D-Bus.

The scheduler plugin's cgroup knobs go through systemd when systemd owns
the cgroup tree (:mod:`plugins.scheduler.unit_groups`).  The plugin's hooks
run in worker threads, so this client runs dbus-fast's asyncio connection
in a thread of its own and offers plain blocking calls, each bounded by a
timeout.  These calls are all it needs:

- ``GetUnitByPID`` + the unit's ``Id``: the system manager's unit of a process;
- ``GetUnitProcesses``: every process in a unit's cgroup subtree;
- ``LoadUnit`` + ``Properties.Get``: a unit's resource-control property;
- ``SetUnitProperties(name, runtime=true, ...)``: change it for this boot only
  (systemd writes a drop-in under /run/systemd/system.control and the cgroup
  file itself);
- ``StartTransientUnit``: a scope for the verifier's own sandbox processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

_LOGGER = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
#: D-Bus errors meaning "no such unit" (not loaded, or no unit for that pid)
NO_UNIT_ERRORS = (f"{SYSTEMD}.NoSuchUnit", f"{SYSTEMD}.NoUnitForPID",
                  f"{SYSTEMD}.NoSuchProcess", f"{SYSTEMD}.UnitMasked")
#: D-Bus signature of each property this plugin reads or sets
PROPERTY_TYPES = {"CPUWeight": "t", "CPUQuotaPerSecUSec": "t", "CPUQuotaPeriodUSec": "t",
                  "AllowedCPUs": "ay"}
#: the resource-control interface of each unit type that has a cgroup
UNIT_INTERFACES = {"service": "Service", "scope": "Scope", "slice": "Slice",
                   "socket": "Socket", "mount": "Mount", "swap": "Swap"}

T = TypeVar("T")


class SystemdError(RuntimeError):
    """systemd refused a call, or could not be reached; ``name`` is the D-Bus error."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name

    @property
    def no_unit(self) -> bool:
        """The unit (or the process's unit) does not exist."""
        return self.name in NO_UNIT_ERRORS


def system_bus_address() -> str:
    """Where the system bus is: ``$DBUS_SYSTEM_BUS_ADDRESS`` or the standard socket."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


def interface_of(unit: str) -> str:
    """The D-Bus interface carrying ``unit``'s cgroup properties (by its type suffix)."""
    kind = unit.rpartition(".")[2]
    if kind not in UNIT_INTERFACES:
        raise SystemdError("org.freedesktop.DBus.Error.InvalidArgs",
                           f"{unit!r} is not a unit type with a cgroup")
    return f"{SYSTEMD}.{UNIT_INTERFACES[kind]}"


def cpus_to_mask(cpus: list[int]) -> bytes:
    """CPU numbers as systemd's ``AllowedCPUs`` byte array (bit n of byte n/8)."""
    if not cpus:
        return b""
    mask = bytearray(max(cpus) // 8 + 1)
    for cpu in cpus:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def mask_to_cpus(mask: bytes) -> list[int]:
    """systemd's ``AllowedCPUs`` byte array as sorted CPU numbers."""
    return [i * 8 + bit for i, byte in enumerate(mask) for bit in range(8) if byte >> bit & 1]


def to_variant(prop: str, value: Any) -> Variant:
    """A journaled (JSON) property value as the D-Bus value systemd expects."""
    signature = PROPERTY_TYPES[prop]
    if signature == "ay":
        return Variant("ay", cpus_to_mask([int(c) for c in value]))
    return Variant(signature, int(value))


def from_dbus(prop: str, value: Any) -> Any:
    """A property value read from systemd, in the journal's JSON form."""
    if PROPERTY_TYPES.get(prop) == "ay":
        return mask_to_cpus(bytes(value))
    return value


class SystemdClient:
    """Blocking calls to systemd's manager on ``address`` (default: the system bus)."""

    def __init__(self, address: str | None = None, timeout: float = 10.0) -> None:
        self.address = address or system_bus_address()
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="systemd-client",
                                        daemon=True)
        self._thread.start()
        self._bus: MessageBus | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Disconnect and stop the client's thread."""
        if self._bus is not None:
            self._loop.call_soon_threadsafe(self._bus.disconnect)
            self._bus = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except TimeoutError as exc:
            future.cancel()
            raise SystemdError("org.freedesktop.DBus.Error.Timeout",
                               f"no answer from systemd within {self.timeout} s") from exc

    async def _call(self, path: str, interface: str, member: str, signature: str,
                    body: list[Any]) -> list[Any]:
        if self._bus is None or not self._bus.connected:
            try:
                self._bus = await MessageBus(bus_address=self.address).connect()
            except (OSError, ValueError) as exc:
                raise SystemdError("org.freedesktop.DBus.Error.NoServer",
                                   f"cannot connect to {self.address}: {exc}") from exc
        reply = await self._bus.call(Message(destination=SYSTEMD, path=path,
                                             interface=interface, member=member,
                                             signature=signature, body=body))
        if reply is None:
            raise SystemdError("org.freedesktop.DBus.Error.NoReply", f"{member}: no reply")
        if reply.message_type == MessageType.ERROR:
            raise SystemdError(reply.error_name or "?", str(reply.body[0] if reply.body else ""))
        return list(reply.body)

    def call(self, member: str, signature: str = "", *body: Any,
             path: str = MANAGER_PATH, interface: str = MANAGER) -> list[Any]:
        """One method call; raises :class:`SystemdError` with systemd's error name."""
        with self._lock:
            return self._run(self._call(path, interface, member, signature, list(body)))

    def _get(self, path: str, interface: str, prop: str) -> Any:
        (variant,) = self.call("Get", "ss", interface, prop, path=path, interface=PROPERTIES)
        return variant.value

    # -- what the plugin uses -----------------------------------------------

    def unit_of(self, pid: int) -> str:
        """The system manager's unit holding process ``pid`` (e.g. ``nginx.service``)."""
        (path,) = self.call("GetUnitByPID", "u", pid)
        return str(self._get(path, f"{SYSTEMD}.Unit", "Id"))

    def processes(self, unit: str) -> list[int]:
        """Every process in ``unit``'s cgroup subtree."""
        (rows,) = self.call("GetUnitProcesses", "s", unit)
        return sorted({int(pid) for _, pid, _ in rows})

    def get(self, unit: str, prop: str) -> Any:
        """``unit``'s property ``prop`` in the journal's form (AllowedCPUs: CPU numbers).

        ``LoadUnit`` answers for any name; a unit that no longer exists (a
        stopped transient service, collected) comes back "not-found" with
        default values, which would read as someone else's change: that is
        ``NoSuchUnit`` here.
        """
        (path,) = self.call("LoadUnit", "s", unit)
        value = from_dbus(prop, self._get(path, interface_of(unit), prop))
        # Asked after the value: a stopping transient unit collected between the
        # two calls answers the value from a fresh "not-found" load.
        if self._get(path, f"{SYSTEMD}.Unit", "LoadState") == "not-found":
            raise SystemdError(f"{SYSTEMD}.NoSuchUnit", f"unit {unit} not found")
        return value

    def start_scope(self, name: str, pids: list[int], slice_: str, description: str) -> None:
        """Start transient scope ``name`` holding ``pids`` (our own children) in ``slice_``.

        ``StartTransientUnit`` queues a job; the caller waits until
        :meth:`unit_of` names the scope.  An empty scope is stopped and
        garbage-collected by systemd (``CollectMode=inactive-or-failed``).
        """
        props = [["PIDs", Variant("au", pids)], ["Slice", Variant("s", slice_)],
                 ["Description", Variant("s", description)],
                 ["CollectMode", Variant("s", "inactive-or-failed")]]
        self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", name, "fail", props, [])

    def stop(self, unit: str) -> None:
        """Stop ``unit`` and wait until systemd reports it inactive or gone.

        Raises :class:`SystemdError` (``Timeout``) if it is still active
        after the client's timeout.
        """
        try:
            self.call("StopUnit", "ss", unit, "replace")
        except SystemdError as err:
            if err.no_unit:
                return
            raise
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                (path,) = self.call("GetUnit", "s", unit)
                state = self._get(path, f"{SYSTEMD}.Unit", "ActiveState")
            except SystemdError as err:
                if err.no_unit:
                    return  # collected
                raise
            if state in ("inactive", "failed"):
                return
            if time.monotonic() > deadline:
                raise SystemdError("org.freedesktop.DBus.Error.Timeout",
                                   f"{unit} still {state} after {self.timeout} s")
            time.sleep(0.02)

    def set(self, unit: str, values: dict[str, Any]) -> None:
        """Set properties for this boot only (``runtime = true``)."""
        props = [[name, to_variant(name, value)] for name, value in values.items()]
        self.call("SetUnitProperties", "sba(sv)", unit, True, props)
