"""Tier-3 feedback: compare two windows of samples (baseline vs after a change).

Every metric is a per-sample series; each window reports median, p10, p90,
mean and the sample count, plus ``values``: the series itself, one entry per
sample of the window in time order (``null`` where the figure has no value:
a process before it was first seen), so that every series of one window
lines up with every other and a caller can test a change against the
sample-to-sample noise itself (the agent's rank test, docs/agent.md).  The
comparison gives ``delta`` (median after minus median before) and ``ratio``
(median after / median before, ``None`` when the baseline median is 0).
Each window's ``times`` are its samples' monotonic times, the index of every
``values`` list.  A pid that had descendants recorded in either window also gets ``tree``:
the CPU and run-queue wait of the process with all of them, per sample (a
driver's jobs, which come and go, as one figure).  The numbers are
descriptive: deciding whether a change is a regression (with a margin) is
the caller's job (the deployer's circuit breaker).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from schedcpd.analysis.sampler import Sample
from schedcpd.errors import InvalidArgument

# name -> (per-sample value, meaning), all "lower is better" except util.
SYSTEM_METRICS: dict[str, Callable[[Sample], float]] = {
    "rq_wait": lambda s: s.rq_wait,  # seconds of run-queue wait per second
    "psi_cpu_some": lambda s: s.psi["cpu"][4] if "cpu" in s.psi else math.nan,
    "psi_io_some": lambda s: s.psi["io"][4] if "io" in s.psi else math.nan,
    "psi_memory_some": lambda s: s.psi["memory"][4] if "memory" in s.psi else math.nan,
    "ctxt_rate": lambda s: s.ctxt_rate,
    "util": lambda s: s.util,
    "procs_running": lambda s: float(s.procs_running),
}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def spread(values: list[float]) -> dict[str, float | int] | None:
    """Median, p10, p90, mean and count of ``values`` (NaNs dropped); None if empty."""
    data = [v for v in values if not math.isnan(v)]
    if not data:
        return None
    return {
        "median": round(statistics.median(data), 6),
        "p10": round(percentile(data, 10), 6),
        "p90": round(percentile(data, 90), 6),
        "mean": round(statistics.fmean(data), 6),
        "n": len(data),
    }


def _values(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 6) for v in values]


def compare(before: list[float], after: list[float]) -> dict[str, Any]:
    """Spread and per-sample values of each window plus delta and ratio of the medians."""
    b: dict[str, Any] | None = spread(before)
    a: dict[str, Any] | None = spread(after)
    if b is not None:
        b = {**b, "values": _values(before)}
    if a is not None:
        a = {**a, "values": _values(after)}
    out: dict[str, Any] = {"before": b, "after": a, "delta": None, "ratio": None}
    if a is not None and b is not None:
        out["delta"] = round(float(a["median"]) - float(b["median"]), 6)
        if b["median"] != 0:
            out["ratio"] = round(float(a["median"]) / float(b["median"]), 4)
    return out


def check_window(name: str, window: tuple[float, float]) -> tuple[float, float]:
    """Validate a (start, end) monotonic window; raise InvalidArgument otherwise."""
    try:
        start, end = float(window[0]), float(window[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidArgument(f"{name} must be (start, end) monotonic seconds") from exc
    if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
        raise InvalidArgument(f"{name} must satisfy start < end, got ({start}, {end})")
    return start, end


def first_seen(samples: list[Sample], pids: list[int]) -> dict[int, float]:
    """When the sampler first saw each of ``pids`` (from any record in ``samples``)."""
    out: dict[int, float] = {}
    wanted = set(pids)
    for s in samples:
        for pid in wanted.intersection(s.procs):
            out.setdefault(pid, s.procs[pid].first_seen)
    return out


def _pid_series(samples: list[Sample], pid: int,
                seen: float | None) -> tuple[list[float], list[float], list[float]]:
    """CPU (cores), run-queue wait (s/s) and block-layer I/O (KiB/s) of ``pid`` per sample.

    One entry per sample, NaN before the process was first seen (dropped
    from the statistics, ``null`` in ``values``).  Its I/O is read
    for the busiest processes, those in D state and a deployment's targets
    (sampler.py): an interval without a reading carries its bytes into the
    next one.
    """
    cpu: list[float] = []
    wait: list[float] = []
    io: list[float] = []
    for s in samples:
        d = s.procs.get(pid)
        if d is not None:
            cpu.append(_cpu(d, s.dt))
            wait.append(d.wait_s / s.dt)
            io.append(d.io_bytes / 1024 / s.dt)
        elif seen is not None and s.t >= seen:
            # No record while it existed: the process did nothing this interval.
            cpu.append(0.0)
            wait.append(0.0)
            io.append(0.0)
        else:
            for series in (cpu, wait, io):
                series.append(math.nan)
    return cpu, wait, io


def _cpu(d: Any, dt: float) -> float:
    # schedstat/TaskStats run time is ns-exact; utime ticks are 10 ms coarse,
    # but the only all-threads figure without TaskStats.
    own = d.run_s if d.wait_source == "taskstats" or d.threads == 1 else d.cpu_s
    return float(own + d.child_cpu_s) / dt


def descendants(parent_of: dict[int, int], pids: list[int]) -> dict[int, set[int]]:
    """Each of ``pids`` -> the recorded processes below it (``parent_of``: pid -> parent)."""
    wanted = set(pids)
    out: dict[int, set[int]] = {p: set() for p in pids}
    for q in parent_of:
        node, depth = parent_of[q], 0
        while node > 1 and depth < 64:
            if node in wanted:
                out[node].add(q)
            node, depth = parent_of.get(node, 0), depth + 1
    return out


def _tree_series(samples: list[Sample], pid: int, below: set[int],
                 seen: float | None) -> tuple[list[float], list[float]]:
    """CPU and run-queue wait of ``pid`` with the processes ``below`` it, per sample.

    ``below`` comes from every recorded process's parent over both windows
    (a process is recorded at least in the sample it was born in), so a job
    two levels down counts even while its sleeping parent is not recorded.
    """
    cpu: list[float] = []
    wait: list[float] = []
    for s in samples:
        members = [d for q, d in s.procs.items() if q == pid or q in below]
        if members or (seen is not None and s.t >= seen):
            cpu.append(sum(_cpu(d, s.dt) for d in members))
            wait.append(sum(d.wait_s for d in members) / s.dt)
        else:
            cpu.append(math.nan)
            wait.append(math.nan)
    return cpu, wait


def build(before_samples: list[Sample], after_samples: list[Sample],
          before: tuple[float, float], after: tuple[float, float],
          pids: list[int] | None, history: tuple[float, float] | None,
          seen: dict[int, float] | None = None) -> dict[str, Any]:
    """The feedback report for two windows of samples; see the module docstring."""
    notes: list[str] = []
    for name, got in (("before", before_samples), ("after", after_samples)):
        if not got:
            span = (f" (ring holds {history[0]:.1f}..{history[1]:.1f})"
                    if history else " (ring is empty)")
            notes.append(f"{name}: no samples in window{span}")
    out: dict[str, Any] = {
        "before": {"start": before[0], "end": before[1], "samples": len(before_samples),
                   "times": [round(x.t, 3) for x in before_samples]},
        "after": {"start": after[0], "end": after[1], "samples": len(after_samples),
                  "times": [round(x.t, 3) for x in after_samples]},
        "metrics": {
            name: compare([f(s) for s in before_samples], [f(s) for s in after_samples])
            for name, f in SYSTEM_METRICS.items()
        },
    }
    if pids:
        per: dict[str, Any] = {}
        below = descendants({q: d.ppid for s in before_samples + after_samples
                             for q, d in s.procs.items()}, pids)
        for pid in pids:
            known = (seen or {}).get(pid)
            bc, bw, bi = _pid_series(before_samples, pid, known)
            ac, aw, ai = _pid_series(after_samples, pid, known)
            if all(math.isnan(v) for v in bc + ac):
                notes.append(f"pid {pid}: no activity recorded in either window")
            per[str(pid)] = {"cpu": compare(bc, ac), "wait": compare(bw, aw),
                             "io_kbs": compare(bi, ai)}
            if below[pid]:
                # The process with its descendants: a driver's jobs, a service's workers.
                tbc, tbw = _tree_series(before_samples, pid, below[pid], known)
                tac, taw = _tree_series(after_samples, pid, below[pid], known)
                per[str(pid)]["tree"] = {"cpu": compare(tbc, tac), "wait": compare(tbw, taw)}
        out["pids"] = per
    out["notes"] = notes
    return out
