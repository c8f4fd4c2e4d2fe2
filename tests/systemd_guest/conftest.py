"""Fixtures for the systemd guest: the .deb (this build, a previous one), the image, one boot.

The .deb is tests/conftest.py's ``built_deb`` (one packaging/build-deb per
session, or ``$SCHEDCP_DEB``); "the previous build" its ``previous_deb``
(the same package with a lower version), installed first and upgraded
under systemd with SCHEDCP_GUEST_UPGRADE=1.  The tests skip, with the reason,
when the kernel or the Debian packages cannot be downloaded (no network)
or when not root (mmdebstrap, qemu's disk).

``booted`` is the one boot every test of this directory reads:
scenario.sh (the service's life under systemd, polkit, the agent's unit,
the purge) with cgroups.sh before the purge (test_systemd_cgroups.py).  Under
TCG here a boot, an apt install and the ~40 steps take about 10 minutes;
one boot instead of two saves the boot, the install and the shutdown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from plugins.scheduler.microvm import FetchError, MicroVM
from plugins.scheduler.microvm import systemd_guest as sg
from plugins.scheduler.microvm.guest import GuestResult
from plugins.scheduler.microvm.systemd_guest import SystemdGuest
from tests.harness import ROOT, PrivateBus, SchedcpdProcess
from tests.microvm.test_cgroup_v2_guest import CONFINE, WEIGHTS
from tests.microvm.test_t2_guest import VTIME, _call

HERE = Path(__file__).resolve().parent
POLICY = ROOT / "policies" / "latency-protect.toml"
# The upgrade doubles the package work (~2-4 min more under TCG here): opt-in.
UPGRADE_ENV = "SCHEDCP_GUEST_UPGRADE"
#: with "1": the guest also runs schedcp-agent.service (~90 s of TCG; not in CI)
AGENT_ENV = "SCHEDCP_GUEST_AGENT"
MIXED = """[policy]
name = "v2-mixed"
description = "a weighted target whose unit also runs a shell (refused under systemd)"
track = "T1"

[[group]]
name = "mixed"
match = { comm = ["v2-mixed"] }
descendants = false
cgroup = { shares = 2048 }
"""
# Step ``good`` proves the packaged unit runs the sched_ext loader and gives
# every task its class back; that the breaker reverts vtime on a latency
# regression is test_t2_guest.py's (run alone).  This boot runs beside the
# host lane of ./scripts/test, whose CPU hogs stall the TCG guest for
# milliseconds (a probe's median wait once went 17 -> 1917 us there), so the
# policy states that it accepts any wait and guards only the targets' CPU
# (the breaker's stall and loader-health guards apply as always).
VTIME_BESIDE_LOAD = VTIME.split("# Under TCG")[0] + """
[[guard]]
group = "probe"
metric = "cpu_share"
min_ratio = 0.05

[[guard]]
group = "batch"
metric = "cpu_share"
min_ratio = 0.05
"""


def _run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def systemd_guest() -> SystemdGuest:
    if os.geteuid() != 0:
        pytest.skip("building the Debian image and booting it need root")
    try:
        return SystemdGuest().prepare()
    except FetchError as err:
        pytest.skip(f"cannot download the guest kernel or the Debian packages: {err}")


@pytest.fixture(scope="session")
def verified(vm: MicroVM) -> dict[str, Any]:
    """The host's daemon verifies the cgroup scenario's policies (weights twice: one use a token).

    vtime (T2) is verified in the micro-VM; the job brings the loader and
    the object that verification loaded.
    """
    # The tokens are used up to ~20 minutes later, at the end of the boot.
    config = "[metrics]\nenabled = false\n[bus]\ncall_timeout_seconds = 400\n" \
             "[verifier]\ndynamic_seconds = 1.0\ntoken_lifetime_seconds = 3600.0\n"
    with PrivateBus() as bus, SchedcpdProcess(bus.address, config) as proc:
        out: dict[str, Any] = {}
        for name, text in (("weights", WEIGHTS), ("weights2", WEIGHTS), ("confine", CONFINE),
                           ("mixed", MIXED), ("vtime", VTIME_BESIDE_LOAD)):
            policy_id = _call(bus.address, "SubmitPolicy", "s", text)
            token, report = _call(bus.address, "VerifyPolicy", "s", policy_id, timeout=420)
            assert token, report[:4000]
            out[name] = token
        keys = sorted((proc.state_dir / "keys").glob("*.pub"))
        assert len(keys) == 1, keys
        out["key"] = (keys[0].name, keys[0].read_bytes())
        assert vm.artifacts is not None
        vtime = vm.artifacts.objects["vtime"].read_bytes()
        out[f"verified/{hashlib.sha256(vtime).hexdigest()}.bpf.o"] = vtime
        out["scx_loader"] = Path(vm.artifacts.binaries["scx_loader"])
    return out


def _job_files(deb: Path, previous: Path | None,
               verified: dict[str, Any]) -> dict[str, Path | bytes]:
    """scenario.sh's files, and cgroups.sh's with the policies and tokens of ``verified``."""
    files: dict[str, Path | bytes] = {f"new/{deb.name}": deb, "policy.toml": POLICY}
    if previous is not None:
        files[f"prev/{previous.name}"] = previous
    files.update({
        "cgroups.sh": HERE / "cgroups.sh",
        "systemd_cgroup_scenario.py": HERE / "systemd_cgroup_scenario.py",
        "t2_guest_scenario.py": ROOT / "tests" / "microvm" / "t2_guest_scenario.py",
        "weights.toml": WEIGHTS.encode(), "confine.toml": CONFINE.encode(),
        "mixed.toml": MIXED.encode(), "vtime.toml": VTIME_BESIDE_LOAD.encode(),
        **{f"{name}.token": verified[name].encode()
           for name in ("weights", "weights2", "confine", "mixed", "vtime")},
        **{k: v for k, v in verified.items() if k.startswith("verified/")},
        "scx_loader": verified["scx_loader"],
        f"keys/{verified['key'][0]}": verified["key"][1],
        # SCHEDCP_GUEST_STEPS="good crash" runs only those of cgroups.sh (diagnosis).
        "steps": os.environ.get("SCHEDCP_GUEST_STEPS", "").encode(),
        "agent": b"1" if os.environ.get(AGENT_ENV) == "1" else b"",
    })
    return files


@pytest.fixture(scope="session")
def booted(systemd_guest: SystemdGuest, built_deb: Path, verified: dict[str, Any],
           tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> GuestResult:
    """The one boot: scenario.sh (and cgroups.sh) run in the guest; its report."""
    base = tmp_path_factory.getbasetemp()
    previous = (request.getfixturevalue("previous_deb") if os.environ.get(UPGRADE_ENV) == "1"
                else None)
    files = _job_files(built_deb, previous, verified)
    # The guest's output as it comes, and its whole report at the end, for diagnosis.
    with open(base / "systemd-guest.log", "w") as live:
        def show(step: str, text: str) -> None:
            live.write(f"{time.monotonic():.1f} {step} {text}\n")
            live.flush()

        result = systemd_guest.run((HERE / "scenario.sh").read_text(), files, timeout=2400,
                                   on_output=show)
    (base / "systemd-guest.json").write_text(json.dumps(dataclasses.asdict(result), indent=1))
    figures = sg.summary(result)
    start, unit = result.first("start", "start"), result.first("start", "unit")
    if start and unit:  # `systemctl start` to active (READY=1), guest clock
        figures["schedcpd_start_s"] = round(int(unit["active_us"]) / 1e6 - start["uptime_s"], 2)
    for step in ("install-prev", "install", "scenario", "purge"):
        began, ended = result.first(step, "start"), result.first(step, "exit")
        if began and ended and result.arrived.get(step):
            figures[f"{step}_s"] = round(result.arrived[step][-1] - result.arrived[step][0], 1)
    print("systemd guest figures:", json.dumps(figures))  # with -rP
    for line in result.output.get("scenario", []):
        if line.startswith("step "):
            print(line)  # the cgroup scenario's steps and their times
    error = sg.problem(result)
    assert error is None, f"{error}\n" + "\n".join(result.console_tail[-30:])
    return result
