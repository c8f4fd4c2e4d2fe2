"""The catalogue of prebuilt probes: what each one is and how to read it.

Only the probes listed in :data:`PROBES` can ever be loaded; their objects
are built from ``bpf/*.bpf.c`` by ``make -C bpf``.  Each entry pairs the
object file with a reader that turns its maps into a small JSON-able dict.
The byte layouts below mirror ``bpf/schedcp_probes.h``: change both together
(a size mismatch is detected at read time and raised, never misread).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schedcpd.probes import libbpf
from schedcpd.probes.bpfobject import BpfMap, BpfObject

ENV_BPF_DIR = "SCHEDCP_BPF_DIR"
INSTALLED_BPF_DIR = Path("/usr/lib/schedcp/bpf")
SOURCE_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf" / "build"

OBJECT_PREFIX = "schedcp_"
"""Every program and map of the catalogue is named with this prefix."""

TOP_PROCESSES = 10
"""Per-process rows returned, the largest first (the rest are counted)."""

CONFIG = struct.Struct("=II")  # struct schedcp_cfg {filter_tgid, per_process}
_RQ_PROC = struct.Struct("=QQQ16s")  # struct schedcp_rq_proc
_CS_PROC = struct.Struct("=QQQ16s")  # struct schedcp_cs_proc
_OC_PROC = struct.Struct("=QQQQ16s")  # struct schedcp_oc_proc

# enum schedcp_total
T_EVENTS, T_SUM_NS, T_DROPPED, T_AUX1, T_AUX2, T_AUX3 = range(6)

Reader = Callable[[BpfObject, int | None], dict[str, Any]]


@dataclass(frozen=True)
class ProbeSpec:
    """One catalogue probe: its object file and how to read its results."""

    name: str
    description: str
    object_file: str
    reader: Reader

    @property
    def object_name(self) -> str:
        """libbpf object name; prefixes the ``.rodata`` map name in bpftool."""
        return OBJECT_PREFIX + self.name


def default_bpf_dir() -> Path:
    """Where built objects are: $SCHEDCP_BPF_DIR, the source tree, or /usr/lib."""
    env = os.environ.get(ENV_BPF_DIR)
    if env:
        return Path(env)
    if SOURCE_BPF_DIR.is_dir():
        return SOURCE_BPF_DIR
    return INSTALLED_BPF_DIR


def unavailable_reason(spec: ProbeSpec, bpf_dir: Path) -> str | None:
    """Why ``spec`` cannot run on this host now, or None if it can."""
    path = bpf_dir / spec.object_file
    if not path.is_file():
        return f"{path} is missing (build the probes with: make -C bpf)"
    for checked in (path, path.parent):
        # Whoever can replace the object could make the daemon load any BPF.
        st = checked.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return f"{checked} must be owned by root and writable only by root"
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        return "the kernel exposes no BTF (/sys/kernel/btf/vmlinux)"
    if not libbpf.is_root():
        return "loading BPF probes needs root"
    return libbpf.unavailable_reason()


# -- readers ---------------------------------------------------------------


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _unpack_rows(bmap: BpfMap, layout: struct.Struct) -> list[tuple[int, tuple[Any, ...]]]:
    if bmap.value_size != layout.size:
        raise libbpf.LibbpfError(
            0, f"{bmap.name}: value is {bmap.value_size} bytes, expected {layout.size}"
        )
    return [
        (int.from_bytes(key, "little"), layout.unpack(value)) for key, value in bmap.items()
    ]


def _histogram(counts: list[int]) -> list[dict[str, int]]:
    """Non-empty log2 buckets in microseconds: ``lo <= value < hi``."""
    rows = []
    for slot, count in enumerate(counts):
        if count:
            lo = 0 if slot == 0 else 1 << (slot - 1)
            rows.append({"lo_us": lo, "hi_us": 1 << slot, "count": count})
    return rows


def _quantiles(counts: list[int]) -> dict[str, int]:
    """Upper bounds (us) of the buckets holding p50/p90/p99."""
    total = sum(counts)
    out: dict[str, int] = {}
    if not total:
        return out
    for label, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        need, seen = q * total, 0
        for slot, count in enumerate(counts):
            seen += count
            if seen >= need:
                out[label] = 1 << slot
                break
    return out


def _top(rows: list[dict[str, Any]], key: str, top: int | None) -> list[dict[str, Any]]:
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows if top is None else rows[:top]


def read_runqlat(obj: BpfObject, top: int | None = TOP_PROCESSES) -> dict[str, Any]:
    """Histogram, totals and per-process sums of run-queue waits."""
    hist = obj.map("schedcp_rqhist").sum_u64_array()
    tot = obj.map("schedcp_rqtotal").sum_u64_array()
    procs = [
        {
            "pid": tgid,
            "comm": _comm(comm),
            "wait_ns": wait,
            "count": count,
            "max_us": max_ns // 1000,
        }
        for tgid, (wait, count, max_ns, comm) in _unpack_rows(
            obj.map("schedcp_rqprocs"), _RQ_PROC
        )
    ]
    events = tot[T_EVENTS]
    return {
        "count": events,
        "total_wait_ns": tot[T_SUM_NS],
        "mean_us": round(tot[T_SUM_NS] / events / 1000, 3) if events else 0.0,
        "quantiles_le_us": _quantiles(hist),
        "histogram": _histogram(hist),
        "processes_seen": len(procs),
        "processes": _top(procs, "wait_ns", top),
        "dropped": tot[T_DROPPED],
    }


def read_cswitch(obj: BpfObject, top: int | None = TOP_PROCESSES) -> dict[str, Any]:
    """Switch and migration totals and per-process counts."""
    tot = obj.map("schedcp_cstotal").sum_u64_array()
    procs = [
        {
            "pid": tgid,
            "comm": _comm(comm),
            "voluntary": vol,
            "involuntary": invol,
            "switches": vol + invol,
            "migrations": mig,
        }
        for tgid, (vol, invol, mig, comm) in _unpack_rows(obj.map("schedcp_csprocs"), _CS_PROC)
    ]
    return {
        "switches": tot[T_EVENTS],
        "voluntary": tot[T_AUX1],
        "involuntary": tot[T_AUX2],
        "migrations": tot[T_AUX3],
        "processes_seen": len(procs),
        "processes": _top(procs, "switches", top),
        "dropped": tot[T_DROPPED],
    }


def read_offcpu(obj: BpfObject, top: int | None = TOP_PROCESSES) -> dict[str, Any]:
    """Off-CPU totals split blocked/runqueue, histogram, per-process sums."""
    hist = obj.map("schedcp_ochist").sum_u64_array()
    tot = obj.map("schedcp_octotal").sum_u64_array()
    procs = [
        {
            "pid": tgid,
            "comm": _comm(comm),
            "off_cpu_ns": blocked + runq,
            "blocked_ns": blocked,
            "runqueue_ns": runq,
            "intervals": intervals,
            "max_us": max_ns // 1000,
        }
        for tgid, (blocked, runq, intervals, max_ns, comm) in _unpack_rows(
            obj.map("schedcp_ocprocs"), _OC_PROC
        )
    ]
    return {
        "intervals": tot[T_EVENTS],
        "off_cpu_ns": tot[T_SUM_NS],
        "blocked_ns": tot[T_AUX1],
        "runqueue_ns": tot[T_AUX2],
        "quantiles_le_us": _quantiles(hist),
        "histogram": _histogram(hist),
        "processes_seen": len(procs),
        "processes": _top(procs, "off_cpu_ns", top),
        "dropped": tot[T_DROPPED],
    }


PROBES: dict[str, ProbeSpec] = {
    spec.name: spec
    for spec in (
        ProbeSpec(
            name="runqlat",
            description=(
                "Run-queue latency: time from being queued (wakeup, fork or"
                " preemption) to running, as a log2 histogram in microseconds,"
                " with the total wait and the processes that waited most."
            ),
            object_file="runqlat.bpf.o",
            reader=read_runqlat,
        ),
        ProbeSpec(
            name="cswitch",
            description=(
                "Context switches (voluntary: blocked; involuntary: preempted)"
                " and CPU migrations, in total and per process."
            ),
            object_file="cswitch.bpf.o",
            reader=read_cswitch,
        ),
        ProbeSpec(
            name="offcpu",
            description=(
                "Off-CPU time: from switch-out to switch-in, split into blocked"
                " (asleep until woken) and runqueue (runnable, waiting for a"
                " CPU), as a log2 histogram and per process."
            ),
            object_file="offcpu.bpf.o",
            reader=read_offcpu,
        ),
    )
}
"""Every probe that can be attached, by name."""
