"""Workload Analysis Engine: how agents see the host (DESIGN.md section 3).

Tier 1 summaries and tier 3 feedback come from a sampler that reads /proc,
PSI, cgroup files and TaskStats at a fixed rate; tier 2 runs ``perf stat``
time-boxed.  Nothing here imports D-Bus.
"""

from __future__ import annotations

from schedcpd.analysis.analyzer import WorkloadAnalyzer

__all__ = ["WorkloadAnalyzer"]
