"""API declarations: no method without an action can be declared or exported."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest
from dbus_fast import MessageType

from schedcpd.api import Caller, MethodSpec, UnauthorizedMethod, collect, method
from schedcpd.dbus.bus import MessageBus
from schedcpd.manager import Manager
from schedcpd.plugins import PluginHost
from tests.harness import bus_call


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


@pytest.mark.parametrize("limit", ["max_inflight_per_connection", "max_inflight_total"])
async def test_busy_past_the_in_flight_limit(start_daemon, limit: str) -> None:
    proc = start_daemon(f"[metrics]\nenabled = false\n[bus]\n{limit} = 2\n")
    # Two connections: the overall limit counts the calls of both.
    buses = [await MessageBus(bus_address=proc.address).connect() for _ in range(2)]
    try:
        replies = await asyncio.gather(*(bus_call(bus, "GetAudit", "us", 1, "", ok=False)
                                         for _ in range(50) for bus in buses))
        kinds = [r.error_name if r.message_type == MessageType.ERROR else "ok" for r in replies]
        assert "ok" in kinds
        assert "org.schedcp.Control1.Error.Busy" in kinds
        assert set(kinds) <= {"ok", "org.schedcp.Control1.Error.Busy"}
        busy = next(r for r in replies if r.message_type == MessageType.ERROR)
        assert "retry later" in busy.body[0]
        # Both connections still work once the burst is over.
        for bus in buses:
            await bus_call(bus, "GetAudit", "us", 1, "")
    finally:
        for bus in buses:
            bus.disconnect()
    assert proc.proc.poll() is None


def test_dbus_api_doc_lists_every_member_with_its_action_and_every_error() -> None:
    from schedcpd import errors
    from tests.harness import ROOT

    doc = (ROOT / "docs" / "dbus-api.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ")]
    methods, props, signals = collect(Manager)
    for spec in methods:
        row = next((r for r in rows if f"`{spec.name}(" in r), None)
        assert row, f"{spec.name} is not in docs/dbus-api.md"
        action = spec.action.rsplit(".", 1)[1]
        assert f"| {action} |" in row, f"{spec.name}: docs do not say it needs {action}"
    for prop in props:
        row = next((r for r in rows if f"property `{prop.name}`" in r), None)
        assert row and f"| {prop.action.rsplit('.', 1)[1]} |" in row, prop.name
    for signal in signals:
        assert f"signal `{signal.name}(" in doc, signal.name
    importlib.import_module("schedcpd.tokens")  # Deploy's token errors
    todo, named = list(errors.SchedcpError.__subclasses__()), []
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        named.append(cls)
    assert len(named) > 15
    for cls in named:
        assert f"`{cls().dbus_name}`" in doc, f"{cls.name} is not in docs/dbus-api.md"
