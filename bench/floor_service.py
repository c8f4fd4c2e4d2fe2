"""The floor: a minimal dbus-fast service answering one constant string.

Run by bench/dbus_latency.py on the same private bus as schedcpd, so the
two are measured side by side with the same client and the same bus.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

NAME = "org.schedcp.BenchFloor"
PATH = "/org/schedcp/BenchFloor"


class Floor(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NAME)

    @method()
    def Get(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return '{"status":"ok"}'


async def main(address: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    bus.export(PATH, Floor())
    await bus.request_name(NAME)
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
