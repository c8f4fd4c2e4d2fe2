"""Run a list of Manager calls and print each outcome as JSON (run as any user).

    python tests/client_probe.py ADDRESS '[["GetStatus", "", []], ...]'

Prints a JSON list: {"ok": result} or {"error": name, "message": text} per
call.  Tests run it as other users to check authorization with real uids.
"""

from __future__ import annotations

import asyncio
import json
import sys

from dbus_fast import Message, MessageType, Variant

from schedcpd.const import BUS_NAME, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus


def _plain(value: object) -> object:
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def run_calls(address: str, calls: list[list[object]]) -> list[dict[str, object]]:
    """Make ``calls`` on one connection; each outcome as {"ok": ...} or {"error": ...}."""
    bus = await MessageBus(bus_address=address).connect()
    out: list[dict[str, object]] = []
    for call in calls:
        member, signature, body = call[0], call[1], call[2]
        interface = call[3] if len(call) > 3 else "org.schedcp.Control1.Manager"
        reply = await bus.call(Message(
            destination=BUS_NAME, path=OBJECT_PATH, interface=interface,  # type: ignore[arg-type]
            member=member, signature=signature, body=body,  # type: ignore[arg-type]
        ))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            out.append({"error": reply.error_name, "message": reply.body[0] if reply.body else ""})
        else:
            body = [_plain(b) for b in reply.body]
            out.append({"ok": body[0] if len(body) == 1 else (body or None)})
    bus.disconnect()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_calls(sys.argv[1], json.loads(sys.argv[2])))))
