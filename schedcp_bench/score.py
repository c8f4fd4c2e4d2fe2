"""The score of seed 002: ratios on medians, weighted, gated by hard SLOs, minus budget overuse.

For workload ``w``, metric ``m`` and a candidate arm compared with the
baseline arm (kernel defaults)::

    I[w,m] = baseline / candidate   (better = "lower")
    I[w,m] = candidate / baseline   (better = "higher")
    Score  = sum_w ( sum_m alpha[m] * I[w,m] ) * 1[hard SLOs of w met by the candidate]
             - lambda * BudgetOveruse

``I > 1`` means the candidate is better.  Each ratio is clamped to
``[1/max_ratio, max_ratio]``, and a figure below its metric's ``floor``
(the least value worth telling apart, for figures that reach 0) counts as
the floor; a metric without a median on either side is left out of the sum
(and reported).  The baseline arm scored against itself
gets ``sum_m alpha[m]`` per workload whose hard SLOs it meets, which is the
reference a candidate's score is read against.  An arm that does not apply
to a workload (a built-in policy whose groups the workload has no processes
for, the agent without a ``--match``) has no term there: "not applicable" is
neither a gain nor a missed hard SLO.  Its Score sums the workloads it applied
to; ``relative`` divides that by the baseline's sum over the same workloads.
``BudgetOveruse`` is the agent's spending beyond its budget (dollars, tokens,
wall seconds), each as a fraction of its limit, summed over workloads; it is
0 for other arms.
The weights, ``lambda`` and the budgets come from ``score.toml`` (shipped in
this package; ``--config FILE`` replaces any of its keys).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent / "score.toml"
_BUDGET_KEYS = ("usd", "tokens", "seconds")


class ConfigError(ValueError):
    """The scoring configuration is invalid (the message names the key)."""


@dataclass
class ScoreConfig:
    """Weights, lambda, clamp and budgets."""

    lam: float = 1.0
    max_ratio: float = 100.0
    baseline: str = "default"
    weights: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)

    def alpha(self, workload: str, metric: str, declared: float) -> float:
        """The weight of ``metric`` in ``workload`` (config > workload's declared weight)."""
        for key in (f"{workload}.{metric}", metric):
            if key in self.weights:
                return self.weights[key]
        return declared

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (as recorded in results.json)."""
        return {"lambda": self.lam, "max_ratio": self.max_ratio, "baseline": self.baseline,
                "weights": dict(self.weights), "budget": dict(self.budget)}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def load_config(path: Path | None = None) -> ScoreConfig:
    """The shipped configuration, with the keys of ``path`` (if given) replacing its own."""
    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    if path is not None:
        try:
            extra = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: {err}") from err
        for table, values in extra.items():
            if table not in ("score", "weights", "budget") or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown table [{table}] "
                                  f"(expected [score], [weights], [budget])")
            data.setdefault(table, {}).update(values)
    where = str(path or DEFAULT_CONFIG)
    sc = data.get("score", {})
    unknown = set(sc) - {"lambda", "max_ratio", "baseline"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [score]: {', '.join(sorted(unknown))}")
    cfg = ScoreConfig(
        lam=_number(sc.get("lambda", 1.0), f"{where}: score.lambda"),
        max_ratio=_number(sc.get("max_ratio", 100.0), f"{where}: score.max_ratio"),
        baseline=str(sc.get("baseline", "default")),
        weights={str(k): _number(v, f"{where}: weights.{k}")
                 for k, v in data.get("weights", {}).items()},
        budget={},
    )
    if cfg.max_ratio < 1:
        raise ConfigError(f"{where}: score.max_ratio must be >= 1")
    for k, v in data.get("budget", {}).items():
        if k not in _BUDGET_KEYS:
            raise ConfigError(f"{where}: unknown key budget.{k} (expected {_BUDGET_KEYS})")
        if _number(v, f"{where}: budget.{k}") <= 0:
            raise ConfigError(f"{where}: budget.{k} must be > 0")
        cfg.budget[k] = float(v)
    return cfg


def ratio(baseline: float | None, candidate: float | None, better: str,
          max_ratio: float = 100.0, floor: float = 0.0) -> float | None:
    """I for one metric: > 1 when the candidate is better; None without both values.

    Values below the metric's ``floor`` count as the floor (both sides).
    """
    if baseline is None or candidate is None:
        return None
    if floor > 0:
        baseline, candidate = max(baseline, floor), max(candidate, floor)
    num, den = (baseline, candidate) if better == "lower" else (candidate, baseline)
    if num < 0 or den < 0:
        return None
    if den == 0:
        return max_ratio if num > 0 else 1.0
    return min(max_ratio, max(1.0 / max_ratio, num / den))


def slo_results(slos: list[dict[str, Any]], medians: dict[str, float | None]
                ) -> list[dict[str, Any]]:
    """Each SLO with the median it was checked on and whether it was met."""
    out = []
    for slo in slos:
        value = medians.get(slo["metric"])
        met = value is not None and (value <= slo["value"] if slo["op"] == "<="
                                     else value >= slo["value"])
        out.append({**slo, "median": value, "met": met})
    return out


def workload_score(workload: str, metrics: list[dict[str, Any]], slos: list[dict[str, Any]],
                   baseline: dict[str, float | None], candidate: dict[str, float | None],
                   cfg: ScoreConfig) -> dict[str, Any]:
    """One workload's term of the sum for one candidate arm.

    ``metrics``: ``{name, better, weight}`` dicts; ``slos``: ``{metric, op,
    value, hard}`` dicts; ``baseline``/``candidate``: medians by metric name.
    """
    terms: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    total = 0.0
    for m in metrics:
        alpha = cfg.alpha(workload, m["name"], float(m.get("weight", 1.0)))
        i = ratio(baseline.get(m["name"]), candidate.get(m["name"]), m["better"],
                  cfg.max_ratio, float(m.get("floor", 0.0)))
        terms[m["name"]] = {"alpha": alpha, "I": i}
        if i is None:
            missing.append(m["name"])
        else:
            total += alpha * i
    checked = slo_results(slos, candidate)
    hard_met = all(s["met"] for s in checked if s.get("hard", True))
    return {"terms": terms, "weighted_sum": total, "hard_slos_met": hard_met,
            "slos": checked, "score": total if hard_met else 0.0, "missing": missing}


def budget_overuse(spent: dict[str, float], budget: dict[str, float]) -> float:
    """Sum over the set limits of ``max(0, spent - limit) / limit``."""
    over = 0.0
    for key, limit in budget.items():
        value = spent.get(key)
        if value is not None and limit > 0:
            over += max(0.0, float(value) - limit) / limit
    return over


def total_score(workload_terms: list[dict[str, Any]], overuse: float, cfg: ScoreConfig,
                not_applicable: int = 0, baseline_same: float | None = None) -> dict[str, Any]:
    """An arm's Score from its workload terms and its budget overuse.

    ``workload_terms`` holds only the workloads the arm applied to: a "not
    applicable" workload has no term (it is neither a gain nor a missed SLO)
    and is counted in ``not_applicable``.  ``baseline_same``, the baseline's
    sum over the same workloads, gives ``relative`` = sum / baseline_same,
    the figure to compare arms that apply to different workloads by.
    """
    raw = sum(t["score"] for t in workload_terms)
    relative = raw / baseline_same if baseline_same else None
    return {"sum": raw, "budget_overuse": overuse, "lambda": cfg.lam,
            "score": raw - cfg.lam * overuse, "workloads": len(workload_terms),
            "not_applicable": not_applicable, "baseline_same": baseline_same,
            "relative": relative}
