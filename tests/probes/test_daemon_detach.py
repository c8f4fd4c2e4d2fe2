"""Through the real daemon: a probe is detached when its time ends, when the
D-Bus caller disconnects, and when the daemon stops; bpftool is the judge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.harness import calls_as
from tests.probes.conftest import loaded_schedcp_objects, wait_until_loaded, wait_until_unloaded

MGR = "org.schedcp.Control1.Manager"


def _probe_call(address: str, name: str, seconds: float) -> subprocess.Popen[str]:
    """A D-Bus client (busctl, as root) waiting on RunProbe; killing it disconnects it."""
    return subprocess.Popen(
        ["busctl", f"--address={address}", "--timeout=300", "call", "org.schedcp.Control1",
         "/org/schedcp/Control1", MGR, "RunProbe", "sdi", name, str(seconds), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _progs() -> set[str]:
    return {n.split(":", 1)[1] for n in loaded_schedcp_objects() if n.startswith("prog:")}


def test_daemon_detaches_on_time_end_disconnect_and_stop(bpf_dir: Path, start_daemon) -> None:
    assert wait_until_unloaded() == [], "schedcp BPF objects left by an earlier test"
    proc = start_daemon()

    # 1. The time ends: the daemon answers and nothing stays loaded.
    outcome = calls_as(0, proc.address, [["RunProbe", "sdi", ["cswitch", 0.5, 0], MGR]])[0]
    assert "ok" in outcome, outcome
    assert json.loads(outcome["ok"])["probe"] == "cswitch"
    assert wait_until_unloaded() == []

    # 2. The caller disconnects mid-probe (asked for 10 minutes: capped at 60 s).
    client = _probe_call(proc.address, "runqlat", 600)
    try:
        assert wait_until_loaded(30), "the probe was never attached"
        assert _progs() == {"schedcp_rq_wake", "schedcp_rq_wnew", "schedcp_rq_sw"}
    finally:
        client.kill()
        client.communicate()
    assert wait_until_unloaded(30) == []
    assert proc.proc is not None and proc.proc.poll() is None, "the daemon must stay up"

    # 3. The daemon stops while a probe is attached.
    client = _probe_call(proc.address, "offcpu", 600)
    try:
        assert wait_until_loaded(30), "the probe was never attached"
        assert proc.stop() == 0, proc.log_text()
        assert wait_until_unloaded(30) == []
    finally:
        client.kill()
        client.communicate()
    assert "probe offcpu" in proc.log_text()
