"""Prometheus metrics of the safety chain: verifications, tokens, deployments, restores.

Two kinds, on the daemon's registry (docs/monitoring.md lists every family):

- counters and histograms of events in this process (a trip, a rollback
  and how long its restore took, a token refused and why), fed through
  :class:`schedcpd.safety_events.SafetyEvents` by the engine;
- gauges of state, read from the databases at scrape time by
  :class:`StateCollector` (deployments by state, journal entries still
  open), so they are right after a restart too.

Labels are bounded: subsystem, guard, cause, result, stage, verdict and
named error; never a policy or deployment id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlite_utils import Database

from schedcpd.journal import OPEN_STATES, OVERRIDDEN, Journal
from schedcpd.safety_events import CAUSES
from schedcpd.state import StateStore

_LOGGER = logging.getLogger(__name__)

DEPLOYMENT_STATES = ("pending", "canary", "active", "reverted", "failed")
VERIFICATION_RESULTS = ("passed", "failed", "error")
# The breaker's own guards (a subsystem's health check may name others).
BREAKER_GUARDS = ("wait_per_run_us", "cpu_share", "stall", "daemon_restart")

# A restore writes back a handful of values (ms) or stops a BPF scheduler (s).
_RESTORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
# Schema and static stages take ms; a dynamic stage seconds; a micro-VM minutes.
_STAGE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class SafetyMetrics:
    """Counters and histograms of safety-chain events (a :class:`SafetyEvents`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.verifications = Counter(
            "schedcp_verifications", "Verifications that ended, by result",
            ["subsystem", "result"], registry=r)
        self.stage_seconds = Histogram(
            "schedcp_verification_stage_duration_seconds",
            "Time a verification stage took, by stage and verdict",
            ["stage", "verdict"], buckets=_STAGE_BUCKETS, registry=r)
        self.tokens_issued = Counter(
            "schedcp_tokens_issued", "Deployment tokens signed by this daemon",
            ["subsystem"], registry=r)
        self.tokens_redeemed = Counter(
            "schedcp_tokens_redeemed", "Deployment tokens accepted by Deploy (nonce consumed)",
            ["subsystem"], registry=r)
        self.tokens_refused = Counter(
            "schedcp_tokens_refused", "Deploy calls refused before a deployment started, "
            "by named error", ["reason"], registry=r)
        self.trips = Counter(
            "schedcp_breaker_trips", "Circuit breaker trips, by guard", ["subsystem", "reason"],
            registry=r)
        self.rollbacks = Counter(
            "schedcp_rollbacks", "Deployments whose values were restored, by cause",
            ["subsystem", "cause"], registry=r)
        self.restore_seconds = Histogram(
            "schedcp_restore_duration_seconds",
            "Time to restore a deployment's values, from the decision to the values back",
            ["subsystem", "cause"], buckets=_RESTORE_BUCKETS, registry=r)
        self.overrides = Counter(
            "schedcp_overrides_detected", "Values we wrote that someone else changed "
            "(no longer managed)", ["subsystem"], registry=r)

    def declare(self, subsystems: Iterable[str]) -> None:
        """Start the series of known label values at 0: an alert sees the first event."""
        for sub in subsystems:
            for result in VERIFICATION_RESULTS:
                self.verifications.labels(sub, result)
            self.tokens_issued.labels(sub)
            self.tokens_redeemed.labels(sub)
            for cause in CAUSES:
                self.rollbacks.labels(sub, cause)
            for guard in BREAKER_GUARDS:
                self.trips.labels(sub, guard)
            self.overrides.labels(sub)

    # -- SafetyEvents ------------------------------------------------------

    def token_issued(self, subsystem: str) -> None:
        """Count a signed token."""
        self.tokens_issued.labels(subsystem).inc()

    def token_redeemed(self, subsystem: str) -> None:
        """Count a redeemed token."""
        self.tokens_redeemed.labels(subsystem).inc()

    def token_refused(self, reason: str) -> None:
        """Count a refused token by its named error."""
        self.tokens_refused.labels(reason).inc()

    def verification(self, subsystem: str, result: str,
                     stages: Sequence[dict[str, Any]]) -> None:
        """Count a verification; observe each stage that ran (skipped stages are not timed)."""
        self.verifications.labels(subsystem, result).inc()
        for stage in stages:
            if stage.get("verdict") != "skipped":
                self.stage_seconds.labels(str(stage.get("stage")), str(stage.get("verdict"))) \
                    .observe(float(stage.get("seconds") or 0.0))

    def breaker_trip(self, subsystem: str, reason: str) -> None:
        """Count a trip by guard."""
        self.trips.labels(subsystem, reason).inc()

    def rolled_back(self, subsystem: str, cause: str, seconds: float | None) -> None:
        """Count a rollback; observe its restore time when it was timed."""
        self.rollbacks.labels(subsystem, cause).inc()
        if seconds is not None:
            self.restore_seconds.labels(subsystem, cause).observe(seconds)

    def override_detected(self, subsystem: str) -> None:
        """Count an override."""
        self.overrides.labels(subsystem).inc()


def _deployment_counts(db: Database) -> list[tuple[str, str, int]]:
    return [(str(r[0]), str(r[1]), int(r[2])) for r in db.execute(
        "SELECT subsystem, state, COUNT(*) FROM deployments GROUP BY subsystem, state")]


class StateCollector(Collector):
    """Gauges computed from the state database and the journal at each scrape."""

    def __init__(self) -> None:
        self.store: StateStore | None = None
        self.journal: Journal | None = None
        self.subsystems: set[str] = set()
        """Subsystems reported even before they have a row (at 0)."""

    def bind(self, store: StateStore, journal: Journal) -> None:
        """Read these from now on (the daemon opens them after building its metrics)."""
        self.store, self.journal = store, journal

    def unbind(self) -> None:
        """Stop reading (the databases are about to close)."""
        self.store = self.journal = None

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("schedcp_deployments",
                              "Deployments recorded in the state database, by current state",
                              labels=["subsystem", "state"]),
            GaugeMetricFamily("schedcp_journal_entries_outstanding",
                              "Journal entries whose value may still be ours in the kernel "
                              "(restored on rollback, stop or restart)",
                              labels=["subsystem", "state"]),
            GaugeMetricFamily("schedcp_journal_entries_overridden",
                              "Journal entries someone else changed; no longer managed",
                              labels=["subsystem"]),
        )

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (names checked at registration)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Query both databases now; a failed query leaves its families out of this scrape."""
        deployments, outstanding, overridden = self._families()
        store, journal = self.store, self.journal
        if store is None or journal is None:
            return
        try:
            rows = store.run_sync(_deployment_counts)
            counts = journal.counts()
        except Exception:  # closing at stop, or a locked database: no figure beats a wrong one
            _LOGGER.exception("metrics: cannot read the deployment and journal counts")
            return
        by_key: dict[tuple[str, str], int] = {}
        for sub, state, n in rows:
            by_key[(sub, state)] = n
        for sub in sorted(self.subsystems | {s for s, _ in by_key}):
            for state in sorted({*DEPLOYMENT_STATES, *(st for s, st in by_key if s == sub)}):
                deployments.add_metric([sub, state], by_key.get((sub, state), 0))
        for sub in sorted(self.subsystems | {s for s, _ in counts}):
            for state in OPEN_STATES:
                outstanding.add_metric([sub, state], counts.get((sub, state), 0))
            overridden.add_metric([sub], counts.get((sub, OVERRIDDEN), 0))
        yield deployments
        yield outstanding
        yield overridden
