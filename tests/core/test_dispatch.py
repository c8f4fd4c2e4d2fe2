"""The dispatcher on a real private bus with engine methods that misbehave.

The service (schedcpd.dbus.service) runs in the test process around a small
engine class of the test's own, so the test can make a method raise, return
the wrong type or hang: each must come back as a named error with a human
message, never a traceback, and the service must go on answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply

from schedcpd import config
from schedcpd.api import Caller, MethodSpec, UnauthorizedMethod, method
from schedcpd.authz import Authorizer
from schedcpd.const import ACTION_OBSERVE, BUS_NAME
from schedcpd.dbus.bus import MessageBus
from schedcpd.dbus.identity import CallerResolver
from schedcpd.dbus.service import ManagerService
from schedcpd.errors import NotFound
from schedcpd.metrics import Metrics
from tests.harness import PrivateBus, bus_call

ERR = "org.schedcp.Control1.Error."


class Engine:
    """Methods that fail in every way an engine method can."""

    @method(ACTION_OBSERVE, out_args=(("x", "s"),))
    def Explode(self, caller: Caller) -> str:
        """Raise an unexpected exception."""
        raise ValueError("secret internal detail")

    @method(ACTION_OBSERVE, out_args=(("x", "s"),))
    async def ExplodeLater(self, caller: Caller) -> str:
        """Raise an unexpected exception after an await."""
        await asyncio.sleep(0)
        raise KeyError("secret internal detail")

    @method(ACTION_OBSERVE, out_args=(("x", "s"),))
    def WrongType(self, caller: Caller) -> Any:
        """Return an integer where a string is declared."""
        return 42

    @method(ACTION_OBSERVE, out_args=(("x", "s"),))
    async def Hang(self, caller: Caller) -> str:
        """Take longer than the call timeout."""
        await asyncio.sleep(60)
        return "late"

    @method(ACTION_OBSERVE, in_args=(("name", "s"),), out_args=(("x", "s"),))
    def Find(self, caller: Caller, name: str) -> str:
        """Raise a named error."""
        raise NotFound(f"no object named {name!r}")

    @method(ACTION_OBSERVE, out_args=(("uid", "u"),))
    def WhoAmI(self, caller: Caller) -> int:
        """Answer normally."""
        return caller.uid


async def _service(address: str, engine: object) -> tuple[MessageBus, ManagerService]:
    bus = await MessageBus(bus_address=address).connect()
    resolver = CallerResolver(bus)
    await resolver.start()
    defaults = config.defaults()
    service = ManagerService(bus, engine, resolver, Authorizer(defaults["authorization"]),
                             Metrics(), None, {**defaults["bus"], "call_timeout_seconds": 0.5})
    service.export()
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    assert reply == RequestNameReply.PRIMARY_OWNER
    return bus, service


@pytest.fixture
async def client(fresh_bus: PrivateBus) -> AsyncIterator[MessageBus]:
    bus, service = await _service(fresh_bus.address, Engine())
    cli = await MessageBus(bus_address=fresh_bus.address).connect()
    yield cli
    cli.disconnect()
    await service.close()
    bus.disconnect()


async def _call(bus: MessageBus, member: str, signature: str = "",
                body: list[Any] | None = None) -> Message:
    # Bounded: a reply the service fails to send must fail the test, not hang it.
    return await bus_call(bus, member, signature, *(body or []), ok=False)


@pytest.mark.parametrize(
    ("member", "error"),
    [("Explode", "Internal"), ("ExplodeLater", "Internal"), ("WrongType", "Internal"),
     ("Hang", "Timeout")],
)
async def test_failures_become_named_errors_without_traceback(
        client: MessageBus, member: str, error: str) -> None:
    # Twice: the first call resolves the caller (task path), the second is
    # answered from the cache (the synchronous fast path for sync methods).
    for _ in range(2):
        reply = await _call(client, member)
        assert reply.message_type == MessageType.ERROR
        assert reply.error_name == ERR + error, reply.body
        text = reply.body[0]
        assert text and member in text
        assert "Traceback" not in text and "secret internal detail" not in text
    # The service is still there and the connection still works.
    ok = await _call(client, "WhoAmI")
    assert ok.message_type == MessageType.METHOD_RETURN and ok.body == [0]


async def test_named_engine_errors_pass_through(client: MessageBus) -> None:
    reply = await _call(client, "Find", "s", ["zz"])
    assert reply.error_name == ERR + "NotFound"
    assert reply.body == ["no object named 'zz'"]


def test_a_method_without_action_is_not_exported() -> None:
    class Sneaky(Engine):
        def Backdoor(self, caller: Caller) -> str:
            return "root shell"

        Backdoor.__schedcp_method__ = MethodSpec(  # type: ignore[attr-defined]
            name="Backdoor", action="", in_args=(), out_args=(("x", "s"),), mutating=True,
            doc="", attr="Backdoor", is_async=False)

    defaults = config.defaults()
    with pytest.raises(UnauthorizedMethod):
        ManagerService(None, Sneaky(), None, Authorizer(defaults["authorization"]),  # type: ignore[arg-type]
                       Metrics(), None, defaults["bus"])
