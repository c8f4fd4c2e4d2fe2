"""bench/t1_latency.py still builds, runs and deploys its policy (no speed asserted)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "t1_latency.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("t1_latency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["t1_latency"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (apt: gcc libc6-dev)")
def test_bench_runs_both_modes(tmp_path: Path) -> None:
    bench = _load()
    probe, hog = bench.build(tmp_path / "cache")
    daemon = bench.DaemonApplier()  # a private bus and schedcpd of its own
    try:
        runs = [bench.run_once(probe, hog, 0.5, mode, daemon, 0) for mode in ("policy", "default")]
        # The policy run went through Deploy: one deployment, active, then ended.
        [dep] = json.loads(daemon.call("ListDeployments"))
        events = json.loads(daemon.call("GetDeployment", "s", dep["id"]))["events"]
        assert [e["state"] for e in events][:4] == ["pending", "canary", "canary", "active"]
        assert events[-1]["state"] == "reverted"
    finally:
        daemon.close()
    for run in runs:
        assert run["samples"] > 0 and run["hog_iter_per_s"] > 0
    summary = bench.summarize(runs)
    assert {"wake_p99_improvement_x", "hog_loss_percent"} <= set(summary)
    assert bench.percentile([1, 2, 3, 4], 50) == 2.0
