"""The agent's only way to the host: D-Bus calls to schedcpd, from the tool table.

Uses the project's EAGAIN-safe dbus-fast bus (:mod:`schedcpd.dbus.bus`).
Every call names a tool of :data:`schedcp_agent.tools.TOOLS`; arguments are
sent in the declared order with the declared signature and JSON answers are
parsed.  A D-Bus error becomes :class:`DaemonError` with the error's name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType

from schedcp_agent.tools import Tool, tool
from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus, bus_from_spec

_LOGGER = logging.getLogger(__name__)

ACCESS_DENIED = "org.schedcp.Control1.Error.AccessDenied"
BUSY = "org.schedcp.Control1.Error.Busy"
_BUSY_RETRIES = 5


class DaemonError(Exception):
    """schedcpd answered a call with a named D-Bus error."""

    def __init__(self, method: str, name: str, message: str) -> None:
        super().__init__(f"{method}: {name}: {message}")
        self.method = method
        self.name = name
        self.message = message

    @property
    def short(self) -> str:
        """The error name without the interface prefix (``AccessDenied``)."""
        return self.name.rsplit(".", 1)[-1]


class SchedcpClient:
    """A connection to schedcpd; ``await call("GetSummary", detail="brief")``."""

    def __init__(self, bus: str = "system") -> None:
        self.spec = bus
        self._bus: MessageBus | None = None
        self.calls: list[str] = []
        self._signal_handlers: list[Callable[[str, str, str], None]] = []

    async def connect(self) -> SchedcpClient:
        """Connect to the bus (``system``, ``session`` or an address)."""
        self._bus = await bus_from_spec(self.spec).connect()
        return self

    def close(self) -> None:
        """Disconnect (the daemon releases this connection's holds)."""
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def __aenter__(self) -> SchedcpClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the bus connection is up (it drops when the bus goes away)."""
        return self._bus is not None and bool(self._bus.connected)

    @property
    def unique_name(self) -> str:
        """This connection's unique bus name."""
        assert self._bus is not None
        return str(self._bus.unique_name)

    async def call_raw(self, t: Tool, body: list[Any]) -> list[Any]:
        """Call ``t`` with a D-Bus body; return the reply body (retrying on Busy)."""
        assert self._bus is not None, "not connected"
        self.calls.append(t.name)
        for attempt in range(_BUSY_RETRIES + 1):
            reply = await self._bus.call(Message(
                destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
                member=t.name, signature=t.signature, body=body))
            assert reply is not None
            if reply.message_type != MessageType.ERROR:
                return list(reply.body)
            name = reply.error_name or "unknown"
            text = str(reply.body[0]) if reply.body else ""
            if name == BUSY and attempt < _BUSY_RETRIES:
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            raise DaemonError(t.name, name, text)
        raise AssertionError("unreachable")

    async def call(self, name: str, *args: Any) -> Any:
        """Call tool ``name`` with positional arguments; JSON answers are parsed.

        One result comes back as itself, several as a list, none as None.
        """
        t = tool(name)
        if len(args) != len(t.args):
            raise TypeError(f"{name} takes {len(t.args)} arguments, got {len(args)}")
        out = decode(t, await self.call_raw(t, list(args)))
        return out

    async def watch_deployments(self, handler: Callable[[str, str, str], None]) -> None:
        """Call ``handler(id, state, reason)`` for each DeploymentChanged signal."""
        assert self._bus is not None
        if not self._signal_handlers:
            rule = (f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',"
                    f"member='DeploymentChanged'")
            await self._bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                body=[rule]))
            self._bus.add_message_handler(self._on_message)
        self._signal_handlers.append(handler)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member == "DeploymentChanged" and \
                len(msg.body) == 3:
            for handler in self._signal_handlers:
                try:
                    handler(*[str(b) for b in msg.body])
                except Exception:  # a handler bug must not kill the bus reader
                    _LOGGER.exception("DeploymentChanged handler failed")


def decode(t: Tool, body: list[Any]) -> Any:
    """Parse the JSON parts of a reply body as the tool declares them."""
    values = [json.loads(v) if i < len(t.json_out) and t.json_out[i] and isinstance(v, str)
              and v else v for i, v in enumerate(body)]
    if not values:
        return None
    return values[0] if len(values) == 1 else values
