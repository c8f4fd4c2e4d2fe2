"""A small asynchronous client of the Manager API (``schedcpctl`` uses it).

Calls return the daemon's answer or raise :class:`CallFailed` with the
D-Bus error name; :meth:`Client.subscribe` queues the Manager's signals
(``DeploymentChanged``) from the moment it returns, so a caller subscribes
before it acts and misses nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dbus_fast import Message, MessageType

from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus

DBUS = "org.freedesktop.DBus"


class CallFailed(Exception):
    """The daemon (or the bus) answered with an error; ``name`` is the D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name


class Client:
    """Calls to ``org.schedcp.Control1.Manager`` over one bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(self, member: str, signature: str = "", *body: Any) -> Any:
        """Call a Manager method; return its result (a list when it has several)."""
        reply = await self.bus.call(Message(
            destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
            member=member, signature=signature, body=list(body),
        ))
        if reply is None:
            raise CallFailed(f"{DBUS}.Error.NoReply", "no reply")
        if reply.message_type == MessageType.ERROR:
            raise CallFailed(reply.error_name or "", reply.body[0] if reply.body else "")
        if len(reply.body) > 1:
            return list(reply.body)
        return reply.body[0] if reply.body else None

    async def call_json(self, member: str, signature: str = "", *body: Any) -> Any:
        """Call a method that returns JSON text and decode it."""
        return json.loads(await self.call(member, signature, *body))

    async def subscribe(self, member: str) -> asyncio.Queue[list[Any]]:
        """Queue the body of every ``member`` signal the daemon emits from now on."""
        queue: asyncio.Queue[list[Any]] = asyncio.Queue()

        def on_message(msg: Message) -> None:
            if (msg.message_type == MessageType.SIGNAL and msg.path == OBJECT_PATH
                    and msg.interface == MANAGER_INTERFACE and msg.member == member):
                queue.put_nowait(list(msg.body))

        self.bus.add_message_handler(on_message)
        reply = await self.bus.call(Message(
            destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS, member="AddMatch",
            signature="s", body=[f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',"
                                 f"interface='{MANAGER_INTERFACE}',member='{member}'"]))
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise CallFailed(reply.error_name or "", reply.body[0] if reply.body else "")
        return queue
