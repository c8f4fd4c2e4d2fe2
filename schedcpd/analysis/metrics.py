"""Prometheus gauges for the tier-1 figures, updated on every sample."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from schedcpd.analysis.sampler import Sample


class AnalysisMetrics:
    """Gauges named ``schedcp_*`` on ``registry``; call :meth:`update` per sample."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.cpu = Gauge("schedcp_cpu_utilization_ratio",
                         "Busy share of each CPU over the last sample interval", ["cpu"],
                         registry=r)
        self.util = Gauge("schedcp_cpu_utilization_all_ratio",
                          "Busy share of all CPUs over the last sample interval", registry=r)
        self.load = Gauge("schedcp_load_average", "Load average", ["period"], registry=r)
        self.psi = Gauge("schedcp_pressure_avg_ratio",
                         "PSI running average as a ratio (kernel percent / 100)",
                         ["resource", "kind", "window"], registry=r)
        self.stall = Gauge("schedcp_pressure_stall_ratio",
                           "PSI stall time over the last sample interval per second",
                           ["resource", "kind"], registry=r)
        self.rq_wait = Gauge("schedcp_runqueue_wait_ratio",
                             "Run-queue wait seconds per second summed over processes "
                             "(average number of runnable tasks waiting)", registry=r)
        self.ctxt = Gauge("schedcp_context_switches_per_second",
                          "Context switches per second", registry=r)
        self.forks = Gauge("schedcp_forks_per_second", "Forks per second", registry=r)
        self.running = Gauge("schedcp_procs_running", "Runnable tasks", registry=r)
        self.blocked = Gauge("schedcp_procs_blocked", "Tasks blocked on I/O", registry=r)
        self.cost = Gauge("schedcp_analysis_sample_cpu_seconds",
                          "CPU time the last sample took to collect", registry=r)
        self.samples = Counter("schedcp_analysis_samples", "Samples collected", registry=r)

    def update(self, s: Sample) -> None:
        """Set every gauge from one sample."""
        for i, u in enumerate(s.cpu_util):
            self.cpu.labels(cpu=str(i)).set(u)
        self.util.set(s.util)
        for period, value in zip(("1m", "5m", "15m"), s.load, strict=True):
            self.load.labels(period=period).set(value)
        for res, v in s.psi.items():
            self.psi.labels(resource=res, kind="some", window="10s").set(v[0] / 100)
            self.psi.labels(resource=res, kind="some", window="60s").set(v[1] / 100)
            self.psi.labels(resource=res, kind="full", window="10s").set(v[2] / 100)
            self.psi.labels(resource=res, kind="full", window="60s").set(v[3] / 100)
            self.stall.labels(resource=res, kind="some").set(v[4])
            self.stall.labels(resource=res, kind="full").set(v[5])
        self.rq_wait.set(s.rq_wait)
        self.ctxt.set(s.ctxt_rate)
        self.forks.set(s.fork_rate)
        self.running.set(s.procs_running)
        self.blocked.set(s.procs_blocked)
        self.cost.set(s.cost_s)
        self.samples.inc()
