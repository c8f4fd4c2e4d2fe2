"""Run inside the guest host: T1 policies with cgroup groups on cgroup v2, through D-Bus.

    python /run/job/cgroup_v2_scenario.py [STEP ...]

Shipped by tests/microvm/test_cgroup_v2_guest.py with the policies, the
tokens the host's daemon issued, its public key and schedcpd's
configuration (all in /run/job); the D-Bus client and the workload helpers
come from t2_guest_scenario.py beside it.  The guest's /init mounts cgroup2
(unified, the only hierarchy there).  Steps: ``weights`` (cpu.weight and
cpu.idle groups, deployed then rolled back), ``confine`` (cpuset.cpus and
cpu.max, deployed, then schedcpd killed with SIGKILL and started again: its
start-up restores from the journal).  Each step prints ``RESULT <step>
<json>`` with what the kernel showed before, while active and after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from t2_guest_scenario import CHILDREN, JOB, Client, read, report, spawn, stop

CGROUP = Path("/sys/fs/cgroup")


def cgroup_of(pid: int) -> str:
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "<none>"


def kernel_state(pids: dict[str, int]) -> dict[str, Any]:
    """What the kernel shows: the root's subtree_control, every top-level group, the targets."""
    groups = {}
    for path in sorted(CGROUP.iterdir()):
        if path.is_dir() and path.name.startswith("schedcp."):
            groups[path.name] = {name: read(path / name) for name in (
                "cpu.weight", "cpu.idle", "cpu.max", "cpuset.cpus", "cpuset.cpus.effective",
                "cgroup.procs")}
    targets = {name: {"pid": pid, "cgroup": cgroup_of(pid),
                      "affinity": sorted(os.sched_getaffinity(pid)),
                      "policy": os.sched_getscheduler(pid)}
               for name, pid in pids.items()}
    return {"subtree_control": read(CGROUP / "cgroup.subtree_control"),
            "controllers": read(CGROUP / "cgroup.controllers"),
            "groups": groups, "targets": targets}


async def deploy(client: Client, name: str) -> tuple[str, dict[str, Any]]:
    await client.ok("SubmitPolicy", "s", (JOB / f"{name}.toml").read_text())
    dep = await client.ok("Deploy", "s", (JOB / f"{name}.token").read_text().strip())
    info = await client.wait(dep, lambda i: i["state"] == "active", timeout=120)
    return dep, info


async def weights(client: Client) -> None:
    """cpu.weight (shares 4096) and cpu.idle groups: active, then rolled back."""
    # Both CPU-bound: the breaker guards them as throughput (build) and donor (idle).
    pids = {"build": spawn("v2-build", 0, 0.05), "idle": spawn("v2-idle", 0, 0.05),
            "other": spawn("v2-other", 0.01, 0.002)}
    before = kernel_state(pids)
    dep, info = await deploy(client, "weights")
    active = kernel_state(pids)
    rollback = await client.call("Rollback", "s", dep)
    after = kernel_state(pids)
    final = await client.deployment(dep)
    stop(list(pids.values()))
    report("weights", {"dep": dep, "before": before, "active": active, "after": after,
                       "info": info, "rollback": rollback, "final": final})


def schedcpd_pids() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and "bin/schedcpd" in read(proc / "cmdline").replace("\0", " "):
            found.append(int(proc.name))
    return found


async def confine(client: Client) -> None:
    """cpuset.cpus + cpu.max; schedcpd killed (SIGKILL) while active, started again."""
    pids = {"noisy": spawn("v2-noisy", 0, 0.05), "other": spawn("v2-other", 0.01, 0.002)}
    before = kernel_state(pids)
    dep, info = await deploy(client, "confine")
    active = kernel_state(pids)
    client.close()
    killed = schedcpd_pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while schedcpd_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    after_kill = kernel_state(pids)
    log = open("/run/schedcpd-restart.log", "w")  # the daemon keeps it open
    daemon = subprocess.Popen(["schedcpd", "--bus", "system", "--config",
                               str(JOB / "schedcpd.toml")], stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    ready = False
    while daemon.poll() is None and time.monotonic() < deadline:
        if subprocess.run(["busctl", "--system", "status", "org.schedcp.Control1"],
                          capture_output=True).returncode == 0:
            ready = True
            break
        await asyncio.sleep(0.2)
    after_restart = kernel_state(pids)
    await client.connect()
    final = await client.deployment(dep) if ready else {}
    # This daemon is ours, not /init's: stop it (its stop restores nothing more).
    daemon.send_signal(signal.SIGTERM)
    status = daemon.wait(timeout=60)
    stop(list(pids.values()))
    report("confine", {"dep": dep, "before": before, "active": active, "killed": killed,
                       "after_kill": after_kill, "ready": ready,
                       "after_restart": after_restart, "final": final, "info": info,
                       "restart_status": status,
                       "restart_log": read("/run/schedcpd-restart.log").splitlines()[-30:]})


STEPS = {"weights": weights, "confine": confine}


async def main(steps: list[str]) -> int:
    client = await Client().connect()
    try:
        for step in steps:
            started = time.monotonic()
            try:
                await STEPS[step](client)
            except Exception as err:  # the host test reports it with the step's name
                report(step, {"exception": f"{type(err).__name__}: {err}"})
            finally:
                stop(list(CHILDREN))
            print(f"step {step}: {time.monotonic() - started:.1f} s", flush=True)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:] or list(STEPS))))
