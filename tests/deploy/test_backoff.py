"""The back-off after breaker trips, on a clock the test moves (no waiting it out).

A real Deployer with its real state store, repository and token authority;
no plugins are loaded, so a deployment that gets past the back-off fails at
once ("subsystem not available"), which is all these tests need: that it got
past.  The end-to-end trip and refusal over D-Bus are in test_deploy.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schedcpd.deployer import Deployer, DeployerSettings
from schedcpd.errors import Conflict
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository, parse_document, policy_scope
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority, digest_of
from tests.deploy.conftest import policy_text

BASE = 4.0
T0 = 1_900_000_000.0


class Clock:
    """Wall-clock seconds that move only when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.clock = Clock(T0)
        self.store = StateStore(tmp / "schedcpd.db", MIGRATIONS)
        self.tokens = TokenAuthority(KeyStore(tmp / "keys"), self.store)
        self.repo = Repository(self.store, lambda _subsystem, _doc: [],  # valid everywhere
                               "scheduler")
        self.deployer = Deployer(self.store, PluginHost(builtins={}, load_entry_points=False),
                                 self.repo, self.tokens, DeployerSettings(backoff_seconds=BASE),
                                 clock=self.clock)

    async def policy(self, name: str) -> tuple[str, str]:
        """A stored policy: (its id, its digest)."""
        policy_id = await self.repo.add(policy_text(name, [("g", [1], "{ nice = 1 }")]),
                                        "user", f"test:{name}")
        return policy_id, digest_of((await self.repo.get(policy_id))["document"])

    async def token(self, policy_id: str, digest: str) -> str:
        policy = await self.repo.get(policy_id)
        scope = policy_scope(parse_document(policy["document"], policy_id[:12]))
        return await self.tokens.issue(policy_id=policy_id, policy_digest=digest,
                                       subsystem="scheduler", scope=scope,
                                       report_digest="test", uid=0)

    async def tripped_at(self, when: float, policy_id: str, digest: str,
                         trip: bool = True) -> None:
        """A deployment of ``digest`` that ended at ``when`` (by a trip, or a rollback)."""
        row = {"id": f"dep-{len(self.deployer.trips):012d}-{when}", "policy_id": policy_id,
               "policy_digest": digest, "name": "p", "subsystem": "scheduler", "uid": 0,
               "state": "reverted", "reason": "test", "created": when - 5, "updated": when,
               "targets": "{}", "trip": json.dumps({"guard": "latency"}) if trip else ""}
        self.deployer.trips.append(row)
        await self.store.run(lambda db: db.table("deployments").insert(row))


@pytest.fixture
async def setup(memory_path: Path) -> AsyncIterator[Setup]:
    s = Setup(memory_path)  # tmpfs: a database per test
    try:
        yield s
    finally:
        await s.deployer.close()
        s.store.close()


async def test_backoff_doubles_on_each_trip_of_the_same_version(setup: Setup) -> None:
    policy_id, digest = await setup.policy("backoff")
    d = setup.deployer
    assert await d.backoff_left(digest) == 0.0
    await setup.tripped_at(T0, policy_id, digest)
    assert await d.backoff_left(digest) == BASE
    setup.clock.now = T0 + 3
    assert await d.backoff_left(digest) == pytest.approx(1.0)
    # A refused Deploy does not use the token up: it deploys once the time is up.
    token = await setup.token(policy_id, digest)
    with pytest.raises(Conflict, match=r"backing off for 1 more seconds"):
        await d.deploy(token, 0)
    setup.clock.now = T0 + BASE
    assert await d.backoff_left(digest) == 0.0
    assert (await d.deploy(token, 0)).startswith("dep-")
    # The second trip of the same version: twice as long, from that trip.
    t1 = T0 + 10
    await setup.tripped_at(t1, policy_id, digest)
    setup.clock.now = t1
    assert await d.backoff_left(digest) == 2 * BASE
    setup.clock.now = t1 + 2 * BASE - 0.5
    assert await d.backoff_left(digest) == pytest.approx(0.5)
    setup.clock.now = t1 + 2 * BASE
    assert await d.backoff_left(digest) == 0.0
    # And the third: four times.
    await setup.tripped_at(setup.clock.now, policy_id, digest)
    assert await d.backoff_left(digest) == 4 * BASE


async def test_only_trips_of_that_version_count(setup: Setup) -> None:
    policy_id, digest = await setup.policy("tripped")
    other_id, other = await setup.policy("other")
    await setup.tripped_at(T0, other_id, other, trip=False)  # rolled back: not a trip
    assert await setup.deployer.backoff_left(other) == 0.0
    await setup.tripped_at(T0, policy_id, digest)
    assert await setup.deployer.backoff_left(digest) == BASE
    assert await setup.deployer.backoff_left(other) == 0.0


async def test_at_most_eight_trips_count(setup: Setup) -> None:
    policy_id, digest = await setup.policy("often")
    for i in range(12):
        await setup.tripped_at(T0 + i, policy_id, digest)
    setup.clock.now = T0 + 11
    assert await setup.deployer.backoff_left(digest) == BASE * 2 ** 7
