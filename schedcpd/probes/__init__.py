"""Catalogue of prebuilt CO-RE BPF probes, run time-boxed and rate-limited.

Tier 2 of the Workload Analysis Engine.  :class:`ProbeManager` is the API
the daemon exposes; :class:`ProbeSession` attaches one probe directly (for
tests and benchmarks).  See docs/probes.md.
"""

from __future__ import annotations

from schedcpd.probes.catalogue import PROBES, ProbeSpec, default_bpf_dir
from schedcpd.probes.manager import ProbeManager
from schedcpd.probes.session import ProbeSession

__all__ = ["PROBES", "ProbeManager", "ProbeSession", "ProbeSpec", "default_bpf_dir"]
