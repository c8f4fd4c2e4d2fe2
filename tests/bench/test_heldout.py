"""Held-out workload files: parsing, clear errors, the driver's parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schedcp_bench import heldout

VALID = """
[[workload]]
name = "probe"
goal = "latency"
neighbours = [["python3", "-c", "while True: pass"]]
driver = ["python3", "{here}/probe.py", "--seed", "{seed}"]
pause = 0.1

[[workload.metric]]
name = "p99_us"
unit = "us"
better = "lower"
regex = 'p99=([0-9.]+)'
reduce = "max"

[[workload.metric]]
name = "ops"
unit = "1/s"
better = "higher"
regex = 'ops=(\\d+)'
weight = 0.5

[[workload.slo]]
metric = "p99_us"
op = "<="
value = 5000
"""


def test_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text(VALID)
    (wl,) = heldout.load(path)
    assert wl.name == "probe" and wl.goal == "latency"
    assert [m.name for m in wl.metrics] == ["p99_us", "ops"]
    assert wl.metrics[1].weight == 0.5 and wl.metrics[1].better == "higher"
    assert wl.slos[0].metric == "p99_us" and wl.slos[0].hard
    assert wl.unavailable() is None
    assert isinstance(wl, heldout.HeldoutWorkload)
    assert wl._subst(wl.spec.driver, tmp_path, 7) == ["python3", f"{tmp_path}/probe.py",
                                                       "--seed", "7"]


def test_parse_output_uses_the_regexes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(heldout.METRICS_ENV, json.dumps({"p99_us": r"p99=([0-9.]+)",
                                                        "ops": r"ops=(\d+)"}))
    assert heldout.parse_output("x p99=12.5 ops=30\n", "") == {"p99_us": 12.5, "ops": 30.0}
    assert heldout.parse_output("p99=1\n", "") == {"p99_us": 1.0, "missing": ["ops"]}


def _mutate(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


@pytest.mark.parametrize("text, needle", [
    ("", "no \\[\\[workload\\]\\] entries"),
    ("[[workload]\n", "not valid TOML"),
    (_mutate('goal = "latency"', 'goal = "speed"'), r"workload\[0\] \(probe\) field 'goal'"),
    (_mutate('name = "probe"', 'name = "a b"'), r"workload\[0\] field 'name'"),
    (_mutate('driver = ["python3", "{here}/probe.py", "--seed", "{seed}"]', 'driver = "x"'),
     r"\(probe\) field 'driver': expected a non-empty list"),
    (_mutate('driver = ["python3", "{here}/probe.py", "--seed", "{seed}"]\n', ''),
     r"field 'driver': required"),
    (_mutate('neighbours = [["python3", "-c", "while True: pass"]]',
             'neighbours = [["python3"], []]'), r"field 'neighbours\[1\]'"),
    (_mutate('better = "lower"', 'better = "less"'), r"metric\[0\] field 'better'"),
    (_mutate("regex = 'p99=([0-9.]+)'", "regex = 'p99=[0-9.]+'"),
     r"metric\[0\] field 'regex': needs exactly one group"),
    (_mutate("regex = 'p99=([0-9.]+)'", "regex = 'p99=(['"), r"field 'regex': invalid"),
    (_mutate('reduce = "max"', 'reduce = "p50"'), r"field 'reduce'"),
    (_mutate('weight = 0.5', 'weight = -1'), r"metric\[1\] field 'weight'"),
    (_mutate('metric = "p99_us"\nop', 'metric = "p50_us"\nop'),
     r"slo\[0\] field 'metric': 'p50_us' is not a metric"),
    (_mutate('op = "<="', 'op = "<"'), r"slo\[0\] field 'op'"),
    (_mutate('value = 5000', 'value = "fast"'), r"slo\[0\] field 'value'"),
    (_mutate('pause = 0.1', 'pause = -1'), r"field 'pause'"),
    (_mutate('pause = 0.1', 'paws = 1'), r"unknown field\(s\) paws"),
    (_mutate('name = "ops"', 'name = "p99_us"'), r"duplicate metric name\(s\) p99_us"),
    (VALID + VALID, r"duplicate workload name\(s\) probe"),
    ('[[workload]]\nname = "x"\ngoal = "latency"\ndriver = ["true"]\n',
     r"field 'metric': at least one"),
])
def test_errors_name_entry_and_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "h.toml"
    path.write_text(text)
    with pytest.raises(heldout.HeldoutError, match=needle) as err:
        heldout.load(path)
    assert str(path) in str(err.value)


def test_missing_file_and_missing_command(tmp_path: Path) -> None:
    with pytest.raises(heldout.HeldoutError, match="cannot read"):
        heldout.load(tmp_path / "nope.toml")
    path = tmp_path / "h.toml"
    path.write_text(VALID.replace('driver = ["python3"', 'driver = ["no-such-cmd-xyz"'))
    (wl,) = heldout.load(path)
    assert wl.unavailable() == "missing no-such-cmd-xyz"


def test_shipped_shared_box_file_loads_and_its_unit_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/heldout/shared-box.toml (the make -j beside load proof) parses and one
    unit of its driver builds the project and prints the metric its regex reads."""
    repo = Path(__file__).resolve().parents[2]
    (wl,) = heldout.load(repo / "bench" / "heldout" / "shared-box.toml")
    assert wl.name == "make-beside-spinners" and wl.goal == "makespan"
    assert wl.spec.roles == {"build": "driver", "batch": "neighbours"}
    assert len(wl.spec.neighbours) == 2
    argv = wl._subst(wl.spec.driver, tmp_path, 1)
    run = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120, check=True)
    assert (tmp_path / "proj" / "app").is_file()
    monkeypatch.setenv(heldout.METRICS_ENV,
                       json.dumps({m.metric.name: m.regex for m in wl.spec.metrics}))
    assert heldout.parse_output(run.stdout, run.stderr)["makespan_s"] > 0
