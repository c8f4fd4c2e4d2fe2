"""Observation through the daemon: GetSummary, its gauges, feedback errors."""

from __future__ import annotations

import json
import time
import urllib.request

from tests.harness import calls_as

MGR = "org.schedcp.Control1.Manager"


def test_summary_over_dbus_and_gauges(start_daemon, test_users: dict[str, int]) -> None:
    proc = start_daemon("[metrics]\nport = 0\n[analysis]\nrate_hz = 5.0\n")
    time.sleep(1.5)  # a few samples
    brief, normal, bad = calls_as(test_users["nobody"], proc.address, [
        ["GetSummary", "s", ["brief"], MGR], ["GetSummary", "s", ["normal"], MGR],
        ["GetSummary", "s", ["everything"], MGR]])
    assert len(brief["ok"].encode()) <= 1024
    summary = json.loads(brief["ok"])
    assert summary and len(normal["ok"]) > len(brief["ok"])
    assert bad["error"] == "org.schedcp.Control1.Error.InvalidArgument"
    assert "brief" in bad["message"]
    status = json.loads(calls_as(0, proc.address, [["GetStatus", "", [], MGR]])[0]["ok"])
    port = status["metrics"]["port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "schedcp_load_average{" in text
    assert "schedcp_analysis_samples_total" in text


def test_feedback_of_unknown_deployment(start_daemon) -> None:
    proc = start_daemon()
    result = calls_as(0, proc.address, [["GetFeedback", "s", ["dep-000000000000"], MGR]])[0]
    assert result["error"] == "org.schedcp.Control1.Error.NotFound"


def test_run_probe_and_perf_stat_over_dbus(start_daemon) -> None:
    proc = start_daemon()
    probe, perf, listing = calls_as(0, proc.address, [
        ["RunProbe", "sdi", ["runqlat", 0.5, 0], MGR],
        ["RunPerfStat", "isd", [0, "", 0.3], MGR],
        ["ListProbes", "", [], MGR]])
    assert "ok" in probe, probe
    result = json.loads(probe["ok"])
    assert result["capped"] is False and result["seconds"] > 0
    assert "ok" in perf, perf
    assert {p["name"] for p in json.loads(listing["ok"])} >= {"runqlat", "cswitch", "offcpu"}
