"""The D-Bus API of a real schedcpd on a private system-like bus."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.introspection import Node

from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from tests.harness import ROOT, SchedcpdProcess, bus_call

INTERFACE_FILE = ROOT / "etc" / "dbus-1" / "interfaces" / f"{MANAGER_INTERFACE}.xml"


async def call(address: str, member: str, signature: str = "", body: list | None = None,
               interface: str = MANAGER_INTERFACE, path: str = OBJECT_PATH) -> Message:
    bus = await MessageBus(bus_address=address).connect()
    try:
        return await bus_call(bus, member, signature, *(body or []), interface=interface,
                              path=path, ok=False)
    finally:
        bus.disconnect()


async def test_get_status_reports_daemon_and_caller(daemon: SchedcpdProcess) -> None:
    reply = await call(daemon.address, "GetStatus")
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    status = json.loads(reply.body[0])
    assert status["pid"] == daemon.proc.pid
    assert status["caller"]["uid"] == 0
    assert status["api_version"] == 1
    assert status["authorization"] == "config"
    assert {p["name"] for p in status["plugins"]} >= {"scheduler"}


def test_busctl_and_gdbus_can_call(daemon: SchedcpdProcess) -> None:
    out = subprocess.run(
        ["busctl", f"--address={daemon.address}", "--json=short", "call", BUS_NAME, OBJECT_PATH,
         MANAGER_INTERFACE, "GetStatus"], capture_output=True, text=True, check=True)
    status = json.loads(json.loads(out.stdout)["data"][0])
    assert status["version"]
    out = subprocess.run(
        ["gdbus", "call", "--address", daemon.address, "--dest", BUS_NAME,
         "--object-path", OBJECT_PATH, "--method", f"{MANAGER_INTERFACE}.GetStatus"],
        capture_output=True, text=True, check=True)
    # gdbus prints a GVariant tuple; its quoting depends on the text, so look for the key.
    assert out.stdout.startswith("(") and "api_version" in out.stdout
    tree = subprocess.run(["busctl", f"--address={daemon.address}", "tree", BUS_NAME],
                          capture_output=True, text=True, check=True)
    assert OBJECT_PATH in tree.stdout


async def test_properties(daemon: SchedcpdProcess) -> None:
    reply = await call(daemon.address, "Get", "ss", [MANAGER_INTERFACE, "Version"],
                       interface="org.freedesktop.DBus.Properties")
    assert reply.body[0].value
    reply = await call(daemon.address, "GetAll", "s", [MANAGER_INTERFACE],
                       interface="org.freedesktop.DBus.Properties")
    assert set(reply.body[0]) == {"Version", "Subsystems", "ActivePolicies"}
    reply = await call(daemon.address, "Set", "ssv",
                       [MANAGER_INTERFACE, "Version", Variant("s", "9")],
                       interface="org.freedesktop.DBus.Properties")
    assert reply.error_name == "org.freedesktop.DBus.Error.PropertyReadOnly"
    reply = await call(daemon.address, "Get", "ss", [MANAGER_INTERFACE, "Nope"],
                       interface="org.freedesktop.DBus.Properties")
    assert reply.error_name == "org.freedesktop.DBus.Error.UnknownProperty"
    assert "Nope" in reply.body[0]
    reply = await call(daemon.address, "Get", "ss", ["org.example.Nope", "Version"],
                       interface="org.freedesktop.DBus.Properties")
    assert reply.error_name == "org.freedesktop.DBus.Error.UnknownInterface"


async def test_shipped_interface_xml_matches_live_introspection(daemon: SchedcpdProcess) -> None:
    reply = await call(daemon.address, "Introspect",
                       interface="org.freedesktop.DBus.Introspectable")
    live = Node.parse(reply.body[0])
    live_iface = next(i for i in live.interfaces if i.name == MANAGER_INTERFACE)
    shipped = Node.parse(INTERFACE_FILE.read_text())
    assert len(shipped.interfaces) == 1
    canon = lambda iface: ET.tostring(iface.to_xml(), encoding="unicode")  # noqa: E731
    assert canon(shipped.interfaces[0]) == canon(live_iface)


@pytest.mark.parametrize(
    ("member", "signature", "body", "error"),
    [
        ("NoSuchMethod", "", [], "org.freedesktop.DBus.Error.UnknownMethod"),
        ("GetStatus", "s", ["unexpected"], "org.schedcp.Control1.Error.InvalidArgument"),
        ("GetAudit", "ss", ["10", ""], "org.schedcp.Control1.Error.InvalidArgument"),
        ("GetAudit", "us", [0, ""], "org.schedcp.Control1.Error.InvalidArgument"),
        ("GetAudit", "us", [5, "x" * (2 << 20)], "org.schedcp.Control1.Error.InvalidArgument"),
    ],
)
async def test_bad_input_gets_named_errors(daemon: SchedcpdProcess, member: str,
                                           signature: str, body: list, error: str) -> None:
    reply = await call(daemon.address, member, signature, body)
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == error
    assert "Traceback" not in reply.body[0]
    assert reply.body[0]  # a human message


async def test_unknown_interface_and_path(daemon: SchedcpdProcess) -> None:
    reply = await call(daemon.address, "GetStatus", interface="org.example.Nope")
    # The shipped bus policy already refuses interfaces the daemon does not serve.
    assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
    reply = await call(daemon.address, "GetStatus", path="/org/schedcp/Control1/nope")
    assert reply.message_type == MessageType.ERROR


async def test_burst_of_1000_calls_all_answered(daemon: SchedcpdProcess) -> None:
    bus = await MessageBus(bus_address=daemon.address).connect()
    try:
        msgs = [Message(destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
                        member=m, signature=s, body=b)
                for _ in range(500)
                for m, s, b in (("GetStatus", "", []), ("GetAudit", "us", [1, ""]))]
        import asyncio

        replies = await asyncio.gather(*(bus.call(m) for m in msgs))
        assert len(replies) == 1000
        kinds = {r.error_name if r.message_type == MessageType.ERROR else "ok" for r in replies}
        allowed = {"ok", "org.schedcp.Control1.Error.Busy",
                   "org.freedesktop.DBus.Error.LimitsExceeded"}
        assert kinds <= allowed, kinds
        assert "ok" in kinds
        # The same connection still works: nothing was dropped.
        again = await bus.call(msgs[0])
        assert again.message_type == MessageType.METHOD_RETURN
    finally:
        bus.disconnect()
    assert daemon.proc.poll() is None
