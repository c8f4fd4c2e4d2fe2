"""Rendering a results directory: results.json, results.md and valid PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schedcp_bench import report, runner, score
from schedcp_bench.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = [{"name": "p99_us", "unit": "us", "better": "lower", "weight": 1.0,
            "description": ""},
           {"name": "ops", "unit": "1/s", "better": "higher", "weight": 0.5,
            "description": ""}]
SLOS = [{"metric": "p99_us", "op": "<=", "value": 1000.0, "hard": True}]


def _windows(p99: list[float], ops: list[float]) -> list[dict[str, Any]]:
    return [{"rep": i, "metrics": {"p99_us": a, "ops": b},
             "foreign_during": {"foreign_cpus": 0.1}, "reruns": 0}
            for i, (a, b) in enumerate(zip(p99, ops, strict=True))]


def synthetic() -> dict[str, Any]:
    cfg = score.load_config()
    arms: dict[str, Any] = {
        "default": {"kind": "default", "status": "ok",
                    "windows": _windows([900, 1100, 1000], [100, 90, 110])},
        "agent": {"kind": "agent", "status": "ok",
                  "windows": _windows([10, 12, 9], [99, 95, 100]),
                  "info": {"backend": "offline", "saw": "a probe beside hogs",
                           "choice": {"base": "latency-protect", "rung": "configure",
                                      "reasoning": "hogs to SCHED_IDLE"},
                           "attempts": [{"base": "latency-protect", "state": "active"}],
                           "status": "goal met",
                           "cost": {"usd": 0.0, "tokens": 0, "seconds": 12.0}}},
    }
    wl: dict[str, Any] = {"name": "probe", "description": "a probe", "goal": "latency",
                          "track": "T1", "status": "ok", "metrics": METRICS, "slos": SLOS,
                          "arms": arms, "scores": {}}
    for entry in arms.values():
        entry["summary"] = runner.summarize(entry["windows"], ["p99_us", "ops"])
    base = {k: v["median"] for k, v in arms["default"]["summary"].items()}
    for name, entry in arms.items():
        cand = {k: v["median"] for k, v in entry["summary"].items()}
        wl["scores"][name] = score.workload_score("probe", METRICS, SLOS, base, cand, cfg)
    skipped = {"name": "redis", "status": "skipped", "reason": "missing redis-server",
               "metrics": [], "slos": [], "arms": {}, "scores": {}}
    results = {"suite": "quick", "track": "T1", "arms": ["default", "agent"],
               "options": {"reps": 3, "window": 3.0, "seed": 1},
               "config": cfg.as_dict(), "env": {"kernel": "6.x", "cpus": 2},
               "daemon": {"kind": "private"}, "seconds": 42.0,
               "workloads": [wl, skipped]}
    results["scores"] = runner.arm_scores(results["workloads"], ["default", "agent"], cfg)
    return results


def test_summarize_medians_with_spread() -> None:
    s = runner.summarize([*_windows([3, 1, 2], [5, 5, 5]), {"metrics": {"p99_us": None}}],
                         ["p99_us", "ops", "absent"])
    assert s["p99_us"] == {"median": 2, "min": 1, "max": 3, "n": 3}
    assert s["absent"]["median"] is None and s["absent"]["n"] == 0


def test_abba_order() -> None:
    arms = ["default", "policy:x", "agent"]
    assert runner.window_order(arms, 0) == ["agent", "policy:x", "default"]
    assert runner.window_order(arms, 1) == arms
    assert runner.window_order(arms, 2) == runner.window_order(arms, 0)


def test_write_renders_markdown_json_and_pngs(tmp_path: Path) -> None:
    data = synthetic()
    wins = data["workloads"][0]["arms"]["agent"]["windows"]
    wins[0]["not_restored"], wins[1]["not_restored"] = [], ["t1_probe 7: nice was 0, now 5"]
    results = report.write(data, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| p99_us (us) | lower | 1000 [900-1100] n=3 | 10 [9-12] n=3 | 100 |" in md
    assert ("- agent: **not restored** after 1 of 2 rollbacks (later windows ran on changed "
            "tasks): t1_probe 7: nice was 0, now 5") in md
    assert "default: **not restored**" not in md
    assert "latency-protect" in md and "configure" in md       # the agent's choice
    assert "redis: missing redis-server" in md
    assert "| agent |" in md                                   # the score table
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["scores"]["agent"]["score"] > loaded["scores"]["default"]["score"]
    assert set(results["plots"]) == {"ratios.png", "ratio-probe.png", "dist-probe.png"}
    for name in results["plots"]:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name


def test_report_command_rerenders(tmp_path: Path) -> None:
    report.write(synthetic(), tmp_path)
    for f in ("results.md", "ratios.png", "dist-probe.png"):
        (tmp_path / f).unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").is_file()
    assert (tmp_path / "dist-probe.png").read_bytes().startswith(PNG_MAGIC)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
