"""The final report of a run as text for a terminal (``--json`` prints the dict itself)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def render(report: dict[str, Any]) -> str:
    """Human-readable report: what it saw, what it did, what was measured, what it cost."""
    lines = [f"schedcp-agent: {report.get('status', '?')}"]
    saw = report.get("saw")
    if saw:
        lines.append(f"saw:      {saw['text']} (shape {saw['shape']}, goal {saw['goal']} "
                     f"{saw['goal_source']})")
        for role, pids in saw.get("roles", {}).items():
            lines.append(f"          {role}: pids {pids}")
        if saw.get("deep_profiling"):
            lines.append(f"          deeper profiling: {', '.join(saw['deep_profiling'])}")
        for c in saw.get("competitors") or []:
            acted = "may act on it" if c.get("may_act") else "outside the scope, not touched"
            lines.append(f"          competitor: {c['comm']}[{c['pid']}] {c['cpu']} cores "
                         f"{c['cls']} in {c.get('unit') or c.get('cgroup')} ({acted})")
    for advice in report.get("advice") or []:
        lines.append(f"advice:   {advice}")
    for i, att in enumerate(report.get("attempts", []), 1):
        cand, ex = att["candidate"], att["execution"]
        lines.append(f"did #{i}:   {cand['rung']} {cand['base']} -> policy "
                     f"{ex['policy_id'][:12] or '-'}, deployment {ex['deployment'] or '-'} "
                     f"{ex['state'] or ''}".rstrip())
        lines.append(f"          why: {cand['reasoning']}")
        if ex.get("fixes"):
            lines.append(f"          fixed: {'; '.join(ex['fixes'])}")
        if ex.get("error"):
            lines.append(f"          error: {ex['error']}")
        plan = ex.get("plan") or {}
        if plan:
            lines.append(f"          wrote {plan.get('n_changes', 0)} values; targets "
                         f"{plan.get('targets')}")
        verdict = att.get("verdict") or {}
        if verdict:
            kept = "kept" if verdict.get("goal_met") else "rolled back"
            lines.append(f"          learned: {verdict.get('outcome')} ({kept}): "
                         f"{verdict.get('reason')}")
    for prog in report.get("synthesis") or []:
        lines.append(f"program #{prog['attempt']}: {prog.get('name', '?')} "
                     f"{(prog.get('policy_id') or '-')[:12]}: {prog.get('outcome', '?')}")
        if prog.get("why"):
            lines.append(f"          why: {prog['why']}")
        for finding in prog.get("findings", [])[:3]:
            lines.append(f"          finding: {finding}")
    m = report.get("measured")
    if m:
        lines.append(f"measured: {m['metric']}: before {_fmt(m['before'])}, after "
                     f"{_fmt(m['after'])} ({m['better']} is better) - {m['reason']}")
    if report.get("command"):
        c = report["command"]
        lines.append(f"command:  {' '.join(c['argv'])}: exit {c.get('exit')}, "
                     f"{c.get('seconds')} s")
    if report.get("kept_deployment"):
        lines.append(f"kept:     {report['kept_deployment']} stays active "
                     f"(schedcpctl or Rollback to undo)")
    for r in report.get("reverted_at_end") or []:
        lines.append(f"reverted: {r['deployment']} {r.get('summary') or ''}".rstrip())
    cost = report.get("cost", {})
    lines.append(f"cost:     {cost.get('tokens', 0)} tokens (in {cost.get('input_tokens', 0)}, "
                 f"out {cost.get('output_tokens', 0)}, cache write "
                 f"{cost.get('cache_write_tokens', 0)}, cache read "
                 f"{cost.get('cache_read_tokens', 0)}), ${cost.get('usd', 0.0):.4f}, "
                 f"{cost.get('model_calls', 0)} model calls, {cost.get('seconds', 0)} s")
    if report.get("transcript"):
        lines.append(f"transcript: {report['transcript']}")
    return "\n".join(lines)
