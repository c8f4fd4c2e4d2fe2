"""The Workload Analysis Engine's front: sampler, summaries, feedback, perf stat."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from prometheus_client import CollectorRegistry

from schedcpd.analysis import feedback as _feedback
from schedcpd.analysis import summary as _summary
from schedcpd.analysis.metrics import AnalysisMetrics
from schedcpd.analysis.perfstat import PerfStat
from schedcpd.analysis.sampler import Sample, Sampler
from schedcpd.errors import InvalidArgument

_LOGGER = logging.getLogger(__name__)


class WorkloadAnalyzer:
    """Observes the host for agents: tier-1 summaries, tier-2 perf stat, tier-3 feedback.

    ``rate_hz`` samples per second are kept for ``history_s`` seconds (for
    feedback windows); summaries cover the last ``window_s`` seconds.  The
    gauges are registered on ``registry`` (a private one when None).  All
    timestamps are ``time.monotonic()`` seconds.
    """

    def __init__(self, rate_hz: float = 1.0, window_s: float = 60.0, top_n: int = 8,
                 registry: CollectorRegistry | None = None, *,
                 history_s: float = 300.0, taskstats_top: int = 32, max_records: int = 64,
                 perf_max_seconds: float = 30.0, perf_max_concurrent: int = 2,
                 perf_path: str | None = None) -> None:
        if not math.isfinite(window_s) or window_s <= 0:
            raise InvalidArgument(f"window_s must be > 0, got {window_s}")
        if top_n < 1:
            raise InvalidArgument(f"top_n must be >= 1, got {top_n}")
        try:
            self.sampler = Sampler(rate_hz=rate_hz, history_s=max(history_s, window_s),
                                   taskstats_top=taskstats_top, on_sample=self._on_sample,
                                   max_records=max_records)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        self.window_s = window_s
        self.top_n = top_n
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AnalysisMetrics(self.registry)
        self.perf = PerfStat(perf=perf_path, max_seconds=perf_max_seconds,
                             max_concurrent=perf_max_concurrent)

    @property
    def running(self) -> bool:
        """True while the sampler runs."""
        return self.sampler.running

    async def start(self) -> None:
        """Start the sampler on the running event loop."""
        await self.sampler.start()
        _LOGGER.info("workload analysis sampling at %s Hz", self.sampler.rate_hz)

    async def stop(self) -> None:
        """Stop the sampler; running perf stat calls are left to their callers."""
        await self.sampler.stop()

    def watch(self, pids: list[int]) -> None:
        """Always record these processes (and query TaskStats for them), however busy
        the host: call it with a deployment's targets before its baseline window."""
        c = self.sampler.collector
        c.watched = c.watched | frozenset(_check_pids(pids))

    def unwatch(self, pids: list[int] | None = None) -> None:
        """Stop watching ``pids`` (all when None)."""
        c = self.sampler.collector
        c.watched = frozenset() if pids is None else c.watched - frozenset(pids)

    def _on_sample(self, sample: Sample) -> None:
        self.metrics.update(sample)

    def summary(self, detail: str = "brief") -> dict[str, Any]:
        """Tier-1 summary over the last ``window_s`` seconds; detail is brief/normal/full.

        Runs on the caller's thread; from the event loop prefer
        :meth:`summary_async` (a busy host makes a summary cost tens of ms).
        """
        return self._summary(*self._summary_inputs(detail))

    async def summary_async(self, detail: str = "brief") -> dict[str, Any]:
        """:meth:`summary` computed on a worker thread, keeping the loop free."""
        inputs = self._summary_inputs(detail)  # snapshot the ring on the loop thread
        return await asyncio.to_thread(self._summary, *inputs)

    def _summary_inputs(self, detail: str) -> tuple[list[Sample], str, list[str]]:
        if detail not in _summary.DETAILS:
            raise InvalidArgument(
                f"detail must be one of {', '.join(_summary.DETAILS)}, got {detail!r}"
            )
        last = self.sampler.last()
        samples = [] if last is None else self.sampler.window(last.t - self.window_s, last.t)
        notes = list(self.sampler.collector.notes)
        if not self.sampler.running:
            notes.append("sampler not running")
        return samples, detail, notes

    def _summary(self, samples: list[Sample], detail: str, notes: list[str]) -> dict[str, Any]:
        return _summary.build(samples, detail, self.top_n, notes, self.sampler.rate_hz,
                              self.sampler.errors)

    def feedback(self, before: tuple[float, float], after: tuple[float, float],
                 pids: list[int] | None = None) -> dict[str, Any]:
        """Tier-3 comparison of two monotonic-time windows (see schedcpd.analysis.feedback)."""
        b = _feedback.check_window("before", before)
        a = _feedback.check_window("after", after)
        if pids is not None:
            _check_pids(pids)
        ring = self.sampler.samples
        history = (ring[0].t - ring[0].dt, ring[-1].t) if ring else None
        return _feedback.build(
            self.sampler.window(*b), self.sampler.window(*a), b, a, pids, history,
            _feedback.first_seen(ring, pids or []),
        )

    async def perf_stat(self, pid: int | None, cgroup: str | None, seconds: float,
                        events: list[str] | None = None) -> dict[str, Any]:
        """Tier-2 ``perf stat`` on a pid, a cgroup, or the system; see PerfStat.run."""
        return await self.perf.run(pid, cgroup, seconds, events)


def _check_pids(pids: list[int]) -> list[int]:
    if (not isinstance(pids, list) or len(pids) > 64
            or any(isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in pids)):
        raise InvalidArgument("pids must be a list of at most 64 positive integers")
    return pids
