"""The circuit breaker: when a deployment's guard metrics say to trip.

The engine judges; the subsystem plugin that owns the policy measures.  The
plugin's :class:`Guards` (hook ``schedcp_guards``) samples each group of the
deployment's targets at ``rate_hz`` (default 10 Hz) into a
:class:`GroupSample`, a subsystem-neutral shape:

- ``latency`` — the cost per operation the group sees (the scheduler plugin:
  run-queue wait per run, in us);
- ``throughput`` — work done per wall second (the scheduler plugin: CPU
  share);
- ``pending`` and ``units`` — units with work waiting, and units observed
  (the scheduler plugin: runnable threads, threads), for stall detection.

The plugin also gives each group a guard role from the baseline and from
what the policy does to it, and names the metrics and their wording
(:class:`GuardMetrics`), so trip records and messages speak the
subsystem's language:

- ``latency`` — the group's latency must not regress;
- ``throughput`` — the group must keep at least ``throughput_floor`` of its
  baseline throughput;
- ``donor`` and ``progress`` — only a stall trips them (a group the policy
  deprioritises by design, a canary judged on progress alone);

and no group may stall (work pending and no throughput for ``stall_seconds``).

A regression trips only with a statistical margin, never on one sample:
at least ``min_samples`` samples in the window, the window's median beyond
``threshold`` x the baseline median (plus an absolute floor in the latency
metric's unit), and at least ``agreement`` of the window's samples beyond
the baseline's p90.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class BreakerSettings:
    """Thresholds; ``[breaker]`` in schedcpd.toml sets them."""

    rate_hz: float = 10.0
    threshold: float = 2.0
    absolute_floor_us: float = 200.0
    agreement: float = 0.7
    min_samples: int = 8
    window: int = 15
    throughput_floor: float = 0.5
    interactive_share: float = 0.6
    stall_seconds: float = 2.0


@dataclass
class Trip:
    """Why the breaker tripped: the guard and the measured regression."""

    guard: str
    group: str
    baseline: float
    observed: float
    detail: str

    @property
    def ratio(self) -> float:
        """observed / baseline (inf when the baseline was 0)."""
        return self.observed / self.baseline if self.baseline else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        ratio = self.ratio
        return {"guard": self.guard, "group": self.group, "baseline": round(self.baseline, 3),
                "observed": round(self.observed, 3),
                "ratio": round(ratio, 3) if math.isfinite(ratio) else None,
                "detail": self.detail}


@dataclass
class GroupSample:
    """One sample of one group's guard metrics (deltas since the previous)."""

    time: float
    latency: float | None
    throughput: float
    pending: int
    units: int


@dataclass(frozen=True)
class GuardMetrics:
    """A subsystem's names and wording for the breaker's metrics.

    ``latency`` and ``throughput`` name the guards in trip records, in
    antipatterns and in the figures kept in a policy's history
    (``<name>_median``, ``<latency>_p90``); the ``*_text`` and unit strings
    word the trip messages.  ``min_throughput``: a baseline below it is too
    small to judge a throughput regression on.
    """

    latency: str
    throughput: str
    latency_text: str
    latency_unit: str
    throughput_text: str
    throughput_unit: str
    stall_text: str
    min_throughput: float = 0.0


Samples = list[dict[str, GroupSample]]


@dataclass
class GuardRoles:
    """Each group's guard role, and the policy's own ratio for some (threshold or floor)."""

    roles: dict[str, str]
    limits: dict[str, float]


class Guards(Protocol):
    """What a subsystem plugin hands the deployer to guard one deployment.

    ``groups`` (group -> pids) is what is sampled; the deployer replaces it
    with the processes ``schedcp_health`` reports the deployment covers now.
    """

    metrics: GuardMetrics
    groups: dict[str, list[int]]

    def sample(self) -> dict[str, GroupSample]:
        """Deltas since the previous call (the first call only primes)."""

    def alive(self) -> bool:
        """Whether any target still exists."""

    def subset(self, groups: dict[str, list[int]]) -> Guards:
        """Guards of the same kind for other targets (the canary subset)."""

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        """Each group's role from its baseline behaviour and the policy."""


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Breaker:
    """Decide, from a baseline and a window of samples, whether to trip."""

    def __init__(self, roles: dict[str, str], metrics: GuardMetrics,
                 settings: BreakerSettings | None = None,
                 limits: dict[str, float] | None = None,
                 group_metrics: dict[str, GuardMetrics] | None = None) -> None:
        """``group_metrics``: a group's own metrics where not ``metrics`` (a policy of
        several subsystems' parts, each guarded by its own plugin's)."""
        self.roles = roles  # group -> "latency" | "throughput" | "donor" | "progress"
        self.metrics = metrics
        self.group_metrics = group_metrics or {}
        self.settings = settings or BreakerSettings()
        # group -> the policy's own ratio (latency threshold or throughput floor)
        self.limits = limits or {}

    def evaluate(self, baseline: Samples, window: Samples) -> Trip | None:
        """A :class:`Trip` if a guard regressed beyond its margin, else None."""
        s = self.settings
        recent = window[-s.window:]
        if len(recent) < s.min_samples:
            return None
        for group, role in self.roles.items():
            base = [x[group] for x in baseline if group in x]
            now = [x[group] for x in recent if group in x]
            if len(now) < s.min_samples or len(base) < s.min_samples:
                continue
            # A stall is judged over the last stall_seconds, which can be longer
            # than the judged window (15 samples at 10 Hz are 1.5 s < 2 s).
            trip = self._stall(group, [x[group] for x in window if group in x])
            if trip is None and role == "latency":
                trip = self._latency(group, base, now)
            elif trip is None and role == "throughput":
                trip = self._throughput(group, base, now)
            if trip:
                return trip
        return None

    def _m(self, group: str) -> GuardMetrics:
        return self.group_metrics.get(group, self.metrics)

    def _stall(self, group: str, samples: list[GroupSample]) -> Trip | None:
        """Work pending and (almost) no throughput in every sample of the last stall_seconds."""
        last = samples[-1].time if samples else 0.0
        for x in reversed(samples):
            span = last - x.time  # covered by the samples after x (each is a delta)
            if span >= self.settings.stall_seconds:
                return Trip("stall", group, 0.0, span,
                            f"group {group!r} {self._m(group).stall_text} for {span:.1f} s")
            if not (x.pending > 0 and x.throughput < 0.001):
                return None
        return None

    def _latency(self, group: str, base: list[GroupSample],
                 now: list[GroupSample]) -> Trip | None:
        s, m = self.settings, self._m(group)
        b = [x.latency for x in base if x.latency is not None]
        w = [x.latency for x in now if x.latency is not None]
        if len(b) < s.min_samples or len(w) < s.min_samples:
            return None
        b_med, w_med, b_p90 = statistics.median(b), statistics.median(w), _p(b, 0.9)
        beyond = sum(v > b_p90 for v in w) / len(w)
        threshold = self.limits.get(group, s.threshold)
        if w_med > max(threshold * b_med, b_med + s.absolute_floor_us) \
                and beyond >= s.agreement:
            return Trip(m.latency, group, b_med, w_med,
                        f"{m.latency_text} of {group!r}: median {b_med:.0f} -> "
                        f"{w_med:.0f} {m.latency_unit}; {beyond:.0%} of samples above the "
                        "baseline p90")
        return None

    def _throughput(self, group: str, base: list[GroupSample],
                    now: list[GroupSample]) -> Trip | None:
        s, m = self.settings, self._m(group)
        floor = self.limits.get(group, s.throughput_floor)
        b_med = statistics.median(x.throughput for x in base)
        w = [x.throughput for x in now]
        w_med = statistics.median(w)
        below = sum(v < floor * b_med for v in w) / len(w)
        if b_med > m.min_throughput and w_med < floor * b_med and below >= s.agreement:
            return Trip(m.throughput, group, b_med, w_med,
                        f"{m.throughput_text} of {group!r}: median {b_med:.2f} -> "
                        f"{w_med:.3f} {m.throughput_unit} (below {floor:.0%} of its baseline)")
        return None


def guard_figures(roles: dict[str, str], metrics: GuardMetrics, baseline: Samples,
                  window: Samples,
                  group_metrics: dict[str, GuardMetrics] | None = None) -> dict[str, Any]:
    """Per group: its guard role and the guard metrics before and during probation.

    Medians (and the p90 of the latency metric) over the baseline and over
    the probation window, keyed by the subsystem's metric names: the
    measured outcome of a deployment that went active, kept in the policy's
    history.
    """

    def figures(samples: list[GroupSample], metrics: GuardMetrics) -> dict[str, Any]:
        lat = [x.latency for x in samples if x.latency is not None]
        return {"samples": len(samples),
                f"{metrics.latency}_median": round(statistics.median(lat), 1) if lat else None,
                f"{metrics.latency}_p90": round(_p(lat, 0.9), 1) if lat else None,
                f"{metrics.throughput}_median":
                round(statistics.median(x.throughput for x in samples), 4) if samples else None}

    out: dict[str, Any] = {}
    for group, role in roles.items():
        own = (group_metrics or {}).get(group, metrics)
        out[group] = {"role": role,
                      "baseline": figures([x[group] for x in baseline if group in x], own),
                      "probation": figures([x[group] for x in window if group in x], own)}
    return out


class NoGuards:
    """The guards of a subsystem that measures none: only its health can trip."""

    metrics = GuardMetrics("latency", "throughput", "latency", "", "throughput", "",
                           "made no progress")

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}

    def sample(self) -> dict[str, GroupSample]:
        """Nothing to sample."""
        return {}

    def alive(self) -> bool:
        """Nothing is watched, so nothing has gone."""
        return True

    def subset(self, groups: dict[str, list[int]]) -> Guards:
        """Still none."""
        return NoGuards()

    def roles(self, baseline: Samples, settings: BreakerSettings) -> GuardRoles:
        """No group is guarded."""
        return GuardRoles({}, {})
