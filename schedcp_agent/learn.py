"""Learning role: measured feedback per goal, and the decision to keep or roll back.

``GetFeedback`` compares the minute before a deployment's first write with
the time since, per target pid.  The goal decides which figure counts:

| goal | figure (targets of the role) | better |
| --- | --- | --- |
| latency | run-queue wait, s/s, of the latency-sensitive targets (system wait if none) | lower |
| throughput | CPU, cores, of the batch targets | higher |
| makespan | CPU of the critical path (the long job; else every target) | higher |
| fairness | min/max CPU across targets | higher |
| latency, I/O shapes | block-layer I/O (KiB/s) of ``reader`` / ``database`` | higher |
| throughput, ``io-bound`` | block-layer I/O rate of the I/O-bound targets | higher |

A reader at queue depth 1 issues one request after another, so its rate is
the inverse of what each read waits for (the disk, a CPU): the daemon's
feedback has each target's block-layer rate (``io_kbs``) but not its
per-request latency.

**Do no harm.**  A deployment is kept only on evidence that it improved
the figure beyond the noise measured in the same run.  The daemon samples
every target (4 Hz in the bench, 1 Hz by default) in the minute before the
first write and from the first write on; the goal figure is formed per
sample (summed or averaged over the goal's pids), and a one-sided rank-sum
permutation test (:mod:`schedcp_agent.ranktest`) asks whether the after
samples rank better than the before samples more than a random split of
the same samples would: kept when its p-value is at most :data:`ALPHA`
*and* the after median is at least :data:`MIN_GAIN` better than the before
median, with at least :data:`MIN_SAMPLES` samples in each window.  The
same test the other way marks it "worse".  Anything else -- inside the
noise, worse, too few samples, no figure at all, only the machine-wide
run-queue wait (it moves with every other tenant), a latency target's wait
that fell while its CPU fell beyond the noise too (it waited less because it
ran less), a deployment the daemon ended -- is "no gain" (or "worse", or the state it ended in): the
deployment is rolled back and the next candidate is tried, within the
budget.  A daemon that reports no per-sample values gets the older, stricter
rule: the after median outside the before window's p10..p90 on the better
side.  The daemon itself records outcomes and antipatterns in the
repository (every deployment's history); the learner keeps the session's
attempts in memory so the planner does not repeat itself.

Why a test on the samples and not the band: p10..p90 is the spread of
single samples (0.25 s each in the bench), not the uncertainty of a median
of many; a latency target's run-queue wait per 0.25 s is mostly near 0 with
bursts, so its p10 is ~0 and "the after median below the before p10" could
not be met even when the wait fell by 85 % (t1-probe, 2026-12-07:
0.057 -> 0.0086 s/s, band 0.001..0.277).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from schedcp_agent.observe import WorkloadProfile
from schedcp_agent.ranktest import p_tails

MIN_GAIN = 0.03
"""The smallest relative improvement kept, even when the before window had no spread."""
MIN_SAMPLES = 3
"""Samples each window needs before its spread says anything about noise."""
ALPHA = 0.01
"""The largest one-sided p-value of the rank test kept as evidence.  Stricter
than the usual 5 %: samples 0.25 s apart are not independent (a tenant's
burst spans several), so the real rate of chance passes is above the
nominal one, and the agent tries up to a few candidates per run.  A
deployment that made the figure worse cannot pass at any level: its after
median must also be :data:`MIN_GAIN` better."""
IMPROVED, NO_GAIN, WORSE = "improved", "no gain", "worse"
_IO_ROLES = {("io-reads-beside-writer", "latency"): ("reader",),
             ("latency-beside-cpu-and-io", "latency"): ("database",),
             ("io-bound", "throughput"): ("io",), ("io-bound", "makespan"): ("io",),
             ("io-reads-beside-writer", "throughput"): ("bulk-writer",)}
"""I/O shapes: whose block-layer rate measures the goal.  A reader at queue
depth 1 reads one request after another, so its rate is the inverse of what
each read waits (on the disk and for a CPU): higher rate, lower latency."""
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
    """Whether the median moved the good way at all (noise or not)."""
    goal_met: bool
    """Kept: improved beyond the noise measured in the same run."""
    reason: str
    outcome: str = NO_GAIN
    """``improved``, ``no gain``, ``worse``, or ``ended <state>`` (the daemon ended it)."""
    noise: tuple[float, float] | None = None
    """The before window's p10..p90 band of the figure: the noise it had to beat."""
    p_value: float | None = None
    """The rank test's one-sided p-value that the after samples are better (None: no test)."""
    samples: tuple[int, int] | None = None
    """Samples of the figure (before, after) the verdict rests on."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def wire(self) -> dict[str, Any] | None:
        """The ``RecordVerdict`` form of this verdict; None when the daemon ended it.

        ``change`` is the relative move of the median, (after - before) /
        before (null without both, or from 0).
        """
        name = {IMPROVED: "improved", NO_GAIN: "no-gain", WORSE: "worse"}.get(self.outcome)
        if name is None:
            return None
        change = (None if self.before is None or self.after is None or self.before == 0
                  else round((self.after - self.before) / abs(self.before), 6))
        return {"verdict": name, "metric": self.metric[:200], "change": change,
                "p_value": self.p_value, "note": self.reason[:2000]}


def _stat(stat: dict[str, Any] | None, key: str) -> float | None:
    if not stat:
        return None
    value = stat.get(key)
    return float(value) if isinstance(value, int | float) else None


@dataclass
class Figure:
    """One goal figure over both windows: medians, p10..p90 bands, fewest samples."""

    before: float | None = None
    after: float | None = None
    before_band: tuple[float, float] | None = None
    after_band: tuple[float, float] | None = None
    samples: int | None = None
    before_values: list[float] | None = None
    """The figure per sample of the before window (the daemon's ``values``), if reported."""
    after_values: list[float] | None = None


def _series(window: dict[str, Any] | None) -> list[float | None] | None:
    values = (window or {}).get("values")
    if not isinstance(values, list):
        return None
    return [float(v) if isinstance(v, int | float) else None for v in values]


def _per_sample(series: list[list[float | None] | None], agg: str) -> list[float] | None:
    """The figure per sample index from per-pid series that line up (None: not reported)."""
    got = [s for s in series if s is not None]
    if not got or len(got) != len(series) or len({len(s) for s in got}) != 1:
        return None
    out = []
    for column in zip(*got, strict=True):
        vals = [v for v in column if v is not None]
        if not vals or (agg == "fair" and len(vals) != len(column)):
            continue
        out.append(sum(vals) if agg == "sum" else statistics.fmean(vals) if agg == "mean"
                   else min(vals) / max(max(vals), 1e-9))
    return out


def _combine(pairs: list[tuple[dict[str, Any], dict[str, Any]]], agg: str) -> Figure:
    """Aggregate per-pid spreads into one figure (sum, mean, or min/max for fairness)."""
    cols: dict[str, list[float]] = {k: [] for k in ("bm", "am", "b10", "b90", "a10", "a90")}
    counts: list[int] = []
    for b, a in pairs:
        vals = {"bm": _stat(b, "median"), "am": _stat(a, "median"), "b10": _stat(b, "p10"),
                "b90": _stat(b, "p90"), "a10": _stat(a, "p10"), "a90": _stat(a, "p90")}
        if any(v is None for v in vals.values()):
            continue
        for k, v in vals.items():
            assert v is not None
            cols[k].append(v)
        counts += [int(x["n"]) for x in (b, a) if isinstance(x.get("n"), int)]
    if not cols["bm"]:
        return Figure()
    samples = min(counts) if counts else None
    kept = [(b, a) for b, a in pairs if _stat(b, "median") is not None
            and _stat(a, "median") is not None]
    bv = _per_sample([_series(b) for b, _ in kept], agg)
    av = _per_sample([_series(a) for _, a in kept], agg)
    if bv is not None and av is not None:
        # The daemon sent the series: the figure per sample, its medians and band
        # those of the series tested.  None left (a baseline cut to nothing): no
        # figure, never the daemon's statistics over the uncut window.
        if not bv or not av:
            return Figure(samples=min(len(bv), len(av)))
        bs, as_ = sorted(bv), sorted(av)
        return Figure(statistics.median(bs), statistics.median(as_),
                      (_pct(bs, 10), _pct(bs, 90)), (_pct(as_, 10), _pct(as_, 90)),
                      min(len(bv), len(av)), bv, av)
    if agg == "fair":
        def ratio(lo: list[float], hi: list[float]) -> float:
            return min(lo) / max(max(hi), 1e-9)
        # The band: the least and the most even split the per-pid spreads allow.
        return Figure(ratio(cols["bm"], cols["bm"]), ratio(cols["am"], cols["am"]),
                      (ratio(cols["b10"], cols["b90"]), min(1.0, ratio(cols["b90"], cols["b10"]))),
                      (ratio(cols["a10"], cols["a90"]), min(1.0, ratio(cols["a90"], cols["a10"]))),
                      samples)
    f = sum if agg == "sum" else statistics.fmean
    return Figure(f(cols["bm"]), f(cols["am"]), (f(cols["b10"]), f(cols["b90"])),
                  (f(cols["a10"]), f(cols["a90"])), samples)


def _pct(data: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted ``data`` (as the daemon computes it)."""
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _pid_figure(feedback: dict[str, Any], pids: list[int], kind: str, agg: str,
                trees: set[int] | None = None) -> Figure:
    """The figure over ``pids``; a driver in ``trees`` counts with its descendants."""
    per = feedback.get("pids") or {}
    pairs = []
    for pid in pids:
        entry = per.get(str(pid), {})
        if pid in (trees or set()) and kind in (entry.get("tree") or {}):
            entry = entry["tree"]
        figure = entry.get(kind, {})
        pairs.append((figure.get("before") or {}, figure.get("after") or {}))
    return _combine(pairs, agg)


def goal_pids(profile: WorkloadProfile) -> list[int]:
    """The targets whose figure measures the goal."""
    io_roles = _IO_ROLES.get((profile.shape, profile.goal))
    if io_roles:
        return [p for r in io_roles for p in profile.roles.get(r, [])]
    if profile.goal == "makespan" and profile.roles.get("long"):
        return list(profile.roles["long"])
    pids = [p for r in _ROLES.get(profile.goal, ()) for p in profile.roles.get(r, [])]
    return pids or sorted(profile.targets)


def goal_figure(profile: WorkloadProfile,
                feedback: dict[str, Any] | None) -> tuple[str, str, Figure]:
    """(metric name, which way is better, the figure) for the profile's goal."""
    goal, pids, fb = profile.goal, goal_pids(profile), feedback or {}
    trees = set(profile.trees)
    jobs = " (a driver with its jobs)" if trees & set(pids) else ""
    io_roles = _IO_ROLES.get((profile.shape, goal))
    if io_roles:
        return (f"block-layer I/O (KiB/s) of the {'/'.join(io_roles)} targets", "higher",
                _pid_figure(fb, pids, "io_kbs", "sum"))
    if goal == "latency":
        fig = _pid_figure(fb, pids, "wait", "mean", trees)
        if fig.before is None and feedback:
            rq = feedback.get("metrics", {}).get("rq_wait", {})
            return ("system run-queue wait (s/s)", "lower",
                    _combine([(rq.get("before") or {}, rq.get("after") or {})], "mean"))
        return f"run-queue wait (s/s) of the latency targets{jobs}", "lower", fig
    if goal == "fairness":
        return "min/max CPU across targets", "higher", _pid_figure(fb, pids, "cpu", "fair")
    return (f"CPU (cores) of the {goal} targets{jobs}", "higher",
            _pid_figure(fb, pids, "cpu", "sum", trees))


def assess(better: str, fig: Figure) -> tuple[str, str, float | None]:
    """(outcome, why, p-value) of one figure: ``improved`` only beyond the same run's noise.

    With per-sample values: the one-sided rank test's p-value that the after
    samples are better must be at most :data:`ALPHA`, and the after median at
    least :data:`MIN_GAIN` better than the before median; ``worse`` when the
    test says so the other way.  Without them (an older daemon): lower is
    better, the after median must be below the before window's p10 (higher:
    above its p90) and :data:`MIN_GAIN` better.  Everything else is ``no gain``.
    """
    if fig.before is None or fig.after is None:
        return NO_GAIN, "no measurement: no evidence of a gain", None
    b, a = fig.before, fig.after
    moved = f"{b:.4g} -> {a:.4g}"
    if fig.before_band is None:
        return NO_GAIN, f"{moved}, but no spread was measured to tell it from noise", None
    if fig.samples is not None and fig.samples < MIN_SAMPLES:
        return NO_GAIN, f"{moved}, but from {fig.samples} sample(s): too few to judge noise", None
    sign = 1.0 if better == "higher" else -1.0
    gain = sign * (a - b)
    big = gain >= MIN_GAIN * abs(b) and gain > 0
    pct = f"{gain / max(abs(b), 1e-12):.0%} better" if b else "from 0"
    if fig.before_values and fig.after_values:
        nb, na = len(fig.before_values), len(fig.after_values)
        greater, less = p_tails(fig.before_values, fig.after_values)
        p, q = (greater, less) if better == "higher" else (less, greater)
        test = f"rank test over {nb} before / {na} after samples"
        if p <= ALPHA and big:
            return IMPROVED, f"{moved} ({pct}): better beyond the noise, {test}: p = {p:.2g}", p
        if q <= ALPHA:
            return WORSE, f"{moved}: worse beyond the noise, {test}: p = {q:.2g}", p
        if p <= ALPHA:
            return NO_GAIN, (f"{moved}: {test}: p = {p:.2g}, but below the {MIN_GAIN:.0%} "
                             f"minimum gain"), p
        return NO_GAIN, f"{moved}: within the noise, {test}: p = {p:.2g} > {ALPHA}", p
    lo, hi = fig.before_band
    band = f"the before window's noise band {lo:.4g}..{hi:.4g}"
    outside_good = a > hi if better == "higher" else a < lo
    outside_bad = a < lo if better == "higher" else a > hi
    if outside_good and big:
        return IMPROVED, f"{moved}: beyond {band} ({pct})", None
    if outside_bad:
        return WORSE, f"{moved}: worse, beyond {band}", None
    if outside_good:
        return NO_GAIN, f"{moved}: outside {band} but below the {MIN_GAIN:.0%} minimum gain", None
    return NO_GAIN, f"{moved}: inside {band}", None


def since(feedback: dict[str, Any], start: float) -> dict[str, Any]:
    """``feedback`` with the before window's samples taken before ``start`` left out.

    The daemon's before window is the minute before the first write; after an
    earlier deployment of the same run was rolled back, part of that minute
    ran under it, and a baseline that ran under a regression would make the
    next candidate look like a gain.  Needs the daemon's ``times``; without
    them the feedback is returned as it is.
    """
    times = (feedback.get("before") or {}).get("times")
    if not isinstance(times, list) or not times:
        return feedback
    keep = [i for i, t in enumerate(times) if isinstance(t, int | float) and t >= start]
    if len(keep) == len(times):
        return feedback

    def cut(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if (k == "before" and isinstance(v, dict)
                        and isinstance(v.get("values"), list) and len(v["values"]) == len(times)):
                    out[k] = {**v, "values": [v["values"][i] for i in keep]}
                else:
                    out[k] = cut(v)
            return out
        return node

    trimmed: dict[str, Any] = cut(feedback)
    trimmed["before"] = {**feedback["before"], "times": [times[i] for i in keep]}
    return trimmed


def _latency_cost(profile: WorkloadProfile, feedback: dict[str, Any] | None,
                  outcome: str, why: str) -> tuple[str, str]:
    """No gain when the latency targets waited less because they ran less.

    Their run-queue wait is a proxy: a policy that slows the workload's own
    load (a benchmark client, a load generator in the same scope) shortens
    every queue it sits in, and the wait falls while the requests served
    fall with it (quick suite, 2026-12-07: redis's wait "improved" as its
    requests per second fell 18 %).  So the same targets' CPU, the work they
    got done, must not be worse beyond the noise by the same rank test.
    """
    pids, trees = goal_pids(profile), set(profile.trees)
    cpu = _pid_figure(feedback or {}, pids, "cpu", "sum", trees)
    result, cpu_why, _p = assess("higher", cpu)
    if result != WORSE:
        return outcome, why
    return NO_GAIN, (f"{why}; but their CPU (cores) fell, {cpu_why}: they waited less "
                     f"because they ran less, not because they were served sooner")


def judge(profile: WorkloadProfile, state: str, feedback: dict[str, Any] | None,
          clean_since: float | None = None) -> Verdict:
    """Keep (improved beyond noise) or roll back, from the deployment's state and feedback.

    ``clean_since``: the monotonic time the run's previous deployment was
    rolled back; the before window's samples before it are left out.
    """
    if feedback is not None and clean_since is not None:
        feedback = since(feedback, clean_since)
    metric, better, fig = goal_figure(profile, feedback)
    improved = None if fig.before is None or fig.after is None else (
        fig.after < fig.before if better == "lower" else fig.after > fig.before)
    if state != "active":
        return Verdict(metric, fig.before, fig.after, better, improved, False,
                       f"the daemon ended the deployment: {state}", f"ended {state}",
                       fig.before_band)
    outcome, why, p = assess(better, fig)
    if outcome == IMPROVED and metric.startswith("system"):
        # The machine-wide figure moves with every other tenant's load: it is no
        # evidence about the targets (their own figure was not sampled).
        outcome, why = NO_GAIN, (f"{why}; but only the machine-wide figure was measured "
                                 f"(the targets' own was not sampled): no evidence about them")
    elif outcome == IMPROVED and better == "lower" and metric.startswith("run-queue wait"):
        outcome, why = _latency_cost(profile, feedback, outcome, why)
    counts = ((len(fig.before_values), len(fig.after_values))
              if fig.before_values and fig.after_values else None)
    return Verdict(metric, fig.before, fig.after, better, improved, outcome == IMPROVED,
                   f"{metric}: {why}", outcome, fig.before_band, p, counts)
