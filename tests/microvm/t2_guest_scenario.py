"""Run inside the sched_ext guest host: T2 deployments through D-Bus, as a user would.

    /opt/schedcp/venv/bin/python /run/job/t2_guest_scenario.py [STEP[=ARG] ...]

Shipped by tests/microvm/test_t2_guest.py with the policies, the tokens the
host's daemon issued when it verified them, its public key and schedcpd's
configuration (all in /run/job).  Steps: ``tamper`` (a token refused for
another object), ``good`` (canary on the targets, widened, rolled back),
``regression`` (the breaker reverts a starving scheduler), ``eject`` (the
kernel's watchdog ejects a never-dispatching scheduler and the breaker
reverts), ``crash`` (schedcpd killed with SIGKILL mid-canary and restarted
in the same guest: the orphaned loader is stopped).  Each step prints
one line ``RESULT <step> <json>`` with what it saw; the host test asserts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType

from schedcpd.const import BUS_NAME, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus

JOB = Path("/run/job")
ADDRESS = "unix:path=/run/dbus/system_bus_socket"
SCX = Path("/sys/kernel/sched_ext")
SCX_DIR = "/usr/local/lib/schedcp/scx"
SCHED_EXT = 7


def report(step: str, data: dict[str, Any]) -> None:
    print(f"RESULT {step} {json.dumps(data)}", flush=True)


def read(path: Path | str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        return f"<{err.strerror}>"


# -- workloads: forked children with a comm of their own ---------------------


def _work(name: str, period_s: float, burst_s: float) -> None:
    Path("/proc/self/comm").write_text(name)
    while True:
        if period_s:
            time.sleep(period_s)
        end = time.perf_counter() + burst_s
        while time.perf_counter() < end:
            pass


CHILDREN: list[int] = []


def spawn(name: str, period_s: float, burst_s: float, policy: int | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        # Off the job's output pipe: the guest waits for every writer to close it.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            if policy is not None:
                os.sched_setscheduler(0, policy, os.sched_param(0))
            _work(name, period_s, burst_s)
        finally:
            os._exit(0)
    CHILDREN.append(pid)
    deadline = time.monotonic() + 10
    while read(f"/proc/{pid}/comm") != name and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def stop(pids: list[int]) -> None:
    for pid in pids:
        if pid in CHILDREN:
            CHILDREN.remove(pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def sched_fields(tid_dir: Path) -> dict[str, int]:
    out = {}
    for line in read(tid_dir / "sched").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("policy", "ext.enabled"):
            out[key.strip()] = int(value.strip())
    return out


def snapshot(pids: dict[str, int]) -> dict[str, Any]:
    """Each named process's threads (policy, ext.enabled), sched_ext's state, all SCHED_EXT."""
    procs = {}
    for name, pid in pids.items():
        procs[name] = [sched_fields(t) for t in sorted(Path(f"/proc/{pid}/task").iterdir())]
    in_ext = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for task in (proc / "task").glob("*"):
                if sched_fields(task).get("policy") == SCHED_EXT:
                    in_ext.append(f"{read(task / 'comm')}:{task.name}")
    loaders = [read(p / "cmdline").replace("\0", " ").strip()
               for p in Path("/proc").iterdir()
               if p.name.isdigit() and read(p / "comm") == "scx_loader"]
    return {"procs": procs, "state": read(SCX / "state"), "ops": read(SCX / "root" / "ops"),
            "switch_all": read(SCX / "switch_all"), "in_ext": sorted(in_ext),
            "loaders": loaders}


# -- D-Bus -------------------------------------------------------------------


class Client:
    def __init__(self) -> None:
        self.bus: MessageBus | None = None

    async def connect(self) -> Client:
        self.bus = await MessageBus(bus_address=ADDRESS).connect()
        return self

    async def call(self, member: str, signature: str = "", *body: Any) -> dict[str, Any]:
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination=BUS_NAME, path=OBJECT_PATH, interface="org.schedcp.Control1.Manager",
            member=member, signature=signature, body=list(body)))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            return {"error": reply.error_name, "message": reply.body[0] if reply.body else ""}
        return {"ok": reply.body[0] if len(reply.body) == 1 else reply.body}

    async def ok(self, member: str, signature: str = "", *body: Any) -> Any:
        result = await self.call(member, signature, *body)
        if "ok" not in result:
            raise RuntimeError(f"{member}: {result}")
        return result["ok"]

    async def deployment(self, dep: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(await self.ok("GetDeployment", "s", dep))
        return info

    async def wait(self, dep: str, check: Any, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = await self.deployment(dep)
            if check(info) or info["state"] in ("reverted", "failed"):
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployment {dep} stuck: {info['events']}")
            await asyncio.sleep(0.2)

    def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()


def token(name: str) -> str:
    return (JOB / f"{name}.token").read_text().strip()


def reasons(info: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in info["events"]]


# -- steps ---------------------------------------------------------------------


async def tamper(client: Client) -> None:
    """The vtime token, presented while the object on disk is another one."""
    await client.ok("SubmitPolicy", "s", (JOB / "vtime.toml").read_text())
    real = os.path.realpath(SCX_DIR)
    fake = Path("/tmp/scx-tampered")
    shutil.copytree(real, fake)
    with open(fake / "vtime.bpf.o", "ab") as obj:
        obj.write(b"\0tampered")
    subprocess.run(["mount", "--bind", str(fake), real], check=True)
    try:
        refused = await client.call("Deploy", "s", token("vtime"))
    finally:
        subprocess.run(["umount", real], check=True)
    report("tamper", {"refused": refused, "state": read(SCX / "state")})


async def good(client: Client) -> None:
    """vtime on its targets (partial switch), widened, then rolled back."""
    pids = {"probe": spawn("t2-probe", 0.002, 0.0002),
            "batch": spawn("t2-batch", 0.02, 0.0002, os.SCHED_BATCH),
            "other": spawn("t2-other", 0.005, 0.0001)}
    await client.ok("SubmitPolicy", "s", (JOB / "vtime.toml").read_text())
    before = snapshot(pids)
    dep = await client.ok("Deploy", "s", token("vtime"))
    info = await client.wait(dep, lambda i: i["state"] == "canary")
    canary = snapshot(pids)
    info = await client.wait(dep, lambda i: any("widened" in r for r in reasons(i)))
    widened = snapshot(pids)
    info = await client.wait(dep, lambda i: i["state"] == "active")
    rollback = await client.call("Rollback", "s", dep)
    after = snapshot(pids)
    final = await client.deployment(dep)
    stop(list(pids.values()))
    report("good", {"before": before, "canary": canary, "widened": widened, "after": after,
                    "rollback": rollback, "deployment": final, "active": info})


async def regression(client: Client, name: str = "latency") -> None:
    """latency with a 100 ms slice and no preemption: the probe waits behind two hogs.

    ``name`` picks the policy and token (``regression=latency-3`` runs
    latency-3.toml with latency-3.token: bench/breaker.py --kind scx-guest
    injects one fresh policy version after another in one boot).
    """
    pids = {"probe": spawn("t2-lprobe", 0.002, 0.0002),
            "hog1": spawn("t2-hog", 0, 1.0), "hog2": spawn("t2-hog", 0, 1.0)}
    policy_id = await client.ok("SubmitPolicy", "s", (JOB / f"{name}.toml").read_text())
    dep = await client.ok("Deploy", "s", token(name))
    try:
        info = await client.wait(dep, lambda i: False, timeout=120)
    except RuntimeError:  # not reverted in time: missed; roll back for the next step
        await client.call("Rollback", "s", dep)
        info = {**await client.deployment(dep), "state": "missed"}
    after = snapshot(pids)
    history = json.loads(await client.ok("GetPolicyHistory", "s", policy_id))
    stop(list(pids.values()))
    report("regression" if name == "latency" else f"regression={name}",
           {"deployment": info, "after": after, "history": history})


async def eject(client: Client) -> None:
    """never_dispatch on one target: the kernel's watchdog ejects it, the breaker reverts.

    A thread polls sched_ext's state every 5 ms so the report can say when the
    kernel let go of the scheduler; the deployment's trip says when the breaker
    decided (both wall clock, same guest).
    """
    pids = {"stuck": spawn("t2-eprobe", 0.002, 0.0002)}
    policy_id = await client.ok("SubmitPolicy", "s", (JOB / "eject.toml").read_text())
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            state = read(SCX / "state")
            if state == "enabled":
                seen.setdefault("enabled", time.time())
            elif "enabled" in seen and "left" not in seen:
                seen["left"] = time.time()
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        dep = await client.ok("Deploy", "s", token("eject"))
        info = await client.wait(dep, lambda i: False, timeout=120)
    finally:
        done.set()
        watcher.join()
    after = snapshot(pids)
    history = json.loads(await client.ok("GetPolicyHistory", "s", policy_id))
    stop(list(pids.values()))
    report("eject", {"deployment": info, "after": after, "history": history,
                     "enabled_at": seen.get("enabled"), "ejected_at": seen.get("left"),
                     "dmesg": [ln for ln in subprocess.run(
                         ["dmesg"], capture_output=True, text=True).stdout.splitlines()
                         if "sched_ext" in ln][-4:]})


def _schedcpd() -> int:
    """The pid of the running schedcpd (the one /init started, or a restart)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and "schedcpd" in read(proc / "cmdline").replace("\0", " ") \
                and "--bus" in read(proc / "cmdline").replace("\0", " "):
            return int(proc.name)
    raise RuntimeError("no schedcpd process")


async def crash(client: Client) -> Client:
    """kill -9 of schedcpd mid-canary, then a restart in the same guest."""
    pids = {"target": spawn("t2-cprobe", 0.002, 0.0002), "other": spawn("t2-cother", 0.005, 0.0001)}
    policy_id = await client.ok("SubmitPolicy", "s", (JOB / "crash.toml").read_text())
    dep = await client.ok("Deploy", "s", token("crash"))
    await client.wait(dep, lambda i: i["state"] == "canary")
    daemon = _schedcpd()
    argv = [a for a in Path(f"/proc/{daemon}/cmdline").read_bytes().decode().split("\0") if a]
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    orphaned = snapshot(pids)  # the loader outlives the daemon: sched_ext still on
    client.close()
    log = open("/run/schedcpd-restarted.log", "wb")  # the daemon keeps it
    restarted = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    started = time.monotonic()
    client = Client()
    while time.monotonic() - started < 120:
        try:
            client = await Client().connect()
            if "ok" in await client.call("ListDeployments"):
                break
            client.close()
        except Exception:  # not on the bus yet
            pass
        await asyncio.sleep(0.2)
    ready_s = time.monotonic() - started
    info = await client.wait(dep, lambda i: i["state"] in ("reverted", "failed"), timeout=60)
    after = snapshot(pids)
    history = json.loads(await client.ok("GetPolicyHistory", "s", policy_id))
    stop(list(pids.values()))
    report("crash", {"orphaned": orphaned, "after": after, "deployment": info,
                     "history": history, "restart_ready_s": round(ready_s, 1),
                     "restarted_pid": restarted.pid,
                     "log": read("/run/schedcpd-restarted.log").splitlines()[-30:]})
    return client


STEPS: dict[str, Callable[..., Awaitable[Any]]] = {
    "tamper": tamper, "good": good, "regression": regression, "eject": eject, "crash": crash}


async def main(steps: list[str], table: dict[str, Callable[..., Awaitable[Any]]] = STEPS
               ) -> int:
    """Run ``steps`` (``NAME`` or ``NAME=ARG``) of ``table`` in order, on one D-Bus client.

    A step that raises is reported with its name; the processes it started
    are stopped either way.  (cgroup_v2_scenario.py runs its own steps here.)
    """
    client = await Client().connect()
    try:
        for step in steps:
            started = time.monotonic()
            name, _, arg = step.partition("=")
            try:
                replaced = await (table[name](client, arg) if arg else table[name](client))
                if isinstance(replaced, Client):  # the crash step reconnects
                    client = replaced
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
