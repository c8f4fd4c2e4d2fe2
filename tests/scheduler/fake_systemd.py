"""FAKE systemd manager on a private bus, for unit-level tests of the systemd backend.

This host has no systemd as PID 1, so the parts of org.freedesktop.systemd1
that :class:`plugins.scheduler.systemd.SystemdClient` calls are answered by
this FAKE: ``GetUnitByPID``, ``GetUnitProcesses``, ``LoadUnit``,
``SetUnitProperties``, ``StartTransientUnit`` (a scope: the FAKE unit
takes the PIDs, nothing moves; its slice and the slice's parents appear as
systemd makes them), ``GetUnit``, ``StopUnit`` (a slice goes with everything
below it) and ``Properties.Get`` of a unit's ``Id``, states and its
``CPUWeight`` / ``CPUQuotaPerSecUSec`` / ``CPUQuotaPeriodUSec`` /
``AllowedCPUs``.  Units are what the test declares (name -> pids); the FAKE
checks arguments the way systemd 252 does (weight range, known properties,
runtime flag recorded) and records every ``SetUnitProperties`` and ``StartTransientUnit`` call.  It
writes no cgroup: what systemd does with the values is proven only by the
systemd guest (docs/scheduler.md says where).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNSET = 2**64 - 1
DEFAULTS: dict[str, Any] = {"CPUWeight": UNSET, "CPUQuotaPerSecUSec": UNSET,
                            "CPUQuotaPeriodUSec": UNSET, "AllowedCPUs": b""}
SIGNATURES = {"CPUWeight": "t", "CPUQuotaPerSecUSec": "t", "CPUQuotaPeriodUSec": "t",
              "AllowedCPUs": "ay", "Id": "s", "LoadState": "s", "ActiveState": "s"}


# As systemd's own bus policy (org.freedesktop.systemd1.conf) does for root.
BUS_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.freedesktop.systemd1"/>
    <allow send_destination="org.freedesktop.systemd1"/>
  </policy>
</busconfig>
"""


def policy_dir(directory: Path, schedcp_policy_dir: Path) -> Path:
    """A bus policy directory: schedcpd's shipped policy plus systemd's rule for root."""
    directory.mkdir(parents=True, exist_ok=True)
    for conf in schedcp_policy_dir.glob("*.conf"):
        shutil.copy(conf, directory / conf.name)
    (directory / "org.freedesktop.systemd1.conf").write_text(BUS_POLICY)
    return directory


@dataclass
class FakeUnit:
    """A FAKE unit: its processes and its resource-control properties."""

    name: str
    pids: set[int]
    props: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    load_state: str = "loaded"
    slice: str = ""  # the slice it runs in ("" for units declared with add())

    @property
    def path(self) -> str:
        escaped = "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in self.name)
        return f"{MANAGER_PATH}/unit/{escaped}"


class FakeSystemd:
    """FAKE org.freedesktop.systemd1 on ``address``, served from a thread of its own."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.units: dict[str, FakeUnit] = {}
        self.calls: list[tuple[str, bool, dict[str, Any]]] = []
        self.transient: list[tuple[str, dict[str, Any]]] = []
        self.not_found: dict[str, FakeUnit] = {}
        self.stopped: list[str] = []
        self.collected: dict[str, FakeUnit] = {}  # units StopUnit removed, by name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._bus: MessageBus | None = None

    def __enter__(self) -> FakeSystemd:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bus is not None:
            self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._bus = await MessageBus(bus_address=self.address).connect()
        self._bus.add_message_handler(self._handle)
        await self._bus.request_name(NAME)

    def add(self, name: str, pids: list[int], **props: Any) -> FakeUnit:
        """Declare a unit holding ``pids`` (and non-default properties)."""
        unit = FakeUnit(name, set(pids))
        unit.props.update(props)
        self.units[name] = unit
        return unit

    def in_slice(self, name: str) -> list[FakeUnit]:
        """Units below slice ``name``: its scopes, and its child slices and theirs."""
        prefix = name.removesuffix(".slice") + "-"
        return [u for u in self.units.values()
                if u.slice == name or (u.name.endswith(".slice") and u.name.startswith(prefix))
                or u.slice.startswith(prefix)]

        # -- the bus side ---------------------------------------------------------

    def _handle(self, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.destination != NAME:
            return None
        try:
            return self._dispatch(msg)
        except KeyError as exc:
            return Message.new_error(msg, f"{NAME}.NoSuchUnit", f"Unit {exc.args[0]} not loaded.")
        except ValueError as exc:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", str(exc))

    def _by_path(self, path: str) -> FakeUnit:
        for unit in [*self.units.values(), *self.not_found.values()]:
            if unit.path == path:
                return unit
        raise KeyError(path)

    def _dispatch(self, msg: Message) -> Message:
        member, body = msg.member, msg.body
        if msg.interface == "org.freedesktop.DBus.Properties" and member == "Get":
            unit = self._by_path(msg.path or "")
            prop = body[1]
            value = {"Id": unit.name, "LoadState": unit.load_state,
                     "ActiveState": "active"}.get(prop)
            value = unit.props[prop] if value is None else value
            return Message.new_method_return(msg, "v", [Variant(SIGNATURES[prop], value)])
        if member == "GetUnitByPID":
            for unit in self.units.values():
                if body[0] in unit.pids:
                    return Message.new_method_return(msg, "o", [unit.path])
            return Message.new_error(msg, f"{NAME}.NoUnitForPID",
                                     f"PID {body[0]} does not belong to any loaded unit.")
        if member == "GetUnitProcesses":
            unit = self.units[body[0]]
            below = self.in_slice(unit.name) if unit.name.endswith(".slice") else []
            return Message.new_method_return(
                msg, "a(sus)", [[[f"/{u.name}", pid, ""]
                                 for u in [unit, *below] for pid in sorted(u.pids)]])
        if member == "GetUnit":
            return Message.new_method_return(msg, "o", [self.units[body[0]].path])
        if member == "StopUnit":
            # As systemd: stopping a slice stops everything below it; stopped
            # units without a unit file are collected at once.
            unit = self.units[body[0]]
            below = self.in_slice(unit.name) if unit.name.endswith(".slice") else []
            for gone in [unit, *below]:
                self.collected[gone.name] = self.units.pop(gone.name)
            self.stopped.append(unit.name)
            return Message.new_method_return(msg, "o", [f"{MANAGER_PATH}/job/2"])
        if member == "LoadUnit":
            # As systemd: any name loads; one without a unit is "not-found", defaults.
            unit = self.units.get(body[0]) or self.not_found.setdefault(
                body[0], FakeUnit(body[0], set(), load_state="not-found"))
            return Message.new_method_return(msg, "o", [unit.path])
        if member == "SetUnitProperties":
            name, runtime, props = body
            unit = self.units[name]
            values = {}
            for prop, variant in props:
                if prop not in DEFAULTS:
                    raise ValueError(f"Cannot set property {prop}, or unknown property.")
                if prop == "CPUWeight" and not (variant.value in (0, UNSET)
                                                or 1 <= variant.value <= 10000):
                    raise ValueError("Value specified in CPUWeight is out of range")
                values[prop] = variant.value
            unit.props.update(values)
            self.calls.append((name, runtime, values))
            return Message.new_method_return(msg)
        if member == "StartTransientUnit":
            name, _mode, props, _aux = body
            values = {prop: variant.value for prop, variant in props}
            for unit in self.units.values():  # a process is in one unit at a time
                unit.pids -= set(values.get("PIDs", []))
            self.add(name, list(values.get("PIDs", []))).slice = values.get("Slice", "")
            levels = values.get("Slice", "").removesuffix(".slice").split("-")
            for depth in range(1, len(levels) + 1):  # systemd makes the slice and its parents
                self.units.setdefault("-".join(levels[:depth]) + ".slice",
                                      FakeUnit("-".join(levels[:depth]) + ".slice", set()))
            self.transient.append((name, values))
            return Message.new_method_return(msg, "o", [f"{MANAGER_PATH}/job/1"])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", str(member))
