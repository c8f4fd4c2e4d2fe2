"""API declarations: no method without an action can be declared or exported."""

from __future__ import annotations

import asyncio
import json

import pytest
from dbus_fast import Message, MessageType

from schedcpd.api import Caller, MethodSpec, UnauthorizedMethod, collect, method
from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from schedcpd.manager import Manager
from schedcpd.plugins import PluginHost


def test_method_without_valid_action_cannot_be_declared() -> None:
    with pytest.raises(UnauthorizedMethod):
        method("")
    with pytest.raises(UnauthorizedMethod):
        method("org.schedcp.everything")


def test_hand_built_method_without_action_cannot_be_exported() -> None:
    class Sneaky:
        def Backdoor(self, caller: Caller) -> str:
            return "root shell"

        Backdoor.__schedcp_method__ = MethodSpec(  # type: ignore[attr-defined]
            name="Backdoor", action="", in_args=(), out_args=(("x", "s"),), mutating=True,
            doc="", attr="Backdoor", is_async=False)

    with pytest.raises(UnauthorizedMethod):
        collect(Sneaky())


def test_every_manager_method_has_an_action_and_docstring() -> None:
    methods, props, _ = collect(Manager)
    assert methods and props
    for spec in methods:
        assert spec.action.startswith("org.schedcp.")
        assert spec.doc, f"{spec.name} has no docstring"


def test_engine_runs_without_a_bus() -> None:
    manager = Manager(PluginHost(builtins={}, load_entry_points=False))
    status = json.loads(manager.GetStatus(Caller(uid=1000, pid=1, sender="local")))
    assert status["caller"] == {"uid": 1000, "pid": 1}


async def test_busy_past_the_in_flight_limit(start_daemon) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\nmax_inflight_per_connection = 2\n")
    bus = await MessageBus(bus_address=proc.address).connect()
    try:
        replies = await asyncio.gather(*(bus.call(Message(
            destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
            member="GetAudit", signature="us", body=[1, ""])) for _ in range(100)))
        kinds = [r.error_name if r.message_type == MessageType.ERROR else "ok" for r in replies]
        assert "ok" in kinds
        assert "org.schedcp.Control1.Error.Busy" in kinds
        assert set(kinds) <= {"ok", "org.schedcp.Control1.Error.Busy"}
        busy = next(r for r in replies if r.message_type == MessageType.ERROR)
        assert "retry later" in busy.body[0]
    finally:
        bus.disconnect()
