"""The benchmark's workloads, one module each; ``WORKLOADS`` lists them in order.

Latency workloads first (the T1 scenario, then services beside batch load),
then the scheduler microbenchmarks, then throughput and makespan workloads;
the quick suite's 13 first, then the 7 of the full suite only; then the
three T3 workloads (``--track T3``: fio on a loop device, docs/benchmark-workloads.md).
"""

from __future__ import annotations

from schedcp_bench.workload import Workload
from schedcp_bench.workloads.cache_batch import CacheBatch
from schedcp_bench.workloads.ffmpeg_x264 import FfmpegX264
from schedcp_bench.workloads.hackbench import Hackbench
from schedcp_bench.workloads.http_python import HttpPython
from schedcp_bench.workloads.longtail import LongTail
from schedcp_bench.workloads.lua_build import LuaBuild
from schedcp_bench.workloads.make_build import MakeBuild
from schedcp_bench.workloads.memcached_svc import MemcachedSvc
from schedcp_bench.workloads.msglat import Msglat
from schedcp_bench.workloads.nginx_wrk import NginxWrk
from schedcp_bench.workloads.perf_messaging import PerfMessaging
from schedcp_bench.workloads.perf_pipe import PerfPipe
from schedcp_bench.workloads.redis_bench import RedisBench
from schedcp_bench.workloads.sort_join import SortJoin
from schedcp_bench.workloads.sqlite_analytics import SqliteAnalytics
from schedcp_bench.workloads.sqlite_oltp import SqliteOltp
from schedcp_bench.workloads.stress_cyclic import StressCyclic
from schedcp_bench.workloads.sysbench_cpu import SysbenchCpu
from schedcp_bench.workloads.t1_probe import T1Probe
from schedcp_bench.workloads.t3_io import FioMixedService, FioReadBesideWriter, FioReadCpuIo
from schedcp_bench.workloads.zstd_fsync import ZstdFsync

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
        # full suite only (issue 26): the seed 002 families beyond the quick suite
        MemcachedSvc,
        HttpPython,
        SqliteOltp,
        ZstdFsync,
        SortJoin,
        FfmpegX264,
        LuaBuild,
        # track T3 (issue 21): io and multi-subsystem policies
        FioReadBesideWriter,
        FioMixedService,
        FioReadCpuIo,
    )
}

__all__ = ["WORKLOADS"]
