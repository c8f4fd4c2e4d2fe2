"""The T2 track: EEVDF vs schedcp's sched_ext schedulers vs the agent's pick, in the guest host.

    schedcp-bench run --track T2 [--workloads hackbench,msglat]
                      [--arms default,policy:scx-vtime,agent] [--reps N]

This host's kernel has no sched_ext; the guest host has
(plugins/scheduler/microvm/host.py: the sched_ext kernel booted with this
machine's installed schedcp, its own bus and schedcpd).  The run:

1. a private schedcpd here verifies every arm once per window it serves
   (:mod:`schedcp_bench.t2_arms`; tokens are single-use) and signs tokens
   that bind the verified object;
2. ONE boot of the guest host runs :mod:`schedcp_bench.t2_guest`: the
   guest's schedcpd trusts this daemon's public key; per window it deploys
   the arm's token through D-Bus, runs the workload, rolls back and checks
   that sched_ext and every task are back as before.  Windows alternate
   arms (ABBA over repetitions, as in T1), so drift hits every arm alike;
3. the windows come back over the console and become the same
   results.json / results.md / plots as T1, with ``timing`` saying
   *emulated (TCG)* when the guest ran without KVM: then only ratios to the
   EEVDF arm of the same boot mean anything.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schedcp_agent.client import SchedcpClient
from schedcp_bench import score as scoring
from schedcp_bench.runner import RunOptions, arm_scores, summarize, window_order
from schedcp_bench.services import PrivateBus, SchedcpdProcess
from schedcp_bench.t2_arms import T2ArmError, VerifiedArm, verify_all
from schedcp_bench.workload import Workload
from schedcp_bench.workloads.hackbench import Hackbench
from schedcp_bench.workloads.msglat import Msglat

DEFAULT_ARMS = ("default", "policy:scx-vtime", "agent")
GUEST_LOG = "guest-schedcpd.log"
"""The guest's schedcpd log, kept in the results directory."""
HOST_DAEMON_CONFIG = """[metrics]
enabled = false
[bus]
call_timeout_seconds = 600
[verifier]
dynamic_seconds = 1.0
token_lifetime_seconds = 7200
"""
"""The verifying daemon: T2 verification boots the micro-VM twice (TCG: minutes at load)."""

SCX = "/usr/local/lib/schedcp/scx"
GUEST_CONFIG = f"""[metrics]
enabled = false
[verifier]
trusted_keys_dir = "/run/job"
[deployer]
baseline_seconds = 1.0
canary_seconds = 2.0
full_seconds = 2.0
backoff_seconds = 1
[plugins.scheduler]
scx_loader = "{SCX}/scx_loader"
scx_object_dir = "{SCX}"
scx_verified_objects = "/run/job/verified"
"""
"""The guest's schedcpd: trusts the host daemon's key, short probation (a window's deploy)."""


class T2Error(RuntimeError):
    """The T2 track could not run (an arm not verified, the guest host failed)."""


@dataclass(frozen=True)
class GuestWorkload:
    """A workload as the guest runs it: the T1 workload's metrics and parser, a guest command."""

    workload: type[Workload]
    argv: tuple[str, ...]
    parser: str
    shape: str
    """The profile shape the agent derives its program for (schedcp_agent.observe.SHAPES)."""
    units: int
    binary: str


GUEST_WORKLOADS = {
    # Fewer loops than T1's -l 400: every context switch is emulated under TCG
    # (-l 200 took 11 s there under EEVDF).
    "hackbench": GuestWorkload(Hackbench, ("/usr/bin/hackbench", "-g", "2", "-l", "100",
                                           "-s", "100"),
                               "schedcp_bench.workloads.hackbench:parse", "fork-churn", 3,
                               "hackbench"),
    "msglat": GuestWorkload(Msglat, ("/usr/bin/msglat", "-m", "2", "-t", "2", "-s", "20",
                                     "-r", "1", "-w", "0.1"),
                            "schedcp_bench.workloads.msglat:parse", "interactive", 3, "msglat"),
}


def unavailable(name: str, has_binary: Any) -> str | None:
    """Why the guest cannot run workload ``name`` (its program is not in the image)."""
    gw = GUEST_WORKLOADS[name]
    if gw.binary == "hackbench":
        return None if Path("/usr/bin/hackbench").is_file() else \
            "hackbench is not installed here (apt-get install rt-tests), so not in the guest"
    return None if has_binary(gw.binary) else f"{gw.binary} was not built for the guest"


def schedule(arms: list[str], workloads: list[str], reps: int) -> list[dict[str, Any]]:
    """The windows in order: per workload, repetitions of every arm in ABBA order."""
    out = []
    for wl in workloads:
        for rep in range(reps):
            for pos, arm in enumerate(window_order(arms, rep)):
                out.append({"rep": rep, "position": pos, "arm": arm, "workload": wl})
    return out


def job_files(windows: list[dict[str, Any]], verified: dict[tuple[str, str], VerifiedArm],
              key: tuple[str, bytes], seed: int) -> dict[str, Path | bytes]:
    """plan.json, the policies, one token per arm window, the objects, the key, the config.

    ``key`` is the verifying daemon's public key (file name, bytes): the
    guest's schedcpd trusts it (``trusted_keys_dir = "/run/job"``).
    """
    files: dict[str, Path | bytes] = {"schedcpd.toml": GUEST_CONFIG.encode(), key[0]: key[1]}
    used: dict[tuple[str, str], int] = {}
    for i, w in enumerate(windows):
        arm = verified.get((w["arm"], w["workload"]))
        if arm is None:
            continue
        n = used.get((arm.spec, arm.workload), 0)
        used[(arm.spec, arm.workload)] = n + 1
        w["policy"] = f"policies/{i:03d}.toml"
        w["token"] = f"tokens/{i:03d}.token"
        files[w["policy"]] = arm.text.encode()
        files[w["token"]] = arm.tokens[n].encode()
        for digest, path in arm.objects.items():
            files[f"verified/{digest}.bpf.o"] = path
    workloads = {}
    for name in {w["workload"] for w in windows}:
        gw = GUEST_WORKLOADS[name]
        argv = [*gw.argv, *(["--seed", str(seed)] if name == "msglat" else [])]
        workloads[name] = {"argv": argv, "parser": gw.parser, "units": gw.units,
                           "metrics": [m.name for m in gw.workload.metrics]}
    plan = {"windows": windows, "workloads": workloads, "deploy_timeout": 180}
    files["plan.json"] = json.dumps(plan, indent=1).encode()
    return files


def parse_console(lines: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The guest's RESULT lines: (windows, the final snapshot)."""
    windows, final = [], None
    for line in lines:
        if line.startswith("RESULT window "):
            windows.append(json.loads(line[len("RESULT window "):]))
        elif line.startswith("RESULT end "):
            final = json.loads(line[len("RESULT end "):])
    return windows, final


def workload_result(name: str, arms: list[str], windows: list[dict[str, Any]],
                    verified: dict[tuple[str, str], VerifiedArm],
                    cfg: scoring.ScoreConfig, emulated: bool) -> dict[str, Any]:
    """One workload's entry of results.json, shaped as T1's (arms, windows, summary, scores).

    ``emulated`` (TCG): the workload's SLOs are absolute figures for real
    hardware, so they are not judged (the score is then the ratios alone).
    """
    wl = GUEST_WORKLOADS[name].workload()
    result: dict[str, Any] = {
        "name": name, "description": (f"`{' '.join(GUEST_WORKLOADS[name].argv)}` in the "
                                      f"sched_ext guest, {GUEST_WORKLOADS[name].units} runs "
                                      f"per window"),
        "track": "T2", "goal": wl.goal, "quick": True,
        "command": list(GUEST_WORKLOADS[name].argv),
        "metrics": [m.as_dict() for m in wl.metrics],
        "slos": [] if emulated else [{"metric": s.metric, "op": s.op, "value": s.value,
                                      "hard": s.hard} for s in wl.slos],
        "status": "ok", "reason": None, "arms": {}, "scores": {},
    }
    if emulated:
        result["slos_note"] = "not judged: emulated (TCG) timings are not comparable to SLOs"
    names = [m.name for m in wl.metrics]
    for arm in arms:
        mine = [w for w in windows if w["workload"] == name and w["arm"] == arm]
        v = verified.get((arm, name))
        info = dict(v.info) if v else {"note": "EEVDF: nothing deployed"}
        kind = {"default": "default", "agent": "agent-derived"}.get(arm, "policy")
        entry: dict[str, Any] = {"kind": kind, "status": "ok", "reason": None,
                                 "windows": mine, "info": info}
        entry["summary"] = summarize(mine, names)
        entry["foreign_cpus_median"] = None
        if not any(w.get("metrics") for w in mine):
            entry.update(status="error", reason="; ".join(
                str(w.get("error") or w.get("unit_errors")) for w in mine)[:600] or "no window")
        result["arms"][arm] = entry
    base = result["arms"].get(cfg.baseline, {}).get("summary")
    if base:
        med = {k: s["median"] for k, s in base.items()}
        for arm, entry in result["arms"].items():
            cand = {k: s["median"] for k, s in entry["summary"].items()}
            result["scores"][arm] = scoring.workload_score(name, result["metrics"],
                                                           result["slos"], med, cand, cfg)
        result["ratio_to_eevdf"] = {
            arm: {k: (round(s["median"] / med[k], 3) if s["median"] is not None and med.get(k)
                      else None) for k, s in entry["summary"].items()}
            for arm, entry in result["arms"].items() if arm != cfg.baseline}
    if not any(e["status"] == "ok" for e in result["arms"].values()):
        result.update(status="error", reason="no arm was measured")
    return result


async def _verify(specs: list[str], names: list[str], reps: int,
                  objects_dir: Path) -> tuple[dict[tuple[str, str], VerifiedArm],
                                              tuple[str, bytes], float]:
    """Verify every arm on a private schedcpd here; (arms, its public key, seconds)."""
    t0 = time.monotonic()
    profiles = {n: (GUEST_WORKLOADS[n].shape, GUEST_WORKLOADS[n].workload.goal,
                    GUEST_WORKLOADS[n].workload.description) for n in names}
    with PrivateBus() as bus, SchedcpdProcess(bus.address, HOST_DAEMON_CONFIG) as daemon:
        async with SchedcpClient(bus.address) as client:
            verified = await verify_all(client, specs, profiles, reps, objects_dir)
        keys = sorted((daemon.state_dir / "keys").glob("*.pub"))
        if len(keys) != 1:
            raise T2Error(f"the verifying daemon has {len(keys)} public keys, expected 1")
        return verified, (keys[0].name, keys[0].read_bytes()), time.monotonic() - t0


def run(opts: RunOptions, names: list[str], progress: Any = print) -> dict[str, Any]:
    """Verify, boot once, measure; the T2 part of results.json (workloads, scores, guest)."""
    from plugins.scheduler.microvm import host, rootfs

    guest_host = host.GuestHost().prepare()
    vm = guest_host.vm
    skipped = {n: why for n in names
               if (why := unavailable(n, vm.has_binary)) is not None}
    run_names = [n for n in names if n not in skipped]
    specs = list(dict.fromkeys(opts.arms))
    windows = schedule(specs, run_names, opts.reps)
    verified: dict[tuple[str, str], VerifiedArm] = {}
    guest: dict[str, Any] = {}
    measured: list[dict[str, Any]] = []
    if run_names:
        progress(f"T2: verifying {len(specs) - ('default' in specs)} arm(s) x "
                 f"{len(run_names)} workload(s) x {opts.reps} rep(s) on this host")
        try:
            verified, key, verify_s = asyncio.run(
                _verify(specs, run_names, opts.reps, vm.cache / "objects"))
        except T2ArmError as err:
            raise T2Error(str(err)) from err
        files = job_files(windows, verified, key, opts.seed)
        python = f"{rootfs.venv_dir()}/bin/python3"
        progress(f"T2: verified in {verify_s:.0f} s; one guest boot for {len(windows)} windows")
        result = guest_host.run(host.command_script(
            [python, "-m", "schedcp_bench.t2_guest", "/run/job/plan.json"]), files,
            timeout=300 + 150 * len(windows), boot_timeout=240)
        guest = host.summary(result)
        guest["verify_seconds"] = round(verify_s, 1)
        log = opts.out / GUEST_LOG
        log.write_text("\n".join(result.output.get("schedcpd-log", [])) + "\n")
        guest["schedcpd_log"] = log.name
        error = host.problem(result)
        measured, final = parse_console(result.output.get(host.COMMAND_STEP, []))
        if error is not None and not measured:
            tail = "\n".join(result.output.get("schedcpd-log", [])[-20:])
            raise T2Error(f"the guest host failed: {error}\n{tail}")
        guest["final_state"] = final
        guest["timing"] = ("emulated (TCG): compare ratios to the EEVDF arm of the same boot "
                           "only" if result.accel == "tcg" else f"{result.accel}: real timings")
    emulated = guest.get("accel") == "tcg"
    results = [workload_result(n, specs, measured, verified, opts.config, emulated)
               for n in run_names]
    results += [{"name": n, "track": "T2", "status": "skipped", "reason": why}
                for n, why in skipped.items()]
    return {"workloads": results, "scores": arm_scores(results, specs, opts.config),
            "arms": specs, "guest": guest, "emulated": emulated}


def ratio_rows(results: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(workload, metric, better, {arm: arm/EEVDF}) for every metric with a ratio."""
    rows = []
    for wl in results.get("workloads", []):
        ratios = wl.get("ratio_to_eevdf") or {}
        for m in wl.get("metrics", []):
            vals = {arm: r.get(m["name"]) for arm, r in ratios.items()}
            if any(v is not None for v in vals.values()):
                rows.append((wl["name"], m["name"], m["better"], vals))
    return rows

