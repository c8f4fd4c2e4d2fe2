"""Calls refused before dispatch leave audit rows, and a flood of them stays bounded (#24).

A wrong signature, arguments over ``max_argument_bytes``, ``Busy``, a member
or an interface the object does not have: each refusal is recorded with the
caller's uid and pid, the member and the reason.  Anyone may send them at any
rate, so only so many per minute get a row of their own (the rest are summed
up in one ``suppressed`` row) and only the newest ``refused_audit_rows_kept``
are kept.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply

from schedcpd import config
from schedcpd.audit import (
    SUPPRESSED,
    AuditLog,
    AuditRecord,
    RefusalLimiter,
)
from schedcpd.authz import Authorizer
from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from schedcpd.dbus.identity import CallerResolver
from schedcpd.dbus.service import ManagerService
from schedcpd.metrics import Metrics
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from tests.core.test_dispatch import Engine
from tests.harness import PrivateBus, calls_as, poll_async

ERR = "org.schedcp.Control1.Error."
MGR = MANAGER_INTERFACE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_gives_rows_per_window_and_per_connection_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = RefusalLimiter(12, window=60, clock=clock, wall=lambda: 1.7e9)
    assert limiter.per_sender == 2
    flood = [limiter.admit(":1.1", ERR + "Busy") for _ in range(100)]
    assert flood[:2] == [True, True] and not any(flood[2:])
    # Another connection still gets rows of its own: one flooder hides no one.
    assert [limiter.admit(f":1.{i}", ERR + "InvalidArgument") for i in range(2, 7)] == [True] * 5
    assert all(limiter.admit(f":1.{i}", ERR + "InvalidArgument") for i in range(2, 7))
    assert not limiter.admit(":1.99", ERR + "InvalidArgument")  # 12 rows this window
    assert limiter.suppressing and limiter.due() == []  # the window has not ended
    clock.now += 60
    [window] = limiter.due()
    assert window.count == 99
    rec = window.record()
    assert rec.result == SUPPRESSED and rec.uid == -1
    assert "99 calls refused" in rec.detail and "98 Busy" in rec.detail
    assert "1 InvalidArgument" in rec.detail and ":1.1 98" in rec.detail
    assert not limiter.suppressing and limiter.due() == []
    assert limiter.admit(":1.1", ERR + "Busy")  # a new window


def test_a_suppressed_row_counts_at_most_a_bounded_number_of_connections() -> None:
    clock = Clock()
    limiter = RefusalLimiter(1, clock=clock)
    for i in range(5000):
        limiter.admit(f":1.{i}", ERR + "Busy")
    clock.now += 60
    [window] = limiter.due()
    assert window.count == 4999 and len(window.by_sender) <= 256


async def test_refused_rows_are_pruned_to_the_newest_kept_and_no_others(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "schedcpd.db", MIGRATIONS)
    try:
        log = AuditLog(store)

        def rec(method: str, result: str = ERR + "InvalidArgument") -> AuditRecord:
            return AuditRecord(uid=0, pid=1, sender=":1.1", method=method, args_digest="",
                               result=result)

        await log.record(rec("Reload", "ok"))
        for i in range(30):
            await log.record_refused(rec(f"Bad{i}"), keep=10)
        await log.record(rec("Deploy", "ok"))
        rows = await log.recent(100)
        assert [r["method"] for r in rows if r["before_dispatch"]] == [
            f"Bad{i}" for i in range(29, 19, -1)]
        assert {r["method"] for r in rows if not r["before_dispatch"]} == {"Reload", "Deploy"}
    finally:
        store.close()


# -- the dispatcher in this process (a window short enough to wait out) --------------


@pytest.fixture
async def audited(fresh_bus: PrivateBus, tmp_path: Path
                  ) -> AsyncIterator[tuple[MessageBus, ManagerService, AuditLog]]:
    store = StateStore(tmp_path / "schedcpd.db", MIGRATIONS)
    audit = AuditLog(store)
    bus = await MessageBus(bus_address=fresh_bus.address).connect()
    resolver = CallerResolver(bus)
    await resolver.start()
    defaults = config.defaults()
    service = ManagerService(
        bus, Engine(), resolver, Authorizer(defaults["authorization"]), Metrics(), audit,
        {**defaults["bus"], "call_timeout_seconds": 0.5, "max_inflight_per_connection": 1,
         "refused_audit_rows_per_minute": 6})
    service._refusals = RefusalLimiter(6, window=1.0)  # wait out a window of 1 s
    service.export()
    assert await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE) \
        == RequestNameReply.PRIMARY_OWNER
    cli = await MessageBus(bus_address=fresh_bus.address).connect()
    yield cli, service, audit
    cli.disconnect()
    await service.close()
    bus.disconnect()
    store.close()


def _msg(member: str, signature: str = "", body: list[Any] | None = None,
         interface: str = MGR) -> Message:
    return Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface, member=member,
                   signature=signature, body=body or [])


async def _rows(audit: AuditLog, want: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The refusal rows, once there are at least ``want`` of them."""
    async def rows() -> list[dict[str, Any]]:
        return [r for r in await audit.recent(1000) if r["before_dispatch"]]

    return await poll_async(rows, lambda got: len(got) >= want, timeout)


async def test_busy_is_audited_and_a_flood_is_summed_up_in_one_row(
        audited: tuple[MessageBus, ManagerService, AuditLog]) -> None:
    cli, _service, audit = audited
    # One call in flight per connection: the second Hang is refused with Busy.
    replies = await asyncio.gather(cli.call(_msg("Hang")), cli.call(_msg("Hang")))
    assert sorted(str(r.error_name) for r in replies if r) == [ERR + "Busy", ERR + "Timeout"]
    [row] = await _rows(audit, 1)
    assert (row["method"], row["result"], row["uid"]) == ("Hang", ERR + "Busy", 0)
    assert "too many calls in flight" in row["detail"] and row["pid"] > 0
    # 50 more refusals from this connection: at most one row of its own per
    # window (1 per connection here), the rest summed up in a suppressed row
    # when the window ends, although no refusal follows to trigger it.
    flood = await asyncio.gather(*(cli.call(_msg("Find", "i", [7])) for _ in range(50)))
    assert {r.error_name for r in flood if r} == {ERR + "InvalidArgument"}

    def accounted(rows: list[dict[str, Any]]) -> int:
        own = sum(r["method"] == "Find" for r in rows)
        counts = [re.match(r"(\d+) calls refused", r["detail"])
                  for r in rows if r["result"] == SUPPRESSED]
        return own + sum(int(m[1]) for m in counts if m)

    rows = await poll_async(lambda: _rows(audit, 0), lambda got: accounted(got) >= 50, 10)
    assert accounted(rows) == 50, rows
    summaries = [r for r in rows if r["result"] == SUPPRESSED]
    assert summaries and all("InvalidArgument" in r["detail"] for r in summaries), rows
    assert sum(r["method"] == "Find" for r in rows) <= len(summaries) + 1, rows
    assert [r["result"] for r in rows].count(ERR + "Busy") == 1


# -- the real daemon, real users ---------------------------------------------------------


def test_refusals_before_dispatch_name_the_caller_member_and_reason(
        start_daemon, test_users: dict[str, int]) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\nmax_argument_bytes = 1000\n")
    calls: list[list[Any]] = [["GetDeployment", "i", [1], MGR],  # wrong signature
             ["GetPolicy", "s", ["x" * 2000], MGR],  # over max_argument_bytes
             ["NoSuchMethod", "", [], MGR],
             ["Set", "", [], "org.freedesktop.DBus.Properties"],
             ["Anything", "", [], "org.example.Nope"]]
    expected = [(ERR + "InvalidArgument", "GetDeployment", "signature"),
                (ERR + "InvalidArgument", "GetPolicy", "exceed 1000 bytes"),
                ("org.freedesktop.DBus.Error.UnknownMethod", "NoSuchMethod", "no method"),
                ("org.freedesktop.DBus.Error.PropertyReadOnly", "Properties.Set", "read-only")]
    # The bus policy (etc/dbus-1/system.d) refuses an interface it does not
    # list, even to root: such a call never reaches the daemon (if a laxer
    # bus let it through, the daemon would audit UnknownInterface).
    for user in ("nobody", "member", "root"):
        replies = calls_as(test_users[user], proc.address, calls)
        assert [r.get("error") for r in replies] == [
            *(e[0] for e in expected), "org.freedesktop.DBus.Error.AccessDenied"], replies
    records = json.loads(calls_as(0, proc.address, [["GetAudit", "us", [1000, ""], MGR]])
                         [0]["ok"])
    for user in ("nobody", "member", "root"):
        mine = [r for r in records if r["uid"] == test_users[user]]
        assert len(mine) == len(expected), (user, mine)
        by_method = {r["method"]: r for r in mine}  # written as they come, in any order
        for error, method, reason in expected:
            row = by_method[method]
            assert row["before_dispatch"] == 1 and row["pid"] > 0, row
            assert (row["result"], row["method"]) == (error, method), row
            assert reason in row["detail"] and len(row["args_digest"]) == 64, row
    # GetAudit itself, a call that was dispatched, left no row.
    assert all(r["before_dispatch"] for r in records)


async def test_a_flood_of_refusals_keeps_the_table_bounded(start_daemon) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\n"
                        "refused_audit_rows_per_minute = 12\nrefused_audit_rows_kept = 8\n")
    clients = [await MessageBus(bus_address=proc.address).connect() for _ in range(6)]
    try:
        for cli in clients:  # 6 connections x 100 refusals: 2 rows each, 12 in all, 8 kept
            replies = await asyncio.gather(*(cli.call(_msg("GetStatus", "s", ["x"]))
                                             for _ in range(100)))
            assert {r.error_name for r in replies if r} == {ERR + "InvalidArgument"}
            rows = await _audit_rows(clients[0], lambda rs, c=cli: sum(
                r["sender"] == c.unique_name for r in rs) == 2)
        assert len(rows) == 8 and all(r["before_dispatch"] for r in rows), rows
        # The newest: the last four connections, two rows each.
        assert sorted(r["sender"] for r in rows) == sorted(
            str(c.unique_name) for c in clients[-4:] for _ in range(2))
    finally:
        for cli in clients:
            cli.disconnect()


async def _audit_rows(cli: MessageBus, done: Any) -> list[dict[str, Any]]:
    """GetAudit's rows once ``done(rows)`` holds (rows are written after the replies)."""
    for _ in range(200):
        reply = await cli.call(_msg("GetAudit", "us", [1000, ""]))
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
        rows: list[dict[str, Any]] = json.loads(reply.body[0])
        if done(rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"the audit rows never got there: {rows}")
