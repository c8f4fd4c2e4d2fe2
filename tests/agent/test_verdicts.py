"""The agent tells the daemon its verdict (RecordVerdict), and never stops over it.

- learn's verdicts map to the daemon's three (``ended <state>``: the daemon
  ended the deployment itself, nothing is sent);
- a daemon that predates the method answers ``UnknownMethod`` (here a FAKE
  old daemon: a connection that owns the bus name and exports nothing, which
  dbus-fast answers exactly so), and a refusal from the real daemon is an
  answer too: both are logged, ``record_verdict`` returns why, the run goes on.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from schedcp_agent.client import SchedcpClient
from schedcp_agent.execute import Executor
from schedcp_agent.learn import IMPROVED, NO_GAIN, WORSE, Verdict
from schedcpd.const import BUS_NAME
from schedcpd.dbus.bus import MessageBus


def _verdict(outcome: str, before: float | None = 200.0, after: float | None = 150.0,
             p: float | None = 0.004) -> Verdict:
    return Verdict("targets' run-queue wait", before, after, "lower", True,
                   outcome == IMPROVED, "why", outcome, p_value=p)


def test_verdicts_map_to_the_daemons_three() -> None:
    assert _verdict(IMPROVED).wire() == {
        "verdict": "improved", "metric": "targets' run-queue wait", "change": -0.25,
        "p_value": 0.004, "note": "why"}
    assert _verdict(NO_GAIN, after=None, p=None).wire() == {
        "verdict": "no-gain", "metric": "targets' run-queue wait", "change": None,
        "p_value": None, "note": "why"}
    worse = _verdict(WORSE, before=0.0, after=3.0).wire()  # no relative change from 0
    assert worse is not None and (worse["verdict"], worse["change"]) == ("worse", None)
    assert _verdict("ended reverted").wire() is None


def _record(address: str, dep: str, verdict: Verdict) -> str:
    async def run() -> str:
        async with SchedcpClient(address) as client:
            return await Executor(client, lambda _line: None).record_verdict(dep, verdict)
    return asyncio.run(run())


def test_an_older_daemon_without_the_method_is_logged_and_passed(
        fresh_bus, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> str:
        old = await MessageBus(bus_address=fresh_bus.address).connect()  # FAKE old schedcpd
        try:
            await old.request_name(BUS_NAME)
            async with SchedcpClient(fresh_bus.address) as client:
                return await Executor(client, lambda _line: None).record_verdict(
                    "dep-0123456789ab", _verdict(NO_GAIN))
        finally:
            old.disconnect()

    with caplog.at_level(logging.WARNING, logger="schedcp_agent.execute"):
        said = asyncio.run(run())
    assert said == "not recorded: the daemon predates RecordVerdict"
    assert "verdict on dep-0123456789ab not recorded" in caplog.text


def test_a_refusal_is_logged_and_passed(start_daemon) -> None:
    daemon = start_daemon()
    said = _record(daemon.address, "dep-000000000000", _verdict(WORSE))
    assert said.startswith("not recorded: NotFound: no deployment dep-000000000000"), said
    assert _record(daemon.address, "dep-000000000000", _verdict("ended failed")) == \
        "not recorded: the daemon ended the deployment itself"
