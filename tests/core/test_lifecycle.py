"""Daemon lifecycle: sd_notify, reload (SIGHUP, file change, Reload), stop, exit codes."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import ROOT, PrivateBus, SchedcpdProcess, calls_as, wait_for_log


def status(proc: SchedcpdProcess) -> dict:
    return json.loads(calls_as(0, proc.address, [["GetStatus", "", []]])[0]["ok"])


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(20)
    yield sock, path
    sock.close()


def receive_until(sock: socket.socket, key: str) -> list[str]:
    seen: list[str] = []
    while True:
        msg = sock.recv(4096).decode()
        seen.extend(msg.split("\n"))
        if any(line.startswith(key) for line in seen):
            return seen


def test_sd_notify_ready_status_and_watchdog(start_daemon, notify_socket) -> None:
    sock, path = notify_socket
    proc = start_daemon(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}, wait=False)
    lines = receive_until(sock, "READY=1")
    # READY comes only once the name is owned.
    assert proc.owns_name()
    assert f"MAINPID={proc.proc.pid}" in lines
    lines = receive_until(sock, "STATUS=")
    assert any("serving org.schedcp.Control1" in x for x in lines)
    pings = 0
    deadline = time.monotonic() + 5
    while pings < 3 and time.monotonic() < deadline:
        pings += sock.recv(4096).decode().count("WATCHDOG=1")
    assert pings >= 3
    proc.stop()
    assert "STOPPING=1" in receive_until(sock, "STOPPING=1")


def test_reload_on_sighup_file_change_and_method(start_daemon) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\nmax_inflight_total = 100\n")
    proc.config.write_text("[metrics]\nenabled = false\n[bus]\nmax_inflight_total = 7\n")
    # The file watcher sees the edit by itself.
    wait_for_log(proc, "changed: bus.max_inflight_total")
    assert "reloading configuration (file change)" in proc.log_text()
    assert "reloading configuration (SIGHUP)" not in proc.log_text()
    proc.config.write_text("[metrics]\nenabled = false\n[daemon]\nlog_level = 'debug'\n")
    wait_for_log(proc, "daemon.log_level")
    # SIGHUP reloads on its own (the file is unchanged since the last reload).
    proc.proc.send_signal(signal.SIGHUP)
    wait_for_log(proc, "reloading configuration (SIGHUP)")
    wait_for_log(proc, "changed: nothing", after="(SIGHUP)")
    result = calls_as(0, proc.address, [["Reload", "", []]])[0]
    assert json.loads(result["ok"]) == {"changed": [], "restart_required": []}


def test_bad_config_on_reload_keeps_the_old_one(start_daemon) -> None:
    proc = start_daemon()
    proc.config.write_text("[metrics]\nenabled = false\n[bus]\nmax_inflight_total = -1\n")
    wait_for_log(proc, "reload failed, keeping the previous configuration")
    assert "bus.max_inflight_total = -1 must be > 0" in proc.log_text()
    result = calls_as(0, proc.address, [["Reload", "", []]])[0]
    assert result["error"] == "org.schedcp.Control1.Error.ConfigError"
    assert str(proc.config) in result["message"]
    assert proc.proc.poll() is None


def test_sigterm_stops_cleanly_and_releases_the_name(start_daemon) -> None:
    # An unknown key is warned about (naming it and the file) and not fatal.
    proc = start_daemon("[metrics]\nenabled = false\n[bus]\nfrobnicate = 1\n")
    assert f"{proc.config}: unknown key bus.frobnicate ignored" in proc.log_text()
    assert proc.stop(signal.SIGTERM) == 0
    assert not proc.owns_name()
    assert "stopped" in proc.log_text()


def test_sigterm_during_start_up_stops_cleanly(start_daemon) -> None:
    """SIGTERM while the daemon is still starting (plugins loaded, name not yet
    requested) stops it like any stop; it was the default action (killed by the
    signal) until the name was owned."""
    proc = start_daemon("[metrics]\nenabled = false\n", wait=False)
    wait_for_log(proc, "plugin scheduler loaded")
    assert proc.stop(signal.SIGTERM) == 0, proc.log_text()
    log = proc.log_text()
    assert "SIGTERM received; stopping" in log and "stopped" in log, log
    assert "Traceback" not in log
    assert not proc.owns_name()


def test_bad_config_at_start_exits_2_naming_key_and_file(start_daemon) -> None:
    proc2 = start_daemon("[metrics]\nport = 'x'\n", wait=False)
    assert proc2.proc.wait(20) == 2
    assert f"{proc2.config}: metrics.port = 'x' must be an integer" in proc2.log_text()


def test_second_daemon_exits_4_when_name_taken(start_daemon) -> None:
    first = start_daemon()
    second = start_daemon(address=first.address, wait=False)
    assert second.proc.wait(20) == 4
    assert "already owned" in second.log_text()
    assert first.proc.poll() is None


def test_second_daemon_on_the_same_state_dir_touches_nothing(start_daemon) -> None:
    first = start_daemon()
    with PrivateBus() as other_bus:
        second = start_daemon("[metrics]\nport = 0\n", address=other_bus.address,
                              state_dir=first.state_dir, wait=False)
        assert second.proc.wait(20) == 4
        assert f"another schedcpd is using {first.state_dir}" in second.log_text()
        assert "restored" not in second.log_text()
    assert first.proc.poll() is None


def test_bus_unreachable_exits_3(start_daemon, tmp_path: Path) -> None:
    proc = start_daemon("[metrics]\nport = 0\n", address=f"unix:path={tmp_path}/nobus",
                        wait=False)
    assert proc.proc.wait(20) == 3
    assert "cannot connect" in proc.log_text()


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_exporter(start_daemon) -> None:
    proc = start_daemon("[metrics]\nport = 0\n")
    for _ in range(3):
        calls_as(0, proc.address, [["GetStatus", "", []], ["GetAudit", "us", [0, ""]]])
    metrics = status(proc)["metrics"]
    assert metrics["address"] == "127.0.0.1"  # the default address
    port = metrics["port"]
    assert port in listening_ports(proc.proc.pid)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'schedcp_dbus_calls_total{method="GetStatus"}' in text
    assert 'schedcp_dbus_errors_total{error="InvalidArgument",method="GetAudit"} 3.0' in text
    assert 'schedcp_dbus_call_seconds_bucket{le="0.001",method="GetStatus"}' in text
    assert 'schedcp_dbus_call_seconds_count{method="GetAudit"} 3.0' in text
    from schedcpd import __version__
    assert f'schedcp_build_info{{python="{platform.python_version()}",' \
           f'version="{__version__}"}} 1.0' in text


def test_metrics_port_in_use_exits_2_naming_key_and_file(start_daemon) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = start_daemon(f"[metrics]\nport = {port}\n", wait=False)
        assert proc.proc.wait(30) == 2
    finally:
        taken.close()
    log = proc.log_text()
    assert f"{proc.config}: metrics.address = '127.0.0.1', metrics.port = {port}" in log
    assert "Traceback" not in log
    assert not proc.owns_name()


def test_metrics_can_be_turned_off(start_daemon) -> None:
    proc = start_daemon("[metrics]\nenabled = false\n")
    assert status(proc)["metrics"] is None
    assert listening_ports(proc.proc.pid) == set()


def test_cli_status_audit_and_exit_codes(start_daemon, test_users: dict[str, int]) -> None:
    from tests.harness import run_as

    proc = start_daemon()
    # The installed console script, as users run it.
    ctl = [str(Path(sys.executable).parent / "schedcpctl"), "--bus", proc.address]
    out = subprocess.run([*ctl, "status"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "schedcpd" in out.stdout and "PLUGIN" in out.stdout
    out = subprocess.run([*ctl, "--json", "status"], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(out.stdout)["pid"] == proc.proc.pid
    out = subprocess.run([*ctl, "subsystems"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert out.stdout.startswith("SUBSYSTEM") and "scheduler" in out.stdout
    out = subprocess.run([*ctl, "--json", "subsystems"], capture_output=True, text=True, cwd=ROOT)
    assert "capabilities" in json.loads(out.stdout)["scheduler"]
    subprocess.run([*ctl, "reload"], capture_output=True, text=True, cwd=ROOT, check=True)
    out = subprocess.run([*ctl, "audit"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "Reload" in out.stdout
    assert out.stdout.startswith("TIME") and "RESULT" in out.stdout.splitlines()[0]
    out = subprocess.run([*ctl, "--json", "audit", "--limit", "1"], capture_output=True,
                         text=True, cwd=ROOT)
    [record] = json.loads(out.stdout)
    assert record["method"] == "Reload" and record["result"] == "ok"
    # Observing is everyone's; the audit trail is admin's.
    assert run_as(test_users["nobody"], [*ctl, "status"]).returncode == 0
    denied = run_as(test_users["nobody"], [*ctl, "audit"])
    assert denied.returncode == 4, denied
    assert "access denied" in denied.stderr
    usage = subprocess.run([*ctl, "audit", "--limit", "0"], capture_output=True, text=True)
    assert usage.returncode == 2
    proc.stop()
    gone = subprocess.run([*ctl, "status"], capture_output=True, text=True, cwd=ROOT)
    assert gone.returncode == 3
    assert "not running" in gone.stderr
    nobus = subprocess.run([ctl[0], "--bus", "unix:path=/nonexistent/bus", "status"],
                           capture_output=True, text=True, cwd=ROOT)
    assert nobus.returncode == 3 and "cannot connect" in nobus.stderr


def test_daemon_keeps_numpy_out_of_its_process(daemon: SchedcpdProcess) -> None:
    """sqlite-utils would import numpy (+12 MB RSS) when the venv has it; the daemon never does."""
    try:
        import numpy  # noqa: F401  # the checkout's venv has it (bench plots)
    except ImportError:
        pytest.skip("numpy is not installed: nothing to keep out")
    calls_as(0, daemon.address, [["GetSummary", "s", ["brief"]]])  # repository, analysis used
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "/numpy" not in maps and "/pandas" not in maps
