"""Calls to schedcpd over D-Bus for the schedcp.fleet modules.

The modules run with the target host's Python, where schedcpd is installed:
they use schedcp's own client (``schedcpd.dbus.client``, the one
``schedcpctl`` uses), so a D-Bus error reaches the task by its name
(``org.schedcp.Control1.Error.UnknownKey``) and answers are the daemon's
JSON, unparsed by any text tool.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    from schedcpd.dbus.bus import bus_from_spec
    from schedcpd.dbus.client import CallFailed, Client
except ImportError as err:  # reported by the module as a task failure
    IMPORT_ERROR: ImportError | None = err

    class CallFailed(Exception):  # type: ignore[no-redef]
        """Stands in for schedcp's (never raised: the modules stop before any call)."""

        name = ""
else:
    IMPORT_ERROR = None

ERR = "org.schedcp.Control1.Error."
SETTLED = ("active", "reverted", "failed")
"""Deployment states that do not change by themselves."""

BUS_ARGUMENT = {"type": "str", "default": "system"}
"""The modules' ``bus_address``: ``system``, ``session`` or a D-Bus address."""

T = TypeVar("T")


class DaemonError(Exception):
    """A call failed; ``name`` is the D-Bus error name (or a local one)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


def missing_client() -> str | None:
    """Why schedcp's client cannot be imported here, or None when it can."""
    if IMPORT_ERROR is None:
        return None
    return (f"schedcp is not importable by this host's Python ({IMPORT_ERROR}); run the "
            "module with the interpreter schedcpd is installed for (ansible_python_interpreter)")


def run(bus_address: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to ``bus_address``, run ``work(client)``, disconnect; its result.

    A failed call raises :class:`DaemonError` with the D-Bus error name.
    """
    async def main() -> T:
        try:
            bus = await bus_from_spec(bus_address).connect()
        except Exception as err:
            raise DaemonError("connect", f"cannot connect to the {bus_address} bus: {err}") \
                from err
        try:
            return await work(Client(bus))
        except CallFailed as err:
            raise DaemonError(err.name, str(err)) from err
        finally:
            bus.disconnect()

    return asyncio.run(main())


async def wait_settled(client: Client, dep_id: str, timeout: float,
                       interval: float = 0.5) -> dict[str, Any]:
    """Poll ``GetDeployment`` until ``dep_id`` settles or ``timeout`` s pass; its record."""
    deadline = time.monotonic() + timeout
    while True:
        dep: dict[str, Any] = await client.call_json("GetDeployment", "s", dep_id)
        if dep["state"] in SETTLED or time.monotonic() >= deadline:
            return dep
        await asyncio.sleep(interval)


async def deployment_of_token(client: Client, token: str, policy_id: str
                              ) -> dict[str, Any] | None:
    """The deployment of ``policy_id`` on this host that redeemed ``token``, if any.

    ``ListDeployments`` does not carry the token: each of the policy's
    deployments is read for its token's SHA-256.
    """
    digest = hashlib.sha256(token.encode()).hexdigest()
    for listed in json.loads(await client.call("ListDeployments")):
        if listed["policy_id"] != policy_id:
            continue
        dep: dict[str, Any] = await client.call_json("GetDeployment", "s", listed["id"])
        if (dep.get("token") or {}).get("digest") == digest:
            return dep
    return None


def summary(dep: dict[str, Any]) -> dict[str, Any]:
    """The parts of a deployment record a task returns."""
    return {
        "deployment_id": dep["id"], "state": dep["state"], "reason": dep.get("reason", ""),
        "policy_id": dep.get("policy_id", ""), "policy_name": dep.get("name", ""),
        "trip": dep.get("trip") or {}, "breaker_tripped": bool(dep.get("trip")),
        "events": [{"state": e["state"], "reason": e["reason"]} for e in dep.get("events", [])],
    }
