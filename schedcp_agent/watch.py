"""``schedcp-agent watch``: react to triggers with an optimisation run, at a bounded pace.

Triggers (checked every ``poll`` seconds, and at once for the signal):

- a new heavy process tree inside the scope: a process-group leader the
  watcher has not acted on whose tree used at least ``heavy_cpu`` cores in
  the summary;
- CPU pressure: PSI ``cpu some avg10`` above ``psi_threshold`` percent while
  something in the scope runs;
- a deployment reverted (``DeploymentChanged`` with state ``reverted``)
  other than by a requested rollback: the circuit breaker tripped, the
  holder vanished, the daemon restarted; plan again (the tripped version now
  has an antipattern on this profile, so the planner avoids its base).

After an action no other starts for ``min_interval`` seconds; triggers in
between are logged and dropped.  Each action is one :class:`Agent` run on
the scope (its own connection), so a crash of one leaves the watcher going.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schedcp_agent.agent import Agent, Options
from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_agent.execute import check_access
from schedcp_agent.targets import resolve

_LOGGER = logging.getLogger(__name__)


@dataclass
class WatchSettings:
    """Trigger thresholds and pacing."""

    poll: float = 5.0
    min_interval: float = 60.0
    heavy_cpu: float = 0.5
    psi_threshold: float = 50.0
    max_actions: int | None = None
    duration: float | None = None


class Watcher:
    """Long-running trigger loop around :class:`Agent`."""

    def __init__(self, opts: Options, settings: WatchSettings,
                 progress: Callable[[str], None]) -> None:
        self.opts = opts
        self.settings = settings
        self.progress = progress
        self.seen_roots: set[str] = set()
        self.last_action = -1e9
        self.actions: list[dict[str, Any]] = []
        self._signals: asyncio.Queue[str] = asyncio.Queue()

    def _on_signal(self, dep: str, state: str, reason: str) -> None:
        # A rollback someone asked for (this watcher's --revert-at-end included)
        # is a decision, not a problem to react to.
        if state == "reverted" and not reason.startswith("rollback by"):
            self._signals.put_nowait(f"deployment {dep} reverted: {reason}")

    async def _triggers(self, client: SchedcpClient) -> list[str]:
        out = []
        while not self._signals.empty():
            out.append(self._signals.get_nowait())
        mine = await asyncio.to_thread(resolve, self.opts.scope)
        if not mine:
            return out
        summary = await client.call("GetSummary", "brief")
        trees: dict[str, float] = {}
        for e in summary.get("top", []):
            if int(e.get("pid", 0)) in mine:
                trees[str(e.get("root"))] = trees.get(str(e.get("root")), 0.0) + \
                    float(e.get("cpu", 0.0))
        for root, cpu in trees.items():
            if cpu >= self.settings.heavy_cpu and root not in self.seen_roots:
                self.seen_roots.add(root)
                out.append(f"new heavy process tree {root} ({cpu:.2f} cores)")
        some = summary.get("psi", {}).get("cpu", {}).get("some", [0.0])
        if some and float(some[0]) >= self.settings.psi_threshold:
            out.append(f"cpu pressure {some[0]} % (avg10) >= {self.settings.psi_threshold}")
        return out

    async def run(self) -> list[dict[str, Any]]:
        """Watch until ``duration`` or ``max_actions``; return the actions' reports."""
        s = self.settings
        start = time.monotonic()
        async with SchedcpClient(self.opts.bus) as client:
            await check_access(client)  # not first at the first trigger, hours later
            await client.watch_deployments(self._on_signal)
            self.progress(f"watching {self.opts.scope.describe()} (poll {s.poll:g} s, "
                          f"min interval {s.min_interval:g} s)")
            while s.duration is None or time.monotonic() - start < s.duration:
                try:
                    triggers = await self._triggers(client)
                except DaemonError as err:
                    self.progress(f"summary failed: {err}")
                    triggers = []
                if triggers:
                    await self._act(triggers)
                    if s.max_actions is not None and len(self.actions) >= s.max_actions:
                        break
                try:
                    await asyncio.wait_for(self._wait_signal(), s.poll)
                except TimeoutError:
                    pass
        return self.actions

    async def _wait_signal(self) -> None:
        while self._signals.empty():
            await asyncio.sleep(0.1)

    async def _act(self, triggers: list[str]) -> None:
        now = time.monotonic()
        for t in triggers:
            self.progress(f"trigger: {t}")
        if now - self.last_action < self.settings.min_interval:
            self.progress(f"not acting: last action {now - self.last_action:.0f} s ago "
                          f"(minimum interval {self.settings.min_interval:g} s)")
            return
        self.last_action = now
        opts = copy.deepcopy(self.opts)
        report = await Agent(opts, self.progress).optimize()
        self.last_action = time.monotonic()
        self.actions.append({"triggers": triggers, "report": report})
        self.progress(f"action done: {report.get('status')}")
