"""Who is calling: caller credentials from the bus, cached per connection.

The uid and pid come from ``org.freedesktop.DBus.GetConnectionCredentials``
for the message's sender, never from the call's arguments.  A unique name is
never reused during a bus's life, so the answer is cached until the bus says
the connection is gone (``NameOwnerChanged``), when listeners (holds,
probes) are told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dbus_fast import Message, MessageType

from schedcpd.api import Caller
from schedcpd.dbus.bus import MessageBus

_LOGGER = logging.getLogger(__name__)

DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"


def dbus_call(member: str, signature: str = "", body: list[object] | None = None) -> Message:
    """A method call to the bus daemon itself."""
    return Message(
        destination=DBUS, path=DBUS_PATH, interface=DBUS, member=member,
        signature=signature, body=body or [],
    )


class CallerResolver:
    """Resolve and cache the credentials of bus connections."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._cache: dict[str, Caller] = {}
        self._pending: dict[str, asyncio.Future[Caller]] = {}
        self._gone_listeners: list[Callable[[str], None]] = []
        self._owner_listeners: list[Callable[[str, str], None]] = []

    async def start(self) -> None:
        """Subscribe to NameOwnerChanged so the cache follows the bus."""
        self._bus.add_message_handler(self._on_signal)
        rule = (
            f"type='signal',sender='{DBUS}',interface='{DBUS}',"
            f"member='NameOwnerChanged',path='{DBUS_PATH}'"
        )
        await self._bus.call(dbus_call("AddMatch", "s", [rule]))

    def on_gone(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(unique_name)`` when a connection leaves the bus."""
        self._gone_listeners.append(listener)

    def on_owner_changed(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(name, new_owner)`` when a well-known name changes owner."""
        self._owner_listeners.append(listener)

    def cached(self, sender: str) -> Caller | None:
        """The cached identity of ``sender``, without asking the bus."""
        return self._cache.get(sender)

    async def resolve(self, sender: str) -> Caller:
        """The identity of ``sender``; asks the bus once per connection."""
        if (caller := self._cache.get(sender)) is not None:
            return caller
        if (fut := self._pending.get(sender)) is not None:
            return await fut
        fut = asyncio.get_running_loop().create_future()
        self._pending[sender] = fut
        try:
            reply = await self._bus.call(
                dbus_call("GetConnectionCredentials", "s", [sender])
            )
            if reply is None or reply.message_type != MessageType.METHOD_RETURN:
                raise LookupError(f"no credentials for {sender}: {reply and reply.body}")
            creds = reply.body[0]
            caller = Caller(
                uid=int(creds["UnixUserID"].value),
                pid=int(creds["ProcessID"].value) if "ProcessID" in creds else -1,
                sender=sender,
                gids=frozenset(int(g) for g in creds["UnixGroupIDs"].value)
                if "UnixGroupIDs" in creds else None,
            )
            self._cache[sender] = caller
            fut.set_result(caller)
            return caller
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[sender]

    def _on_signal(self, msg: Message) -> None:
        if (
            msg.message_type is not MessageType.SIGNAL
            or msg.member != "NameOwnerChanged"
            or msg.sender != DBUS
        ):
            return
        name, _old, new = msg.body
        if not name.startswith(":"):
            for owner_listener in self._owner_listeners:
                owner_listener(name, new)
            return
        if new:
            return
        self._cache.pop(name, None)
        for listener in self._gone_listeners:
            try:
                listener(name)
            except Exception:
                _LOGGER.exception("connection-gone listener failed for %s", name)
