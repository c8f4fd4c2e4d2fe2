"""The score of seed 002, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schedcp_bench import runner, score

METRICS = [{"name": "p99_us", "better": "lower", "weight": 2.0},
           {"name": "rps", "better": "higher", "weight": 1.0}]
SLOS = [{"metric": "p99_us", "op": "<=", "value": 500.0, "hard": True},
        {"metric": "rps", "op": ">=", "value": 1000.0, "hard": False}]


def test_ratios_follow_the_direction() -> None:
    assert score.ratio(100.0, 50.0, "lower") == 2.0      # latency halved: I = 2
    assert score.ratio(100.0, 50.0, "higher") == 0.5     # throughput halved: I = 0.5
    assert score.ratio(None, 5.0, "lower") is None
    assert score.ratio(100.0, 0.0, "lower", max_ratio=10) == 10   # clamped
    assert score.ratio(1.0, 1000.0, "lower", max_ratio=10) == pytest.approx(0.1)
    assert score.ratio(0.0, 0.0, "lower") == 1.0


def test_workload_score_hand_computed() -> None:
    cfg = score.load_config()
    base = {"p99_us": 800.0, "rps": 1200.0}
    cand = {"p99_us": 400.0, "rps": 900.0}
    out = score.workload_score("w", METRICS, SLOS, base, cand, cfg)
    # 2.0 * 800/400 + 1.0 * 900/1200 = 4 + 0.75
    assert out["weighted_sum"] == pytest.approx(4.75)
    assert out["terms"]["p99_us"] == {"alpha": 2.0, "I": 2.0}
    # the soft SLO on rps is missed, the hard one met: the term counts
    assert out["hard_slos_met"] is True
    assert [s["met"] for s in out["slos"]] == [True, False]
    assert out["score"] == pytest.approx(4.75)


def test_a_missed_hard_slo_zeroes_the_term() -> None:
    cfg = score.load_config()
    out = score.workload_score("w", METRICS, SLOS, {"p99_us": 800.0, "rps": 1.0},
                               {"p99_us": 600.0, "rps": 2.0}, cfg)
    assert out["weighted_sum"] == pytest.approx(2.0 * 800 / 600 + 2.0)
    assert out["hard_slos_met"] is False
    assert out["score"] == 0.0


def test_missing_values_are_left_out_and_fail_slos() -> None:
    cfg = score.load_config()
    out = score.workload_score("w", METRICS, SLOS, {"p99_us": 800.0, "rps": None},
                               {"p99_us": None, "rps": None}, cfg)
    assert out["missing"] == ["p99_us", "rps"]
    assert out["weighted_sum"] == 0.0
    assert out["hard_slos_met"] is False


def test_budget_overuse_and_total() -> None:
    budget = {"usd": 0.5, "tokens": 1000.0, "seconds": 100.0}
    assert score.budget_overuse({"usd": 0.25, "tokens": 10, "seconds": 50}, budget) == 0.0
    # (1.0-0.5)/0.5 + (1500-1000)/1000 + 0 = 1.5
    assert score.budget_overuse({"usd": 1.0, "tokens": 1500, "seconds": 90}, budget) == \
        pytest.approx(1.5)
    cfg = score.ScoreConfig(lam=2.0)
    total = score.total_score([{"score": 3.0}, {"score": 0.0}, {"score": 1.5}], 1.5, cfg)
    assert total["sum"] == pytest.approx(4.5)
    assert total["score"] == pytest.approx(4.5 - 2.0 * 1.5)


def test_config_overrides_and_weights(tmp_path: Path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text('[score]\nlambda = 3.0\n[weights]\np99_us = 5.0\n"w2.p99_us" = 7.0\n'
                    '[budget]\nusd = 0.1\n')
    cfg = score.load_config(conf)
    assert cfg.lam == 3.0
    assert cfg.budget["usd"] == 0.1 and "tokens" in cfg.budget   # shipped keys kept
    assert cfg.alpha("w1", "p99_us", 1.0) == 5.0
    assert cfg.alpha("w2", "p99_us", 1.0) == 7.0                # workload.metric wins
    assert cfg.alpha("w1", "rps", 0.25) == 0.25                 # the declared weight


@pytest.mark.parametrize("text, needle", [
    ("[score]\nlamda = 1\n", "lamda"),
    ("[weights]\np99 = \"x\"\n", "weights.p99"),
    ("[budget]\ndollars = 1\n", "budget.dollars"),
    ("[budget]\nusd = 0\n", "budget.usd"),
    ("[other]\na = 1\n", "[other]"),
    ("not toml [", "s.toml"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text(text)
    with pytest.raises(score.ConfigError, match=needle.replace("[", r"\[")):
        score.load_config(conf)


def _workload_result(name: str, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A workload's result as the runner builds it, windows summarised."""
    for entry in arms.values():
        entry.setdefault("windows", [])
        entry["summary"] = runner.summarize(entry["windows"], ["p99_us", "rps"])
    return {"name": name, "metrics": METRICS, "slos": SLOS, "arms": arms, "scores": {},
            "status": "ok"}


def _win(p99: float, rps: float) -> dict[str, Any]:
    return {"metrics": {"p99_us": p99, "rps": rps}}


def test_not_applicable_is_no_term_and_no_missed_slo() -> None:
    """An arm that does not apply gets no term; its total counts it as n/a, not as 0."""
    cfg = score.load_config()
    applies = _workload_result("w1", {
        "default": {"status": "ok", "windows": [_win(800, 1200)]},
        "policy:p": {"status": "ok", "windows": [_win(400, 1200)]}})
    na = _workload_result("w2", {
        "default": {"status": "ok", "windows": [_win(100, 1200)]},
        "policy:p": {"status": "not applicable", "reason": "no processes for group batch"}})
    failed = _workload_result("w3", {
        "default": {"status": "ok", "windows": [_win(100, 1200)]},
        "policy:p": {"status": "error", "reason": "deploy failed"}})
    for r in (applies, na, failed):
        runner.score_workload(r, cfg)
    assert "policy:p" not in na["scores"]
    assert na["not_applicable"] == {"policy:p": "no processes for group batch"}
    # an error is not "not applicable": no medians, its hard SLO counts as missed
    assert failed["scores"]["policy:p"]["hard_slos_met"] is False
    assert failed["scores"]["policy:p"]["score"] == 0.0
    totals = runner.arm_scores([applies, na, failed], ["default", "policy:p"], cfg)
    pol, base = totals["policy:p"], totals["default"]
    # w1: 2.0 * 800/400 + 1.0 * 1200/1200 = 5; w3: 0 (error); w2: no term
    assert pol["sum"] == pytest.approx(5.0)
    assert pol["workloads"] == 2 and pol["not_applicable"] == 1
    assert base["workloads"] == 3 and base["not_applicable"] == 0
    # the baseline over the workloads the arm was scored on: w1 0 (its p99 800 misses
    # the hard SLO 500) + w3 3; its own total adds w2's 3
    assert pol["baseline_same"] == pytest.approx(3.0)
    assert pol["relative"] == pytest.approx(5.0 / 3.0)
    assert base["sum"] == pytest.approx(6.0)
    assert base["relative"] == pytest.approx(1.0)


def test_a_figure_that_reaches_zero_counts_at_its_floor() -> None:
    # t1-probe's missed_pct, quick suite 2026-12-07: 0.1 % -> 0 was clamped at
    # 100, a term (x 0.25) worth more than the rest of the suite.
    assert score.ratio(0.1, 0.0, "lower") == 100.0
    assert score.ratio(0.1, 0.0, "lower", floor=1.0) == 1.0
    assert score.ratio(4.0, 0.0, "lower", floor=1.0) == 4.0
    assert score.ratio(0.5, 2.0, "lower", floor=1.0) == 0.5
    cfg = score.ScoreConfig()
    metrics = [{"name": "missed_pct", "better": "lower", "weight": 0.25, "floor": 1.0}]
    term = score.workload_score("t1-probe", metrics, [], {"missed_pct": 0.1},
                                {"missed_pct": 0.0}, cfg)
    assert term["terms"]["missed_pct"]["I"] == 1.0
