"""A polkit client: ``CheckAuthorization`` for a bus caller.

polkit is used when ``org.freedesktop.PolicyKit1`` is on the bus or can be
activated there; its presence is tracked through ``NameOwnerChanged`` so a
polkitd that starts or stops later is noticed.  The subject is the caller's
unique bus name (``system-bus-name``), which polkit resolves itself; no
pid-based subject, so no pid-reuse race.
"""

from __future__ import annotations

import asyncio
import logging

from dbus_fast import Message, MessageType, Variant

from schedcpd.api import Caller
from schedcpd.dbus.bus import MessageBus
from schedcpd.dbus.identity import CallerResolver, dbus_call

_LOGGER = logging.getLogger(__name__)

POLKIT = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY = "org.freedesktop.PolicyKit1.Authority"
_TIMEOUT = 10.0


class PolkitClient:
    """Ask polkit whether a bus caller may perform an action."""

    def __init__(self, bus: MessageBus, resolver: CallerResolver) -> None:
        self._bus = bus
        self._owned = False
        self._activatable = False
        resolver.on_owner_changed(self._on_owner_changed)

    async def start(self) -> None:
        """Find out whether polkit is present or activatable."""
        owned = await self._bus.call(dbus_call("NameHasOwner", "s", [POLKIT]))
        self._owned = bool(owned and owned.message_type == MessageType.METHOD_RETURN
                           and owned.body[0])
        names = await self._bus.call(dbus_call("ListActivatableNames"))
        self._activatable = bool(names and names.message_type == MessageType.METHOD_RETURN
                                 and POLKIT in names.body[0])
        _LOGGER.info("polkit %s", "available" if self.available else "not on the bus")

    @property
    def available(self) -> bool:
        """Whether polkit can be asked now."""
        return self._owned or self._activatable

    def _on_owner_changed(self, name: str, new_owner: str) -> None:
        if name == POLKIT:
            self._owned = bool(new_owner)
            _LOGGER.info("polkit %s the bus", "joined" if new_owner else "left")

    async def check(self, caller: Caller, action: str) -> bool:
        """True when polkit authorizes ``caller`` for ``action`` (no interaction)."""
        subject = ["system-bus-name", {"name": Variant("s", caller.sender)}]
        msg = Message(
            destination=POLKIT, path=AUTHORITY_PATH, interface=AUTHORITY,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[subject, action, {}, 0, ""],
        )
        reply = await asyncio.wait_for(self._bus.call(msg), _TIMEOUT)
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise RuntimeError(f"{reply.error_name if reply else 'no reply'}")
        is_authorized, _is_challenge, _details = reply.body[0]
        return bool(is_authorized)
