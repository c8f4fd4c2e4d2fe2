"""The T2 track's job inside the sched_ext guest host: deploy each arm, run, measure, roll back.

    /opt/schedcp/venv/bin/python3 -m schedcp_bench.t2_guest /run/job/plan.json

Runs in the guest (plugins/scheduler/microvm/host.py) with this machine's
installed schedcp, against the guest's own schedcpd on its system bus.
:mod:`schedcp_bench.t2` writes the plan: the windows in order (arm,
workload, repetition), for each arm window the policy text and the token
the host's daemon signed when it verified it (the guest's schedcpd trusts
that key), and the workload commands.  A window:

1. snapshot of sched_ext (state, ops, tasks in ``SCHED_EXT``, loaders);
2. for a policy arm: SubmitPolicy, Deploy with the token, wait until the
   deployment is ``active`` (or ended: then the window is not measured);
3. the workload command ``units`` times, each parsed by the workload's own
   parser (the T1 workload modules), with sched_ext's state while it ran;
4. Rollback, wait until the deployment has ended, snapshot again: anything
   not back as it was before (sched_ext enabled, a task left in
   ``SCHED_EXT``, a loader alive) is listed in ``not_restored``.

Each window prints ``RESULT window <json>``; the host reads them from the
console (``@@OUT:cmd`` lines).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from schedcp_agent.client import DaemonError, SchedcpClient
from schedcp_bench.arms import deployment_info, rollback

ADDRESS = "unix:path=/run/dbus/system_bus_socket"
SCX = Path("/sys/kernel/sched_ext")
SCHED_EXT = 7
ENDED = ("reverted", "failed")


def read(path: Path | str) -> str:
    """A sysfs/procfs file's text, or ``<error>`` when it cannot be read."""
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        return f"<{err.strerror}>"


def _policy_of(task: Path) -> int | None:
    for line in read(task / "sched").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "policy":
            return int(value.strip())
    return None


def snapshot() -> dict[str, Any]:
    """sched_ext's state and ops, the threads in SCHED_EXT, the loaders running."""
    in_ext, loaders = [], []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        if read(proc / "comm") == "scx_loader":
            loaders.append(int(proc.name))
        for task in (proc / "task").glob("*"):
            if _policy_of(task) == SCHED_EXT:
                in_ext.append(f"{read(task / 'comm')}:{task.name}")
    return {"state": read(SCX / "state"), "ops": read(SCX / "root" / "ops"),
            "switch_all": read(SCX / "switch_all"), "in_ext": sorted(in_ext),
            "loaders": loaders}


def not_restored(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a rolled-back window left different from the state before it."""
    out = []
    if after["state"] != before["state"]:
        out.append(f"sched_ext state {before['state']} -> {after['state']}")
    if after["in_ext"]:
        out.append(f"{len(after['in_ext'])} threads still in SCHED_EXT: {after['in_ext'][:5]}")
    if after["loaders"]:
        out.append(f"loader(s) still running: {after['loaders']}")
    return out


def run_units(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the workload command ``spec['units']`` times; (parsed records, errors)."""
    module, _, name = spec["parser"].partition(":")
    parse = getattr(importlib.import_module(module), name)
    records, errors = [], []
    for _ in range(int(spec["units"])):
        t0 = time.monotonic()
        done = subprocess.run(spec["argv"], capture_output=True, text=True,
                              timeout=float(spec.get("timeout", 300)), check=False)
        seconds = time.monotonic() - t0
        try:
            if done.returncode != 0:
                raise ValueError(f"exit status {done.returncode}: {done.stderr[-300:]}")
            rec = dict(parse(done.stdout, done.stderr))
        except ValueError as err:
            errors.append(str(err))
            continue
        rec["unit_seconds"] = round(seconds, 3)
        rec["sched_ext"] = read(SCX / "state")
        records.append(rec)
    return records, errors


def medians(records: list[dict[str, Any]], names: list[str]) -> dict[str, float | None]:
    """Each metric's median over the units that reported it (None when none did)."""
    out: dict[str, float | None] = {}
    for name in names:
        vals = [float(r[name]) for r in records if isinstance(r.get(name), int | float)]
        out[name] = statistics.median(vals) if vals else None
    return out


async def deploy(client: SchedcpClient, window: dict[str, Any], job: Path,
                 timeout: float) -> tuple[str | None, dict[str, Any]]:
    """Submit the arm's policy and deploy it with its token; wait until active or ended."""
    t0 = time.monotonic()
    await client.call("SubmitPolicy", (job / window["policy"]).read_text())
    dep = str(await client.call("Deploy", (job / window["token"]).read_text().strip()))
    info: dict[str, Any] = {}
    while time.monotonic() - t0 < timeout:
        info = dict(await client.call("GetDeployment", dep))
        if info["state"] == "active" or info["state"] in ENDED:
            break
        await asyncio.sleep(0.2)
    return dep, {"deployment": dep, "state": info.get("state"), "reason": info.get("reason"),
                 "seconds": round(time.monotonic() - t0, 2)}


async def end(client: SchedcpClient, dep: str, timeout: float = 60.0) -> dict[str, Any]:
    """Roll ``dep`` back and wait until the daemon says it ended."""
    out = await rollback(client, dep)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = await deployment_info(client, dep)
        if info["state"] in (*ENDED, "unknown"):
            out["final"] = info
            break
        await asyncio.sleep(0.2)
    return out


async def run_window(client: SchedcpClient, window: dict[str, Any], plan: dict[str, Any],
                     job: Path) -> dict[str, Any]:
    """One measured window (see the module's docstring)."""
    spec = plan["workloads"][window["workload"]]
    record: dict[str, Any] = {k: window[k] for k in ("rep", "position", "arm", "workload")}
    before = snapshot()
    record["before"] = {k: before[k] for k in ("state", "ops")}
    dep: str | None = None
    t0 = time.monotonic()
    try:
        if window.get("token"):
            dep, record["deploy"] = await deploy(client, window, job,
                                                 float(plan.get("deploy_timeout", 120)))
            if record["deploy"]["state"] != "active":
                record["error"] = (f"deploy: deployment {record['deploy']['state']}: "
                                   f"{record['deploy']['reason']}")
                return record
        record["during"] = {k: v for k, v in snapshot().items() if k != "in_ext"}
        records, errors = await asyncio.to_thread(run_units, spec)
        record.update(units=records, unit_errors=errors,
                      metrics=medians(records, spec["metrics"]))
        if dep:
            record["deployment_after"] = await deployment_info(client, dep)
    except (DaemonError, OSError, subprocess.TimeoutExpired) as err:
        record["error"] = f"{type(err).__name__}: {err}"
    finally:
        record["seconds"] = round(time.monotonic() - t0, 2)
        if dep:
            record["rollback"] = await end(client, dep)
            record["not_restored"] = not_restored(before, snapshot())
    return record


async def main(plan_path: Path) -> int:
    """Every window of the plan, in order; one RESULT line each."""
    plan = json.loads(plan_path.read_text())
    job = plan_path.parent
    async with SchedcpClient(ADDRESS) as client:
        for window in plan["windows"]:
            try:
                record = await run_window(client, window, plan, job)
            except Exception as err:  # the host reports it with the window
                record = {**window, "error": f"{type(err).__name__}: {err}"}
            print(f"RESULT window {json.dumps(record)}", flush=True)
    print(f"RESULT end {json.dumps({'final': snapshot()})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else
                                   "/run/job/plan.json"))))
