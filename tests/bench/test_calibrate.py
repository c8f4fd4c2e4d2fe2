"""The SLO calibration tool measures a real workload and says how busy the host was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schedcp_bench import calibrate
from schedcp_bench.workloads.sort_join import SortJoin


def test_calibrate_one_window_of_a_real_workload(tmp_path: Path) -> None:
    out = calibrate.calibrate(SortJoin(), tmp_path / "cache", tmp_path / "run", windows=1,
                              window=1.0, seed=3)
    assert out["status"] == "ok" and out["name"] == "sort-join"
    fig = out["metrics"]["makespan_s"]
    assert fig["n"] == 1 and fig["median"] > 0 and fig["min"] == fig["max"] == fig["median"]
    assert out["foreign_cpus_median"] >= 0 and len(out["loadavg_before"]) == 3
    assert {"metric": "makespan_s", "op": "<=", "value": 20.0, "hard": True} in out["slos"]
    json.dumps(out)  # what --out writes


def test_unknown_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        calibrate.main(["--workloads", "no-such-thing"])
    assert exc.value.code == 2
    assert "unknown workload(s) no-such-thing" in capsys.readouterr().err
