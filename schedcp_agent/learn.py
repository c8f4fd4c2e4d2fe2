"""Learning role: measured feedback per goal, and the decision to stop or iterate.

``GetFeedback`` compares the minute before a deployment's first write with
the time since, per target pid.  The goal decides which figure counts:

| goal | figure (targets of the role) | better |
| --- | --- | --- |
| latency | run-queue wait, s/s, of the latency-sensitive targets (system wait if none) | lower |
| throughput | CPU, cores, of the batch targets | higher |
| makespan | CPU of the critical path (the long job; else every target) | higher |
| fairness | min/max CPU across targets | higher |

A candidate meets the goal when its deployment reached ``active`` and the
figure did not get worse by more than :data:`TOLERANCE` *and* beyond the
spread (the after window's p10..p90 entirely on the bad side of the
baseline's); otherwise the next
candidate is tried, within the budget.  The daemon itself records outcomes
and antipatterns in the repository (every deployment's history); the
learner keeps the session's attempts in memory so the planner does not
repeat itself.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from schedcp_agent.observe import WorkloadProfile

TOLERANCE = 0.10
_ROLES = {"latency": ("latency", "foreground"), "throughput": ("batch", "build", "all"),
          "makespan": ("long", "build", "batch", "short", "all"), "fairness": ()}


@dataclass
class Verdict:
    """The learning role's reading of one deployment."""

    metric: str
    before: float | None
    after: float | None
    better: str
    improved: bool | None
    goal_met: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _stat(stat: dict[str, Any] | None, key: str) -> float | None:
    if not stat:
        return None
    value = stat.get(key)
    return float(value) if isinstance(value, int | float) else None


Figure = tuple[float | None, float | None, tuple[float, float] | None, tuple[float, float] | None]


def _combine(pairs: list[tuple[dict[str, Any], dict[str, Any]]], agg: str) -> Figure:
    """Aggregate per-pid spreads: (before, after, before p10..p90, after p10..p90)."""
    cols: dict[str, list[float]] = {k: [] for k in ("bm", "am", "b10", "b90", "a10", "a90")}
    for b, a in pairs:
        vals = {"bm": _stat(b, "median"), "am": _stat(a, "median"), "b10": _stat(b, "p10"),
                "b90": _stat(b, "p90"), "a10": _stat(a, "p10"), "a90": _stat(a, "p90")}
        if any(v is None for v in vals.values()):
            continue
        for k, v in vals.items():
            assert v is not None
            cols[k].append(v)
    if not cols["bm"]:
        return None, None, None, None
    if agg == "fair":
        def ratio(xs: list[float]) -> float:
            return min(xs) / max(max(xs), 1e-9)
        return ratio(cols["bm"]), ratio(cols["am"]), None, None
    f = sum if agg == "sum" else statistics.fmean
    return (f(cols["bm"]), f(cols["am"]), (f(cols["b10"]), f(cols["b90"])),
            (f(cols["a10"]), f(cols["a90"])))


def _pid_figure(feedback: dict[str, Any], pids: list[int], kind: str, agg: str) -> Figure:
    per = feedback.get("pids") or {}
    pairs = []
    for pid in pids:
        entry = per.get(str(pid), {}).get(kind, {})
        pairs.append((entry.get("before") or {}, entry.get("after") or {}))
    return _combine(pairs, agg)


def goal_pids(profile: WorkloadProfile) -> list[int]:
    """The targets whose figure measures the goal."""
    if profile.goal == "makespan" and profile.roles.get("long"):
        return list(profile.roles["long"])
    pids = [p for r in _ROLES.get(profile.goal, ()) for p in profile.roles.get(r, [])]
    return pids or sorted(profile.targets)


def judge(profile: WorkloadProfile, state: str, feedback: dict[str, Any] | None) -> Verdict:
    """Goal met, or why not, from the deployment's final state and its feedback."""
    goal = profile.goal
    pids = goal_pids(profile)
    if goal == "latency":
        metric, better = "run-queue wait (s/s) of the latency targets", "lower"
        before, after, bs, as_ = _pid_figure(feedback or {}, pids, "wait", "mean")
        if before is None and feedback:
            metric = "system run-queue wait (s/s)"
            rq = feedback.get("metrics", {}).get("rq_wait", {})
            before, after, bs, as_ = _combine([(rq.get("before") or {}, rq.get("after") or {})],
                                              "mean")
    elif goal == "fairness":
        metric, better = "min/max CPU across targets", "higher"
        before, after, bs, as_ = _pid_figure(feedback or {}, pids, "cpu", "fair")
    else:
        metric, better = f"CPU (cores) of the {goal} targets", "higher"
        before, after, bs, as_ = _pid_figure(feedback or {}, pids, "cpu", "sum")
    improved: bool | None = None
    worse = beyond_tolerance = False
    if before is not None and after is not None:
        # Worse means beyond the tolerance AND beyond the spread: on a shared host
        # medians move by noise; only separated windows count as a regression.
        if better == "lower":
            improved = after < before
            beyond_tolerance = after > before * (1 + TOLERANCE) + 1e-4
            worse = beyond_tolerance and (bs is None or as_ is None or as_[0] > bs[1])
        else:
            improved = after > before
            beyond_tolerance = after < before * (1 - TOLERANCE) - 1e-4
            worse = beyond_tolerance and (bs is None or as_ is None or as_[1] < bs[0])
    if state != "active":
        return Verdict(metric, before, after, better, improved, False,
                       f"deployment ended {state}")
    if worse:
        return Verdict(metric, before, after, better, improved, False,
                       f"{metric} got worse: {before:.4g} -> {after:.4g}")
    if improved is None:
        why = "no measurement"
    else:
        why = f"{metric}: {before:.4g} -> {after:.4g}"
        if beyond_tolerance:  # worse by more than TOLERANCE, but the windows overlap
            why += (f" (worse by more than {TOLERANCE:.0%}, but inside the before window's "
                    "spread: not counted as a regression)")
        elif not improved:
            why += f" (within the {TOLERANCE:.0%} tolerance)"
    return Verdict(metric, before, after, better, improved, True, why)
