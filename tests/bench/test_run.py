"""End to end: schedcp-bench runs a held-out workload through a real daemon on a private bus.

The held-out file (written here, not shipped) defines a Python periodic
sleeper probe beside a spinning neighbour; the run compares kernel defaults
with the built-in ``latency-protect`` policy (submitted, verified, deployed,
rolled back through D-Bus), two repetitions of short windows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PROBE = """
import time
lat = []
end = time.monotonic() + 0.25
while time.monotonic() < end:
    t = time.monotonic()
    time.sleep(0.001)
    lat.append((time.monotonic() - t - 0.001) * 1e6)
lat.sort()
print(f"p50={lat[len(lat) // 2]:.1f} p99={lat[int(len(lat) * 0.99)]:.1f}")
"""

HELDOUT = """
[[workload]]
name = "sleeper-beside-spinner"
goal = "latency"
neighbours = [["{python}", "-c", "while True: pass"]]
driver = ["{python}", "{{here}}/probe.py"]
warmup = 0.5

[[workload.metric]]
name = "p99_us"
unit = "us"
better = "lower"
regex = 'p99=([0-9.]+)'

[[workload.metric]]
name = "p50_us"
unit = "us"
better = "lower"
regex = 'p50=([0-9.]+)'
weight = 0.5

[[workload.slo]]
metric = "p99_us"
op = "<="
value = 1e9
"""

# Short probation, and a lenient circuit breaker: this test examines the
# harness, not the breaker (tests/deploy does), and this shared host is noisy.
DAEMON_CONFIG = """[metrics]
enabled = false
[verifier]
dynamic_seconds = 1.0
[deployer]
baseline_seconds = 1.0
canary_seconds = 1.0
full_seconds = 1.0
backoff_seconds = 1
[breaker]
threshold = 50.0
absolute_floor_us = 100000.0
throughput_floor = 0.01
interactive_share = 0.01
stall_seconds = 20.0
"""


def _procs_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_heldout_run_default_vs_latency_protect(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    heldout = tmp_path / "heldout.toml"
    heldout.write_text(HELDOUT.format(python=sys.executable))
    daemon_conf = tmp_path / "schedcpd.toml"
    daemon_conf.write_text(DAEMON_CONFIG)
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "schedcp_bench", "run", "--heldout", str(heldout),
         "--arms", "default,policy:latency-protect", "--reps", "2", "--window", "1.5",
         "--bus", "private", "--daemon-config", str(daemon_conf), "--quiet-wait", "1",
         "--max-reruns", "0", "--out", str(out), "--no-progress",
         "--cache", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=360)
    assert run.returncode == 0, run.stdout + run.stderr

    results = json.loads((out / "results.json").read_text())
    assert results["env"]["kernel"] == os.uname().release
    assert results["daemon"]["kind"] == "private"
    assert results["arms"] == ["default", "policy:latency-protect"]
    (wl,) = results["workloads"]
    assert wl["status"] == "ok", wl.get("reason")
    assert set(wl["roles"]) == {"latency", "batch"}
    default, policy = wl["arms"]["default"], wl["arms"]["policy:latency-protect"]
    assert len(default["windows"]) == 2 and len(policy["windows"]) == 2
    assert all(w["metrics"]["p99_us"] is not None for w in default["windows"])
    assert all("foreign_during" in w for w in default["windows"])
    assert policy["info"]["groups"]["batch"] == wl["roles"]["batch"]
    deployed = [w for w in policy["windows"] if w.get("deploy", {}).get("state") == "active"]
    assert deployed, policy["windows"]
    for w in deployed:
        # rolled back after its window (or the daemon had already ended it)
        assert w["rollback"]["rolled_back"] or "already" in w["rollback"].get("note", ""), w
        assert w["metrics"]["p99_us"] is not None
    assert wl["rolled_back_at_cleanup"] == []
    assert "I" in wl["scores"]["policy:latency-protect"]["terms"]["p99_us"]
    assert set(results["scores"]) == {"default", "policy:latency-protect"}

    md = (out / "results.md").read_text()
    assert "## sleeper-beside-spinner" in md and "| p99_us (us) | lower |" in md
    assert len(results["plots"]) == 3
    for name in results["plots"]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    # nothing of the run is left: session processes, driver, daemon, bus
    assert _procs_mentioning(str(tmp_path)) == []
    assert _procs_mentioning(str(out)) == []
