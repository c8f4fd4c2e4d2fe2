"""A second subsystem uses the deployer and the circuit breaker unchanged.

A real Deployer, state store, repository and token authority; the plugin is
the FAKE "toy" subsystem (tests/deploy/toy_plugin.py), which imports only
schedcpd.plugin_api.  Its guards, their metric names and the wording of its
trips and canary come from it alone: the engine knows nothing of "toy".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schedcpd.breaker import BreakerSettings
from schedcpd.deployer import Deployer, DeployerSettings
from schedcpd.plugins import PluginHost
from schedcpd.repository import Repository, parse_document, policy_scope
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore
from schedcpd.tokens import KeyStore, TokenAuthority, digest_of
from tests.deploy import toy_plugin


def _policy(name: str, knob: str) -> str:
    return (f'[policy]\nname = "{name}"\ndescription = "toy test policy"\n'
            f'subsystem = "toy"\n\n[[group]]\nname = "reader"\nknob = "{knob}"\n')


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.store = StateStore(tmp / "schedcpd.db", MIGRATIONS)
        self.tokens = TokenAuthority(KeyStore(tmp / "keys"), self.store)
        self.host = PluginHost(builtins={"toy": "tests.deploy.toy_plugin"},
                               load_entry_points=False)
        self.repo = Repository(self.store, lambda s, _doc: [] if s == "toy" else None,
                               "scheduler")
        self.deployer = Deployer(
            self.store, self.host, self.repo, self.tokens,
            DeployerSettings(baseline_seconds=0.5, canary_seconds=0.5, full_seconds=0.5),
            BreakerSettings(rate_hz=20, min_samples=4, window=8))

    async def deploy(self, name: str, knob: str) -> str:
        policy_id = await self.repo.add(_policy(name, knob), "user", f"test:{name}")
        policy = await self.repo.get(policy_id)
        assert policy["subsystem"] == "toy"
        token = await self.tokens.issue(
            policy_id=policy_id, policy_digest=digest_of(policy["document"]),
            subsystem="toy", scope=policy_scope(parse_document(policy["document"], name)),
            report_digest="test", uid=0)
        return await self.deployer.deploy(token, 0)

    async def until(self, dep_id: str, states: tuple[str, ...]) -> dict[str, Any]:
        for _ in range(600):  # poll; the deployment runs in its own task
            dep = await self.deployer.get(dep_id)
            if dep["state"] in states:
                return dep
            await asyncio.sleep(0.05)
        raise AssertionError(f"deployment {dep_id} stayed {dep['state']}")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    toy_plugin.KNOBS.clear()
    toy_plugin.PRIOR.clear()
    toy_plugin.GUARDED[:] = [True]
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        await s.deployer.close()
        s.store.close()


async def test_a_harmless_toy_policy_goes_active_with_the_plugins_words(setup: Setup) -> None:
    dep_id = await setup.deploy("toy-fast", "fast")
    dep = await setup.until(dep_id, ("active", "reverted", "failed"))
    assert dep["state"] == "active", dep["events"]
    assert toy_plugin.KNOBS == {"reader": "fast"}
    assert "toy knob set on 1 group(s)" in [e["reason"] for e in dep["events"]]
    history = await setup.repo.history(dep["policy_id"])
    [outcome] = [o for o in history["outcomes"] if o["outcome"] == "active"]
    figures = outcome["metrics"]["reader"]
    assert figures["role"] == "latency"
    assert figures["baseline"]["read_latency_us_median"] == 100.0
    await setup.deployer.rollback(dep_id)
    assert toy_plugin.KNOBS == {"reader": ""}


async def test_a_toy_regression_trips_on_the_plugins_metric_and_is_restored(
        setup: Setup) -> None:
    dep_id = await setup.deploy("toy-slow", "slow")
    dep = await setup.until(dep_id, ("active", "reverted", "failed"))
    assert dep["state"] == "reverted", dep["events"]
    assert dep["trip"]["guard"] == "read_latency_us" and dep["trip"]["group"] == "reader"
    assert dep["trip"]["detail"].startswith("read latency of 'reader': median 100 -> 1000 us")
    assert toy_plugin.KNOBS == {"reader": ""}  # the plugin put the prior value back
    [anti] = (await setup.repo.history(dep["policy_id"]))["antipatterns"]
    assert anti["metric"] == "read_latency_us"


async def test_a_subsystem_without_guards_is_judged_by_its_health_alone(setup: Setup) -> None:
    toy_plugin.GUARDED[:] = [False]
    dep_id = await setup.deploy("toy-unguarded", "slow")
    dep = await setup.until(dep_id, ("active", "reverted", "failed"))
    # Nothing measured the slow reads: no trip, and no guard figures.
    assert dep["state"] == "active", dep["events"]
    history = await setup.repo.history(dep["policy_id"])
    [outcome] = [o for o in history["outcomes"] if o["outcome"] == "active"]
    assert outcome["metrics"] == {}
