"""schedcpctl's observation commands: summary, probe list/run, perf.

``probe run`` and ``perf`` wait as long as they observe; they say so on
stderr while they wait.
"""

from __future__ import annotations

import argparse
from typing import Any

from schedcpd.cli_output import Outcome, Progress, short, table
from schedcpd.dbus.client import Client


def _show_summary(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "\n".join(["no samples yet (the sampler has just started)",
                          *(f"note: {n}" for n in s.get("notes") or [])])
    cpu = s.get("cpu")
    per_core = (" ".join(f"{u:.0%}" for u in cpu) if isinstance(cpu, list)
                else f"{cpu}" if cpu is not None else "-")
    psi = s.get("psi") or {}
    lines = [
        f"window {s.get('win')} s, {s.get('n')} sample(s)",
        f"load:      {' '.join(str(x) for x in s.get('load') or [])}",
        f"cpu:       {s.get('util', 0):.0%} overall; per core {per_core}",
        f"run queue: {s.get('rqwait')} tasks waiting (wait-seconds per second)",
        f"switches:  {s.get('cs')}/s, forks {s.get('forks')}/s",
        "pressure:  " + ", ".join(
            f"{name} some {v['some'][0]}% full {v['full'][0]}%"
            for name, v in sorted(psi.items()) if isinstance(v, dict) and "some" in v),
    ]
    lines += [f"note:      {n}" for n in s.get("notes") or []]
    top = s.get("top") or []
    if top:
        lines += ["", table(["pid", "comm", "class", "cpu", "threads", "group", "cgroup"],
                            [(p["pid"], p["comm"], p["cls"], p["cpu"], p["thr"], p["root"],
                              short(p["cg"], 40)) for p in top])]
    return "\n".join(lines)


async def summary(client: Client, args: argparse.Namespace) -> Outcome:
    """``summary [--detail brief|normal|full]``: the workload summary."""
    result = await client.call_json("GetSummary", "s", args.detail)
    return Outcome(result, _show_summary(result))


async def probe_list(client: Client, args: argparse.Namespace) -> Outcome:
    """``probe list``: the BPF probe catalogue."""
    result = await client.call_json("ListProbes")
    return Outcome(result, table(
        ["probe", "available", "description"],
        [(p["name"], "yes" if p["available"] else f"no: {p.get('reason', '')}",
          short(p["description"], 80)) for p in result]))


def _show_probe(r: dict[str, Any]) -> str:
    lines = [f"probe {r.get('probe')}"
             + (f": {r['count']} event(s)" if r.get("count") is not None else "")
             + (f", mean {r['mean_us']} us" if r.get("mean_us") is not None else "")
             + (f", {r['dropped']} dropped" if r.get("dropped") else "")
             + (" (capped)" if r.get("capped") else "")]
    histogram = r.get("histogram") or []
    if histogram:
        peak = max(b["count"] for b in histogram) or 1
        lines += ["", table(["us", "count", ""],
                            [(f"{b['lo_us']}..{b['hi_us']}", b["count"],
                              "#" * max(1, round(30 * b["count"] / peak)))
                             for b in histogram])]
    processes = r.get("processes") or []
    if processes:
        keys = [k for k in processes[0] if k not in ("pid", "comm")]
        lines += ["", table(["pid", "comm", *keys],
                            [(p["pid"], p["comm"], *(p.get(k, "") for k in keys))
                             for p in processes])]
    totals = {k: v for k, v in r.items() if isinstance(v, int | float)
              and not isinstance(v, bool) and k not in ("count", "mean_us", "dropped", "pid")}
    if totals:
        lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return "\n".join(lines)


async def probe_run(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``probe run NAME [--seconds S] [--pid PID]``: attach a catalogue probe."""
    result = await progress.waiting(
        f"probe {args.name} for {args.seconds:g} s",
        client.call_json("RunProbe", "sdi", args.name, args.seconds, args.pid))
    return Outcome(result, _show_probe(result))


def _show_perf(r: dict[str, Any]) -> str:
    target = r.get("target") or {}
    what = ", ".join("the system" if k == "system" else f"{k} {v}"
                     for k, v in sorted(target.items()) if v) or "the system"
    rows = []
    for name, e in sorted((r.get("events") or {}).items()):
        if e.get("counted"):
            rows.append((name, e.get("value"), e.get("unit") or "",
                         f"{e.get('metric')} {e.get('metric_unit') or ''}".strip()))
        else:
            rows.append((name, "-", "", e.get("reason", "not counted")))
    lines = [f"perf stat of {what}: {r.get('elapsed')} s" + (" (capped)" if r.get("capped")
                                                             else ""),
             table(["event", "value", "unit", "metric"], rows)]
    lines += [f"note: {n}" for n in r.get("notes") or []]
    return "\n".join(lines)


async def perf(client: Client, args: argparse.Namespace, progress: Progress) -> Outcome:
    """``perf [--pid PID | --cgroup PATH] [--seconds S]``: time-boxed perf stat."""
    result = await progress.waiting(
        f"perf stat for {args.seconds:g} s",
        client.call_json("RunPerfStat", "isd", args.pid, args.cgroup, args.seconds))
    return Outcome(result, _show_perf(result))
