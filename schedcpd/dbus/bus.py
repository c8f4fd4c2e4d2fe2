"""A dbus-fast message bus that survives a full socket buffer.

dbus-fast's asyncio writer treats ``EAGAIN`` from ``send()`` as a fatal
error and drops the connection (the same bug as python-dbus-next issue
#153, still open).  A burst of a few hundred replies fills the socket
buffer and did exactly that here.  Wrapping the connection's socket so that
``EAGAIN`` reads as "0 bytes sent" makes the writer do what it already does
for a short write: keep the rest and wait until the socket is writable.
"""

from __future__ import annotations

import socket
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus as _AioMessageBus


class _EagainSafeSocket:
    """Proxy of a non-blocking socket whose ``send`` reports EAGAIN as 0 bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class MessageBus(_AioMessageBus):
    """``dbus_fast.aio.MessageBus`` with the EAGAIN-safe writer."""

    async def connect(self) -> MessageBus:
        """Connect and authenticate, then harden the writer."""
        await super().connect()
        writer = self._writer
        assert writer is not None and writer.sock is not None
        if not isinstance(writer.sock, _EagainSafeSocket):
            writer.sock = _EagainSafeSocket(writer.sock)  # type: ignore[assignment]
        return self


def bus_from_spec(spec: str) -> MessageBus:
    """A bus for ``system``, ``session`` or a D-Bus address like ``unix:path=...``."""
    if spec == "system":
        return MessageBus(bus_type=BusType.SYSTEM)
    if spec == "session":
        return MessageBus(bus_type=BusType.SESSION)
    return MessageBus(bus_address=spec)
