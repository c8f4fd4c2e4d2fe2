"""The tier-1 gauges as a Prometheus scraper sees them, through the daemon's exporter."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.metrics import Metrics


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_exporter_serves_every_tier1_figure_of_the_last_sample() -> None:
    metrics = Metrics()
    metrics.serve("127.0.0.1", 0)
    analyzer = WorkloadAnalyzer(rate_hz=5, registry=metrics.registry)
    try:
        await analyzer.start()
        await asyncio.sleep(1.5)
        await analyzer.stop()  # no sample may land between these reads
        last = analyzer.sampler.last()
        assert last is not None
        port = metrics.port
        assert port is not None
        got = await asyncio.to_thread(_scrape, port)
    finally:
        await analyzer.stop()
        metrics.stop()

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in got, f"{name}{labels} not exported"
        return got[key]

    ncpu = len(last.cpu_util)
    assert ncpu == os.cpu_count()
    for i, u in enumerate(last.cpu_util):
        assert value("schedcp_cpu_utilization_ratio", cpu=str(i)) == pytest.approx(u)
    assert value("schedcp_cpu_utilization_all_ratio") == pytest.approx(last.util)
    for period, load in zip(("1m", "5m", "15m"), last.load, strict=True):
        assert value("schedcp_load_average", period=period) == pytest.approx(load)
    assert set(last.psi) == {"cpu", "io", "memory"}  # PSI is on in this kernel
    for res, v in last.psi.items():
        for i, (kind, window) in enumerate(
                (("some", "10s"), ("some", "60s"), ("full", "10s"), ("full", "60s"))):
            assert value("schedcp_pressure_avg_ratio", resource=res, kind=kind,
                         window=window) == pytest.approx(v[i] / 100)
        assert value("schedcp_pressure_stall_ratio", resource=res, kind="some") == \
            pytest.approx(v[4])
        assert value("schedcp_pressure_stall_ratio", resource=res, kind="full") == \
            pytest.approx(v[5])
    assert value("schedcp_runqueue_wait_ratio") == pytest.approx(last.rq_wait)
    assert value("schedcp_context_switches_per_second") == pytest.approx(last.ctxt_rate)
    assert value("schedcp_context_switches_per_second") > 0
    assert value("schedcp_forks_per_second") == pytest.approx(last.fork_rate)
    assert value("schedcp_procs_running") == last.procs_running
    assert value("schedcp_procs_blocked") == last.procs_blocked
    assert value("schedcp_analysis_sample_cpu_seconds") == pytest.approx(last.cost_s)
    assert value("schedcp_analysis_samples_total") == len(analyzer.sampler.samples) >= 2
