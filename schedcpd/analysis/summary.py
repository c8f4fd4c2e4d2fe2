"""Tier-1 summaries at three levels of detail, built from the sampler's ring.

``brief`` is guaranteed to serialise (``json.dumps`` with default
separators) to at most :data:`BRIEF_LIMIT` bytes, whatever the samples hold:
it drops top-process entries from the end, then notes, until it fits; if
it still does not (only hostile figures get there: a number hundreds of
digits long, dozens of PSI resources), it blanks the largest remaining
values to ``null`` and names them in ``cut``.  The bound holds because every
key is then ``null``, an empty list or a fixed name.  A figure that is not
finite (NaN, infinity) is ``null`` at every level: JSON has no such numbers.
``normal`` and ``full`` keep every key of the lower level and add more, so
an agent's parser never has to change when it asks for more detail.  Key
meanings are in docs/analysis.md.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from schedcpd.analysis import procfs
from schedcpd.analysis.classify import CLASSES, ProcWindow, aggregate, classify
from schedcpd.analysis.sampler import Sample

BRIEF_LIMIT = 1024
BRIEF_TOP_MAX = 5
DETAILS = ("brief", "normal", "full")
_CG_MAX = 40
_COMM_MAX = 16  # the kernel's comm is at most 15 bytes; longer is not from the kernel
_PER_CORE_MAX = 16


def _r(value: float, digits: int = 2) -> float | None:
    """``value`` rounded, or None if it is not finite (JSON has no NaN or infinity)."""
    return round(value, digits) if math.isfinite(value) else None


def _int(value: float) -> int | None:
    return round(value) if math.isfinite(value) else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _mean(values: list[float]) -> float:
    if not values:
        return 0.0
    try:
        return statistics.fmean(values)
    except OverflowError:  # figures near the float limit; _r makes the infinity null
        return sum(values) / len(values)


def _cg(path: str | None, limit: int = _CG_MAX) -> str | None:
    """Shorten a cgroup path from the left: its leaf says the most."""
    if path is None or len(path) <= limit:
        return path
    return "…" + path[-(limit - 1):]


def _cores(samples: list[Sample]) -> list[float | None] | dict[str, float | int | None]:
    """Mean utilisation per core; on big hosts a compact distribution instead."""
    ncores = max(len(s.cpu_util) for s in samples)
    per = [_r(_mean([s.cpu_util[i] for s in samples if i < len(s.cpu_util)]))
           for i in range(ncores)]
    if ncores <= _PER_CORE_MAX:
        return per
    known = [u for u in per if u is not None]
    return {"n": ncores, "min": min(known, default=None), "max": max(known, default=None),
            "busy": sum(1 for u in known if u >= 0.9), "idle": sum(1 for u in known if u < 0.1)}


def _root(w: ProcWindow, windows: dict[int, ProcWindow]) -> str:
    """The process-group leader as ``pgid:comm`` (a shell job, a service, make)."""
    if w.pgrp <= 0:
        return "kernel"
    leader = windows.get(w.pgrp)
    comm: str | None = leader.comm if leader is not None else None
    if comm is None:
        st = procfs.read_pid_stat(w.pgrp) if w.pgrp > 0 else None
        comm = st.comm if st is not None else "?"
    return f"{w.pgrp}:{comm}"


def _proc_entry(w: ProcWindow, cls: str, windows: dict[int, ProcWindow],
                detail: str) -> dict[str, Any]:
    if w.cgroup is None:
        w.cgroup = procfs.read_pid_cgroup(w.pid)  # sampler reads it for the busiest only
    e: dict[str, Any] = {
        "pid": w.pid, "comm": _cut(w.comm, _COMM_MAX), "cls": cls, "cpu": _r(w.total_cpu),
        "thr": w.threads, "root": _cut(_root(w, windows), _COMM_MAX + 21),
        "cg": _cg(w.cgroup, _CG_MAX if detail == "brief" else 200),
    }
    if detail == "brief":
        return e
    e.update({
        "ppid": w.ppid, "own_cpu": _r(w.cpu, 3), "child_cpu": _r(w.child_cpu, 3),
        "wait": _r(w.wait, 4), "wakeups": _r(w.wakeups, 1), "io_kbs": _r(w.io_rate / 1024, 1),
        "wr_kbs": _r(w.write_rate / 1024, 1), "blkio": _r(w.blkio_wait, 4),
        "d_frac": _r(w.d_fraction), "r_frac": _r(w.r_fraction),
        "spawn_rate": _r(w.spawn_rate, 2), "state": w.state,
    })
    if detail == "full":
        e["schedstat"] = {
            "run_ms": _r(w.run_s * 1e3, 1), "wait_ms": _r(w.wait_s * 1e3, 1),
            "slices": w.slices,
            "wait_per_slice_us": _r(w.wait_s * 1e6 / w.slices, 1) if w.slices else None,
            "source": sorted(w.sources),
        }
        if w.ts_dt > 0:
            e["switches"] = {"voluntary": w.vcs, "involuntary": w.ivcs, "seconds": _r(w.ts_dt, 1)}
        e["span_s"] = _r(w.span_s, 1)
    return e


def _cgroups(windows: dict[int, ProcWindow], limit: int) -> list[dict[str, Any]]:
    """Per-cgroup sums over the window plus each cgroup's instant cpu settings."""
    groups: dict[str, dict[str, Any]] = {}
    for w in windows.values():
        if w.cgroup is None:
            continue
        g = groups.setdefault(w.cgroup, {"cg": w.cgroup, "cpu": 0.0, "wait": 0.0, "procs": 0})
        g["cpu"] += w.total_cpu
        g["wait"] += w.wait
        g["procs"] += 1
    ranked = sorted(groups.values(), key=lambda g: g["cpu"], reverse=True)[:limit]
    for g in ranked:
        g["cpu"], g["wait"] = _r(g["cpu"], 3), _r(g["wait"], 4)
        settings = procfs.read_cgroup_cpu(g["cg"])
        if settings:
            g["settings"] = settings
    return ranked


def build(samples: list[Sample], detail: str, top_n: int, notes: list[str],
          rate_hz: float, errors: int = 0) -> dict[str, Any]:
    """The summary of ``samples`` (oldest first) at ``detail``; see the module docstring."""
    if not samples:
        empty: dict[str, Any] = {"v": 1, "win": 0, "n": 0, "notes": [*notes, "no samples yet"]}
        if detail == "brief":
            _fit(empty)
        return empty
    last = samples[-1]
    windows = aggregate(samples)
    ranked = sorted(windows.values(), key=lambda w: w.total_cpu, reverse=True)
    ntop = min(top_n, BRIEF_TOP_MAX) if detail == "brief" else top_n
    classes = {w.pid: classify(w) for w in ranked}
    # Idle processes say nothing an agent can act on; the class counts keep them.
    busy = [w for w in ranked if classes[w.pid] != "idle"]
    top = [_proc_entry(w, classes[w.pid], windows, detail) for w in busy[:ntop]]
    out: dict[str, Any] = {
        "v": 1,
        "win": _r(last.t - samples[0].t + samples[0].dt, 1),
        "n": len(samples),
        "cpu": _cores(samples),
        "util": _r(_mean([s.util for s in samples])),
        "load": [_r(x) for x in last.load],
        "psi": {res: {"some": [_r(v[0]), _r(v[1])], "full": [_r(v[2]), _r(v[3])]}
                for res, v in last.psi.items()},
        "rqwait": _r(_mean([s.rq_wait for s in samples]), 3),
        "cs": _int(_mean([s.ctxt_rate for s in samples])),
        "forks": _r(_mean([s.fork_rate for s in samples]), 1),
        "top": top,
    }
    if detail != "brief":
        out["running"] = last.procs_running
        out["blocked"] = last.procs_blocked
        out["iowait"] = _r(_mean([s.iowait for s in samples]), 3)
        out["stall"] = {res: [_r(_mean([s.psi[res][4] for s in samples if res in s.psi]), 4),
                              _r(_mean([s.psi[res][5] for s in samples if res in s.psi]), 4)]
                        for res in last.psi}
        counts = dict.fromkeys(CLASSES, 0)
        for w in ranked:
            counts[classes[w.pid]] += 1
        out["classes"] = {k: v for k, v in counts.items() if v}
        out["cgroups"] = _cgroups(windows, 8 if detail == "normal" else 32)
        # A reader waiting on the disk uses almost no CPU, so the CPU ranking
        # may leave it out: the processes with the most I/O, by block-layer
        # bytes and then time in D, not already in ``top``.
        listed = {e["pid"] for e in top}
        io_ranked = sorted((w for w in busy if w.pid not in listed
                            and (w.io_rate > 0 or w.d_fraction > 0 or w.blkio_s > 0)),
                           key=lambda w: (w.io_rate + w.d_fraction * 2**20), reverse=True)
        out["io_top"] = [_proc_entry(w, classes[w.pid], windows, detail)
                         for w in io_ranked[:ntop]]
    if detail == "full":
        tail = samples[-30:]
        out["series"] = {
            "t": [_r(s.t - last.t, 1) for s in tail],
            "util": [_r(s.util) for s in tail],
            "rqwait": [_r(s.rq_wait, 3) for s in tail],
            "cs": [_int(s.ctxt_rate) for s in tail],
            "psi_cpu": [_r(s.psi["cpu"][4], 3) if "cpu" in s.psi else None for s in tail],
        }
        out["sampler"] = {
            "rate_hz": rate_hz, "nprocs": last.nprocs, "errors": errors,
            "cost_ms_mean": _r(_mean([s.cost_s for s in samples]) * 1e3, 2),
            "cost_ms_max": _r(max(s.cost_s for s in samples) * 1e3, 2),
        }
    out["notes"] = list(notes)
    if detail == "brief":
        _fit(out)
    return out


def _size(value: Any) -> int:
    return len(json.dumps(value).encode())


def _fit(out: dict[str, Any]) -> None:
    """Make ``out`` fit :data:`BRIEF_LIMIT`; see the module docstring for the order."""
    while _size(out) > BRIEF_LIMIT and out.get("top"):
        out["top"].pop()
    while _size(out) > BRIEF_LIMIT and out["notes"]:
        out["notes"].pop()
    cut: list[str] = []
    while _size(out) > BRIEF_LIMIT:
        # "v" stays; every other key's value can go.  When all are null the
        # text is the fixed key names and "cut" (those names again): < 400 bytes.
        largest = max((k for k in out if k not in ("v", "cut") and out[k] is not None),
                      key=lambda k: _size(out[k]))
        out[largest] = None
        cut.append(largest)
        out["cut"] = sorted(cut)
