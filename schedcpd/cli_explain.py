"""``schedcpctl explain PID|DEPLOYMENT``: the daemon's ``Explain`` for humans.

The values first (what schedcp changed, and what became of each), then for
each deployment behind them the chain of evidence: the policy version, the
token (issuer key, digest), the verification report it names, the circuit
breaker's figures and the deployment's history.
"""

from __future__ import annotations

import argparse
from typing import Any

from schedcpd.cli_output import Outcome, short, table, when
from schedcpd.dbus.client import Client


def _values(values: list[dict[str, Any]], with_target: bool = True) -> str:
    headers = ["target", "knob", "before", "value", "state", "deployment", "effect"]
    rows: list[tuple[Any, ...]] = [
        (v["target"], v["knob"], short(v["before"], 20), short(v["value"], 20), v["state"],
         v["owner"], short(v["effect"], 50)) for v in values]
    if not with_target:
        headers, rows = headers[1:], [r[1:] for r in rows]
    return table(headers, rows)


def _verdict(head: str, metrics: dict[str, Any], note: str) -> str:
    """An owner's verdict row (RecordVerdict): who, on which figure, how much, how sure."""
    parts = [str(metrics.get("metric"))]
    change, p_value = metrics.get("change"), metrics.get("p_value")
    if isinstance(change, int | float):
        parts.append(f"{change:+.0%}")
    if isinstance(p_value, int | float):
        parts.append(f"p = {p_value:.2g}")
    return f"{head} (uid {metrics.get('uid')}): {', '.join(parts)}" + (f": {note}" if note else "")


def figure_lines(figures: list[dict[str, Any]]) -> list[str]:
    """The breaker's recorded outcomes: per group, baseline -> probation medians."""
    lines = []
    for outcome in figures:
        metrics = outcome.get("metrics") or {}
        head = f"{when(outcome['time'])} {outcome['outcome']}"
        if str(outcome["outcome"]).startswith("agent:") and isinstance(metrics, dict):
            lines.append(_verdict(head, metrics, outcome.get("note") or ""))
            continue
        groups = {g: m for g, m in metrics.items()
                  if isinstance(m, dict) and "baseline" in m and "probation" in m}
        if not groups:
            detail = metrics.get("detail") if isinstance(metrics, dict) else None
            lines.append(f"{head}: {detail or outcome.get('note') or ''}".rstrip(": "))
            continue
        for group, m in sorted(groups.items()):
            base, prob = m["baseline"], m["probation"]
            lines.append(
                f"{head}: {group} ({m.get('role')}) wait/run median "
                f"{base.get('wait_per_run_us_median')} -> {prob.get('wait_per_run_us_median')} "
                f"us, cpu share {base.get('cpu_share_median')} -> "
                f"{prob.get('cpu_share_median')} ({base.get('samples')}/{prob.get('samples')} "
                "samples)")
    return lines


def _deployment(dep: dict[str, Any]) -> str:
    if dep.get("unknown"):
        return f"deployment {dep['id']}: not in this daemon's database"
    policy, token, report = dep["policy"], dep.get("token"), dep.get("report")
    breaker = dep["breaker"]
    lines = [
        f"deployment {dep['id']}: {dep['state']} ({dep['reason']}), deployed by uid "
        f"{dep['uid']}",
        f"  policy:  {policy['name']}, version {policy['id'][:12]}"
        + (f" ({policy.get('state')}, {policy.get('provenance')}, {policy.get('track')})"
           if not policy.get("gone") else " (no longer in the repository)"),
        "  token:   " + (f"key {token['kid']}, sha256 {token['digest']}, issued "
                         f"{when(token['iat'])}, expires {when(token['exp'])}"
                         if token else "not recorded (deployed before tokens were kept)"),
    ]
    if report:
        if report.get("kept"):
            stages = ", ".join(f"{s['stage']} " + ("skipped" if s.get("skipped") else
                                                    "pass" if s["passed"] else "FAIL")
                               for s in report.get("stages", []))
            verdict = "passed" if report.get("passed") else "FAILED"
            lines.append(f"  report:  {report['digest']} {verdict}: {stages}")
            lines.append(f"           (schedcpctl policy report {report['digest']})")
        else:
            lines.append(f"  report:  {report['digest']} (not kept here: signed by another "
                         "verifier, or not recorded)")
    trip = breaker.get("trip")
    lines.append("  breaker: " + (f"tripped on {trip.get('guard')} of {trip.get('group')}: "
                                  f"{trip.get('detail')}" if trip else "no trip"))
    lines += [f"           {line}" for line in figure_lines(breaker.get("figures") or [])]
    lines.append("  history:")
    lines += [f"           {when(e['time'])} {e['state']}: {e['reason']}"
              for e in breaker.get("history") or []]
    return "\n".join(lines)


def _summary(summary: dict[str, int], truncated: int) -> str:
    text = ", ".join(f"{n} {state}" for state, n in sorted(summary.items())) or "none"
    return text + (f" ({truncated} more not shown)" if truncated else "")


def show_explanation(why: dict[str, Any]) -> str:
    """An explanation for humans."""
    subject = why["subject"]
    if "pid" in subject:
        values = why["values"]
        head = f"process {subject['pid']} ({subject['comm']}): "
        if not values:
            return head + "schedcp changed nothing on it"
        parts = [head + f"values changed by schedcp: {_summary(why['summary'], why['truncated'])}",
                 _values(values)]
        parts += ["", *(_deployment(d) for _, d in sorted(why["deployments"].items()))]
        return "\n".join(parts)
    parts = [_deployment(why["deployment"]), "",
             f"values: {_summary(why['summary'], why['truncated'])}"]
    for target, values in sorted(why["targets"].items()):
        parts += ["", f"{target}:", _values(values, with_target=False)]
    return "\n".join(parts)


async def explain(client: Client, args: argparse.Namespace) -> Outcome:
    """``explain PID|DEPLOYMENT``."""
    why = await client.call_json("Explain", "s", args.subject)
    return Outcome(why, show_explanation(why))
