"""The safety-chain metrics without a daemon: the event interface, and gauges read at scrape.

The daemon-level proof (a real verify, deploy, trip and rollback scraped
over HTTP) is tests/deploy/test_safety_metrics.py; here the parts on their
own, with a real SQLite state database and journal.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schedcpd.journal import Journal
from schedcpd.metrics import Metrics
from schedcpd.safety_events import NO_EVENTS, SafetyEvents
from schedcpd.schema import MIGRATIONS
from schedcpd.state import StateStore


class Recorder:
    """A :class:`SafetyEvents` that keeps what it is told (what the engine reports)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def token_issued(self, subsystem: str) -> None:
        self.seen.append(("issued", subsystem))

    def token_redeemed(self, subsystem: str) -> None:
        self.seen.append(("redeemed", subsystem))

    def token_refused(self, reason: str) -> None:
        self.seen.append(("refused", reason))

    def verification(self, subsystem: str, result: str,
                     stages: Sequence[dict[str, Any]]) -> None:
        self.seen.append(("verification", subsystem, result, len(stages)))

    def breaker_trip(self, subsystem: str, reason: str) -> None:
        self.seen.append(("trip", subsystem, reason))

    def rolled_back(self, subsystem: str, cause: str, seconds: float | None) -> None:
        self.seen.append(("rollback", subsystem, cause))

    def override_detected(self, subsystem: str) -> None:
        self.seen.append(("override", subsystem))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def test_the_journal_reports_overrides_with_their_subsystem(tmp_path: Path) -> None:
    recorder: SafetyEvents = Recorder()
    j = Journal(tmp_path / "j.db")
    assert j.events is NO_EVENTS  # nothing counts unless the daemon says so
    a = j.record("dep-1", "task_attr", "task:1:2:nice", 0, 5, subsystem="scheduler")
    j.mark_overridden(a, "admin")  # unobserved: no error
    j.events = recorder
    b = j.record("dep-1", "task_attr", "task:1:3:nice", 0, 5, subsystem="io")
    j.mark_applied(b)
    c = j.record("dep-1", "task_attr", "task:1:4:nice", 0, 5, subsystem="io")
    j.mark_overridden(b, "admin")
    assert isinstance(recorder, Recorder) and recorder.seen == [("override", "io")]
    assert j.counts() == {("scheduler", "overridden"): 1, ("io", "overridden"): 1,
                          ("io", "pending"): 1}
    j.mark_restored(c)
    assert j.counts()[("io", "restored")] == 1
    j.close()


def _deployment(dep_id: str, state: str, subsystem: str = "scheduler") -> dict[str, Any]:
    now = time.time()
    return {"id": dep_id, "policy_id": "p" * 64, "policy_digest": "d" * 64, "name": "n",
            "subsystem": subsystem, "uid": 0, "state": state, "reason": "test",
            "created": now, "updated": now, "targets": "{}", "trip": ""}


def test_state_gauges_are_read_from_the_databases_at_scrape(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "schedcpd.db", MIGRATIONS)
    journal = Journal(tmp_path / "journal.db")
    metrics = Metrics()
    assert ("schedcp_deployments", (("state", "active"), ("subsystem", "scheduler"))) \
        not in samples(metrics.registry)  # unbound: no figure rather than a wrong one
    metrics.state.subsystems = {"scheduler"}
    metrics.state.bind(store, journal)
    s = samples(metrics.registry)
    assert s[("schedcp_deployments", (("state", "active"), ("subsystem", "scheduler")))] == 0
    assert s[("schedcp_journal_entries_outstanding",
              (("state", "applied"), ("subsystem", "scheduler")))] == 0

    store.run_sync(lambda db: db.table("deployments").insert_all(
        [_deployment("dep-a", "active"), _deployment("dep-b", "reverted"),
         _deployment("dep-c", "reverted"), _deployment("dep-d", "canary", "io")]))
    entry = journal.record("dep-a", "task_attr", "task:1:2:nice", 0, 5, subsystem="scheduler")
    journal.mark_applied(entry)
    journal.record("dep-a", "task_attr", "task:1:3:nice", 0, 5, subsystem="scheduler")
    s = samples(metrics.registry)
    dep = "schedcp_deployments"
    assert s[(dep, (("state", "active"), ("subsystem", "scheduler")))] == 1
    assert s[(dep, (("state", "reverted"), ("subsystem", "scheduler")))] == 2
    assert s[(dep, (("state", "canary"), ("subsystem", "io")))] == 1
    assert s[(dep, (("state", "failed"), ("subsystem", "io")))] == 0
    out = "schedcp_journal_entries_outstanding"
    assert s[(out, (("state", "applied"), ("subsystem", "scheduler")))] == 1
    assert s[(out, (("state", "pending"), ("subsystem", "scheduler")))] == 1
    metrics.state.unbind()
    store.close()
    journal.close()

    # After a restart (a new process: new registry, same files) the gauges are right.
    store = StateStore(tmp_path / "schedcpd.db", MIGRATIONS)
    journal = Journal(tmp_path / "journal.db")
    again = Metrics()
    again.state.bind(store, journal)
    s = samples(again.registry)
    assert s[(dep, (("state", "reverted"), ("subsystem", "scheduler")))] == 2
    assert s[(out, (("state", "pending"), ("subsystem", "scheduler")))] == 1
    # Counters start again at 0: they count events in this process.
    assert ("schedcp_breaker_trips_total", (("reason", "stall"), ("subsystem", "scheduler"))) \
        not in s
    again.safety.declare(["scheduler"])
    s = samples(again.registry)
    assert s[("schedcp_breaker_trips_total", (("reason", "stall"), ("subsystem", "scheduler")))] \
        == 0
    store.close()
    journal.close()


def test_events_become_counters_and_histograms_that_promtool_accepts() -> None:
    metrics = Metrics()
    safety = metrics.safety
    safety.declare(["scheduler"])
    safety.verification("scheduler", "passed", [
        {"stage": "schema", "verdict": "passed", "seconds": 0.002},
        {"stage": "kernel", "verdict": "skipped", "seconds": 0.0},
        {"stage": "dynamic", "verdict": "passed", "seconds": 3.2}])
    safety.verification("scheduler", "error", [])
    safety.token_issued("scheduler")
    safety.token_redeemed("scheduler")
    safety.token_refused("TokenExpired")
    safety.breaker_trip("scheduler", "wait_per_run_us")
    safety.rolled_back("scheduler", "breaker", 0.04)
    safety.rolled_back("scheduler", "restart", None)
    safety.override_detected("scheduler")
    s = samples(metrics.registry)
    sub = ("subsystem", "scheduler")
    assert s[("schedcp_verifications_total", (("result", "passed"), sub))] == 1
    assert s[("schedcp_verifications_total", (("result", "error"), sub))] == 1
    assert s[("schedcp_verifications_total", (("result", "failed"), sub))] == 0
    stage = "schedcp_verification_stage_duration_seconds"
    assert s[(f"{stage}_count", (("stage", "dynamic"), ("verdict", "passed")))] == 1
    assert s[(f"{stage}_sum", (("stage", "dynamic"), ("verdict", "passed")))] == 3.2
    assert (f"{stage}_count", (("stage", "kernel"), ("verdict", "skipped"))) not in s
    assert s[("schedcp_tokens_refused_total", (("reason", "TokenExpired"),))] == 1
    assert s[("schedcp_breaker_trips_total", (("reason", "wait_per_run_us"), sub))] == 1
    assert s[("schedcp_rollbacks_total", (("cause", "breaker"), sub))] == 1
    assert s[("schedcp_rollbacks_total", (("cause", "restart"), sub))] == 1
    restore = "schedcp_restore_duration_seconds"
    assert s[(f"{restore}_count", (("cause", "breaker"), sub))] == 1
    assert (f"{restore}_count", (("cause", "restart"), sub)) not in s  # not timed
    assert s[("schedcp_overrides_detected_total", (sub,))] == 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: Debian's prometheus package (requirements-apt.txt)"
    check = subprocess.run([promtool, "check", "metrics"],
                           input=generate_latest(metrics.registry).decode(),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
