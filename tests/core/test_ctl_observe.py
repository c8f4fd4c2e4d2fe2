"""schedcpctl's observation commands, explain of an untouched process, and watch's ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

from tests.harness import (
    CTL,
    ROOT,
    Procs,
    SchedcpdProcess,
    ctl,
    ctl_json,
    ctl_ok,
    run_as,
    wait_until,
    wait_workers_ready,
)


def test_summary(daemon: SchedcpdProcess) -> None:
    # Before the first sample the text says so (one call: a sample may land
    # between two, which made a check of "n" then of the text flaky).
    first = ctl_ok(daemon.address, "summary")
    if first.startswith("window "):  # a window is shown only over samples
        assert re.match(r"window [\d.]+ s, [1-9]\d* sample", first), first
    else:
        assert first.startswith("no samples yet"), first
    wait_until(lambda: ctl_json(daemon.address, "summary")["n"], 15, "a sample", interval=0.3)
    text = ctl_ok(daemon.address, "summary")
    assert text.startswith("window ") and "load:" in text and "PID" in text
    brief = ctl_json(daemon.address, "summary")
    assert {"cpu", "util", "load", "top"} <= set(brief)
    normal = ctl_json(daemon.address, "summary", "--detail", "normal")
    assert "cgroups" in normal and "cgroups" not in brief
    out = ctl(daemon.address, "summary", "--detail", "huge")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_probe_list_and_run(daemon: SchedcpdProcess) -> None:
    catalogue = ctl_json(daemon.address, "probe", "list")
    assert {"runqlat", "cswitch", "offcpu"} <= {p["name"] for p in catalogue}
    assert "runqlat" in ctl_ok(daemon.address, "probe", "list")
    out = ctl(daemon.address, "probe", "run", "cswitch", "--seconds", "0.5")
    assert out.returncode == 0, out.stderr
    assert "probe cswitch for 0.5 s ..." in out.stderr and "done in" in out.stderr
    assert out.stdout.startswith("probe cswitch") and "SWITCHES" in out.stdout
    result = ctl_json(daemon.address, "-q", "probe", "run", "runqlat", "--seconds", "0.5",
                     "--pid", str(os.getpid()))
    assert result["probe"] == "runqlat" and "histogram" in result
    out = ctl(daemon.address, "probe", "run", "no-such-probe", "--seconds", "0.5")
    assert out.returncode != 0 and "no-such-probe" in out.stderr


def test_perf(daemon: SchedcpdProcess) -> None:
    with Procs("schedcp-ctl-perf-") as procs:
        spin = procs.worker("spin")
        wait_workers_ready(procs.procs)
        out = ctl(daemon.address, "perf", "--pid", str(spin.pid), "--seconds", "0.5")
        assert out.returncode == 0, out.stderr
        assert f"perf stat of pid {spin.pid}" in out.stdout and "task-clock" in out.stdout
        assert "perf stat for 0.5 s ..." in out.stderr
        result = ctl_json(daemon.address, "-q", "perf", "--seconds", "0.5")
        assert result["events"]["task-clock"]["counted"] is True
    out = ctl(daemon.address, "perf", "--pid", "1", "--cgroup", "/", "--seconds", "1")
    assert out.returncode == 2  # one target at a time


def test_explain_an_untouched_process_and_access(daemon: SchedcpdProcess,
                                                 test_users: dict[str, int]) -> None:
    text = ctl_ok(daemon.address, "explain", str(os.getpid()))
    assert text.startswith(f"process {os.getpid()} (") and \
        text.endswith("): schedcp changed nothing on it\n"), text
    why = ctl_json(daemon.address, "explain", "1")
    assert why["subject"]["pid"] == 1 and why["values"] == []
    # As nobody (this checkout's schedcpctl): explain is an observe method.
    nobody = run_as(test_users["nobody"], [*CTL, "--bus", daemon.address, "--json", "explain",
                                           "1"], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert nobody.returncode == 0, nobody.stderr
    assert json.loads(nobody.stdout)["subject"]["pid"] == 1


def test_watch_ends(daemon: SchedcpdProcess) -> None:
    # --timeout alone: watching for that long is what was asked (0);
    # --count not reached before --timeout: 7.
    out = ctl(daemon.address, "watch", "--timeout", "0.3")
    assert out.returncode == 0 and out.stdout == "", out
    out = ctl(daemon.address, "watch", "--count", "1", "--timeout", "0.3")
    assert out.returncode == 7 and "with 0 of 1 changes" in out.stderr
    # Interrupted: SIGINT ends it cleanly (0).
    watcher = subprocess.Popen([*CTL, "--bus", daemon.address, "watch"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stderr is not None
    assert "watching DeploymentChanged" in watcher.stderr.readline()
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=30) == 0
    out = ctl(daemon.address, "watch", "--count", "0")
    assert out.returncode == 2
