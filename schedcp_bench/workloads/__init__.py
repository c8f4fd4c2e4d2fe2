"""The benchmark's workloads, one module each; ``WORKLOADS`` lists them in order.

Latency workloads first (the T1 scenario, then services beside batch load),
then the scheduler microbenchmarks, then throughput and makespan workloads.
"""

from __future__ import annotations

from schedcp_bench.workload import Workload
from schedcp_bench.workloads.cache_batch import CacheBatch
from schedcp_bench.workloads.hackbench import Hackbench
from schedcp_bench.workloads.longtail import LongTail
from schedcp_bench.workloads.make_build import MakeBuild
from schedcp_bench.workloads.msglat import Msglat
from schedcp_bench.workloads.nginx_wrk import NginxWrk
from schedcp_bench.workloads.perf_messaging import PerfMessaging
from schedcp_bench.workloads.perf_pipe import PerfPipe
from schedcp_bench.workloads.redis_bench import RedisBench
from schedcp_bench.workloads.sqlite_analytics import SqliteAnalytics
from schedcp_bench.workloads.stress_cyclic import StressCyclic
from schedcp_bench.workloads.sysbench_cpu import SysbenchCpu
from schedcp_bench.workloads.t1_probe import T1Probe

WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls
    for cls in (
        T1Probe,
        StressCyclic,
        RedisBench,
        NginxWrk,
        SqliteAnalytics,
        Msglat,
        Hackbench,
        PerfMessaging,
        PerfPipe,
        SysbenchCpu,
        CacheBatch,
        LongTail,
        MakeBuild,
    )
}

__all__ = ["WORKLOADS"]
