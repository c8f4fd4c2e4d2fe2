"""The MCP server's one connection to schedcpd, made when first needed.

The server is a D-Bus client like any other: it calls the methods of the
tool table with the user's own identity and the daemon decides.  The
connection is made lazily and made again after the bus dropped it, so the
server starts (and answers with a clear error) while the daemon or the bus
is down.  A hold (``HoldDeployment``) lives as long as this connection: for
the stdio transport, as long as the MCP client keeps the server running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schedcp_agent.client import DaemonError, SchedcpClient, decode
from schedcp_agent.tools import Tool

_LOGGER = logging.getLogger(__name__)


class Unreachable(Exception):
    """The bus could not be reached (no daemon answer at all)."""


class Daemon:
    """Calls to schedcpd on ``bus`` (``system``, ``session`` or an address)."""

    def __init__(self, bus: str = "system") -> None:
        self.bus = bus
        self._client: SchedcpClient | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> SchedcpClient:
        """The connected client; connects (again) when there is none or it dropped."""
        async with self._lock:
            if self._client is not None and not self._client.connected:
                _LOGGER.warning("the D-Bus connection to %s dropped; reconnecting "
                                "(holds of the old connection were released)", self.bus)
                self._client.close()
                self._client = None
            if self._client is None:
                try:
                    self._client = await SchedcpClient(self.bus).connect()
                except Exception as err:  # OSError, auth failure, bad address
                    raise Unreachable(f"cannot connect to the D-Bus bus {self.bus!r}: "
                                      f"{type(err).__name__}: {err}") from err
            return self._client

    async def call(self, t: Tool, body: list[Any]) -> Any:
        """Call ``t`` with a checked D-Bus body; the decoded answer.

        Raises :class:`DaemonError` for a named D-Bus error (the daemon's
        refusal, or the bus's when no daemon owns the name) and
        :class:`Unreachable` when the bus cannot be reached.
        """
        client = await self.client()
        try:
            return decode(t, await client.call_raw(t, body))
        except DaemonError:
            raise
        except Exception as err:  # the bus went away during the call
            raise Unreachable(f"{t.name}: the D-Bus connection failed: "
                              f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Disconnect (the daemon releases this connection's holds)."""
        if self._client is not None:
            self._client.close()
            self._client = None


def explain(err: DaemonError) -> str:
    """A daemon error as one line for an MCP client, with a hint for the common ones."""
    text = f"{err.method} refused: {err.name}: {err.message}"
    if err.name == "org.freedesktop.DBus.Error.ServiceUnknown":
        text += " (schedcpd is not running on this bus)"
    elif err.short == "AccessDenied":
        text += (" (schedcpd decides by the uid this MCP server runs as; see "
                 "docs/dbus-api.md, Authorization)")
    return text
