"""The sched_ext guest host: this machine's schedcp booted on the guest kernel.

One boot (module fixture) runs every check as the job; the tests read its
report.  Under TCG here a boot takes 30-45 s (most of it schedcpd's start).
The fault tests start qemu but never wait for a boot.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler.microvm import MicroVM, guest, host, job, rootfs
from plugins.scheduler.microvm.guest import GuestResult

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NAME = "org.schedcp.Control1"


@pytest.fixture(scope="module")
def guest_host(vm: MicroVM) -> host.GuestHost:
    return host.GuestHost(vm).prepare()


LIVE: list[tuple[str, str]] = []  # what on_output saw during the shared boot


@pytest.fixture(scope="module")
def booted(guest_host: host.GuestHost) -> GuestResult:
    vtime = f"{guest_host.scx_dir()}/vtime.bpf.o"
    script = (
        job.command("state", ["cat", "/sys/kernel/sched_ext/state"])
        + job.command("owner", ["busctl", "--system", "status", NAME])
        + job.command("getstatus", ["busctl", "--system", "--json=short", "call", NAME,
                                    "/org/schedcp/Control1", "org.schedcp.Control1.Manager",
                                    "GetStatus"])
        + job.command("subsystems", ["schedcpctl", "subsystems"])
        + job.command("mounts", ["cat", "/proc/mounts"])
        + job.command("readonly", ["touch", f"{rootfs.venv_dir()}/written"])
        + job.command("scx", ["ls", guest_host.scx_dir() + "/"])
        + job.loader("attach", vtime, {"slice_us": 3000}, timeout_s=60,
                     command=["/bin/scx_workload", "1", "2", "1"])
        + job.command("after", ["cat", "/sys/kernel/sched_ext/state"])
        + host.command_script(["sh", "-c", "echo from the guest; exit 7"])
    )
    result = guest_host.run(script, timeout=600, boot_timeout=180,
                            on_output=lambda step, text: LIVE.append((step, text)))
    error = host.problem(result)
    assert error is None, f"{error}\n" + "\n".join(result.output.get("schedcpd-log", []))
    return result


def out(result: GuestResult, step: str) -> list[str]:
    exit_event = next(e for e in result.step(step) if e.get("event") == "exit")
    assert exit_event["status"] == 0, (step, result.output.get(step))
    return result.output.get(step, [])


def test_boots_the_verifier_kernel_from_the_image(booted: GuestResult, vm: MicroVM) -> None:
    assert vm.kernel is not None
    assert booted.kernel == vm.kernel.version
    root = [line.split() for line in out(booted, "mounts") if line.split()[1] == "/"]
    assert any(m[0] == "/dev/root" or m[0].startswith("/dev/nvme0n1") for m in root), root
    assert "ro" in root[-1][3].split(","), root
    # Writable tmpfs where the daemon writes; the image itself is read-only.
    mounts = {line.split()[1]: line.split()[2] for line in out(booted, "mounts")}
    for path in ("/run", "/tmp", "/var/lib/schedcp"):
        assert mounts.get(path) == "tmpfs", (path, mounts)
    assert mounts.get("/sys/fs/cgroup") == "cgroup2" and mounts.get("/sys/fs/bpf") == "bpf"
    readonly = next(e for e in booted.step("readonly") if e.get("event") == "exit")
    assert readonly["status"] != 0
    assert any("Read-only file system" in line for line in booted.output["readonly"])


def test_sched_ext_state_is_readable(booted: GuestResult) -> None:
    assert out(booted, "state") == ["disabled"]


def test_schedcpd_owns_its_name_on_the_system_bus(booted: GuestResult) -> None:
    assert booted.first("init", "schedcpd_ready") is not None
    fields = dict(line.split("=", 1) for line in out(booted, "owner") if "=" in line)
    assert fields.get("UID") == "0", fields
    assert "schedcpd --bus system" in fields.get("CommandLine", ""), fields
    venv_python = f"{rootfs.venv_dir()}/bin/python3"
    assert fields.get("CommandLine", "").startswith(venv_python), fields


def _status(booted: GuestResult) -> dict[str, Any]:
    reply = json.loads("".join(out(booted, "getstatus")))
    assert reply["type"] == "s"
    status: dict[str, Any] = json.loads(reply["data"][0])
    return status


def test_get_status_answers_on_the_guest_system_bus(booted: GuestResult) -> None:
    status = _status(booted)
    assert status["bus"] == "system"
    assert status["config_file"] == "/etc/schedcp/schedcpd.toml"
    assert status["state_dir"] == "/var/lib/schedcp"


def test_sched_ext_is_available_to_schedcpd(booted: GuestResult) -> None:
    caps = _status(booted)["subsystems"]["scheduler"]["capabilities"]
    assert caps["sched_ext"]["available"] is True, caps["sched_ext"]
    row = next(line.split() for line in out(booted, "subsystems") if " sched_ext " in line)
    assert row[:3] == ["scheduler", "sched_ext", "yes"], row


def test_built_schedulers_and_loader_are_in_the_image(booted: GuestResult,
                                                      vm: MicroVM) -> None:
    assert vm.artifacts is not None
    listed = set(out(booted, "scx"))
    assert {"scx_loader", "vtime.bpf.o", "latency.bpf.o"} <= listed, listed


def test_the_image_loader_attaches_a_built_scheduler(booted: GuestResult) -> None:
    events = {e.get("event"): e for e in booted.step("attach")}
    assert events["attached"]["state"] == "enabled", booted.step("attach")
    assert events["loader_exit"]["status"] == 0, booted.step("attach")
    assert out(booted, "after") == ["disabled"]


def test_command_output_and_status_come_back(booted: GuestResult) -> None:
    assert booted.output[host.COMMAND_STEP] == ["from the guest"]
    assert [t for s, t in LIVE if s == host.COMMAND_STEP] == ["from the guest"]
    assert host.summary(booted)["command_status"] == 7
    stopped = booted.first("init", "schedcpd_stopped")
    assert stopped is not None and stopped["status"] == 0, booted.output.get("schedcpd-log")
    assert booted.max_rss_kb > 0


def test_the_image_is_reused_when_nothing_changed(guest_host: host.GuestHost,
                                                  vm: MicroVM) -> None:
    assert guest_host.image is not None and vm.kernel and vm.artifacts
    before = guest_host.image.path.stat().st_mtime_ns
    again = rootfs.build(vm.cache, vm.kernel, vm.artifacts)
    assert again == guest_host.image
    assert again.path.stat().st_mtime_ns == before


def _record_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pids: list[int] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kwargs)
        pids.append(proc.pid)
        return proc

    monkeypatch.setattr(guest.subprocess, "Popen", popen)
    return pids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_guest_that_does_not_boot_is_a_named_error_and_qemu_is_gone(
        guest_host: host.GuestHost, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = _record_pids(monkeypatch)
    result = guest_host.run("true", boot_timeout=0.5)
    error = host.problem(result)
    assert error is not None and error.kind == "not-booted", error
    assert "did not boot within" in str(error)
    assert pids and all(_gone(pid) for pid in pids)


def test_keyboard_interrupt_kills_qemu(guest_host: host.GuestHost,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pids = _record_pids(monkeypatch)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(guest.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        guest_host.run("true")
    assert pids and all(_gone(pid) for pid in pids)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # that thread ended between the listing and the read
            continue
    return found


def test_qemu_dies_with_a_killed_caller(guest_host: host.GuestHost, tmp_path: Path) -> None:
    code = ("from plugins.scheduler.microvm import host\n"
            "host.GuestHost().run('true', timeout=300, boot_timeout=300)\n")
    # The caller's temporary directory: a SIGKILLed caller cannot remove its job
    # directory (schedcp-host-*), so it is left under the test's tmp_path, not in /tmp.
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                              env={**os.environ, "TMPDIR": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qemu: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not qemu and time.monotonic() < deadline and caller.poll() is None:
            qemu = [p for p in _children(caller.pid)
                    if Path(f"/proc/{p}/comm").read_text().startswith("qemu")]
            time.sleep(0.1)
        assert qemu, "the caller started no qemu"
    finally:
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in qemu) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in qemu)


def test_job_files_must_stay_inside_the_job_directory() -> None:
    with pytest.raises(ValueError, match="relative path"):
        host.job_archive("true", {"/etc/passwd": b"x"})
    with pytest.raises(ValueError, match="relative path"):
        host.job_archive("true", {"../x": b"x"})


def test_job_files_keep_the_executable_bit_of_a_program(tmp_path: Path) -> None:
    program, data = tmp_path / "prog", tmp_path / "data"
    program.write_bytes(b"\x7fELF")
    program.chmod(0o755)
    data.write_bytes(b"x")
    data.chmod(0o600)
    archive = host.job_archive("true", {"bin/prog": program, "data": data, "raw": b"x"})
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        modes = {m.name: m.mode for m in tar.getmembers() if m.isfile()}
    assert modes == {"run.sh": 0o755, "bin/prog": 0o755, "data": 0o644, "raw": 0o644}
