"""The results directory: results.json (everything), results.md (tables), PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from schedcp_bench import plots

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def fmt(value: Any) -> str:
    """A number with 4 significant digits; ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _spread(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("median") is None:
        return "-"
    return (f"{fmt(summary['median'])} [{fmt(summary['min'])}-{fmt(summary['max'])}] "
            f"n={summary['n']}")


def _header(results: dict[str, Any]) -> list[str]:
    env = results.get("env", {})
    opts = results.get("options", {})
    lines = [
        "# schedcp-bench results", "",
        f"- date: {env.get('date')}; host {env.get('hostname_sha256')} (sha256 prefix)",
        f"- kernel {env.get('kernel')}, {env.get('cpus')} x {env.get('cpu_model')}, governor "
        f"{env.get('governor')}, sched_ext {env.get('sched_ext')}",
        f"- suite {results.get('suite')}, track {results.get('track')}, arms "
        f"{', '.join(results.get('arms', []))}; {opts.get('reps')} repetitions of "
        + (f"{opts.get('window')} s windows" if opts.get("window") is not None else
           f"windows of {opts.get('units_per_window')} runs")
        + f" (ABBA order), seed {opts.get('seed')}",
        f"- daemon: {results.get('daemon', {}).get('kind')}; total "
        f"{fmt(results.get('seconds'))} s",
    ]
    if results.get("heldout"):
        lines.append(f"- held-out workloads from {results['heldout']}")
    return [*lines, ""]


def _scores(results: dict[str, Any]) -> list[str]:
    scores = results.get("scores", {})
    if not scores:
        return []
    lines = ["## Score", "",
             "Score = sum_w (sum_m alpha_m * I_wm) * 1[hard SLOs met] - lambda * BudgetOveruse "
             f"(lambda = {fmt(results.get('config', {}).get('lambda'))}; I > 1: better than "
             f"`{results.get('config', {}).get('baseline', 'default')}`).", "",
             "A workload where an arm does not apply has no term in its sum (n/a); "
             f"`{results.get('config', {}).get('baseline', 'default')}` on the same workloads "
             "and the ratio of the sums compare arms that apply to different workloads.", "",
             "| arm | Score | Σ terms | budget overuse | workloads | n/a | baseline on the "
             "same workloads | Σ / baseline |", "|---|---|---|---|---|---|---|---|"]
    for arm, s in scores.items():
        lines.append(f"| {arm} | {fmt(s['score'])} | {fmt(s['sum'])} | "
                     f"{fmt(s['budget_overuse'])} | {s['workloads']} | "
                     f"{s.get('not_applicable', 0)} | {fmt(s.get('baseline_same'))} | "
                     f"{fmt(s.get('relative'))} |")
    return [*lines, ""]


def _agent_line(info: dict[str, Any]) -> str:
    choice = info.get("choice")
    chose = (f"**{choice['base']}** ({choice['rung']}): {choice['reasoning']}" if choice
             else "nothing kept (no candidate met the goal)")
    cost = info.get("cost", {})
    tried = ", ".join(f"{a['base']}→{a['state'] or a.get('error') or '?'}"
                      for a in info.get("attempts", [])) or "none"
    return (f"- agent ({info.get('backend')}): saw {info.get('saw')!r}; chose {chose}. "
            f"Tried: {tried}. Status: {info.get('status')}; {fmt(cost.get('seconds'))} s, "
            f"${fmt(cost.get('usd'))}, {cost.get('tokens')} tokens")


def _workload(wl: dict[str, Any], baseline: str) -> list[str]:
    lines = [f"## {wl['name']}", "", f"{wl.get('description', '')} (goal {wl.get('goal')}, "
             f"track {wl.get('track')})", ""]
    if wl.get("status") != "ok":
        return [*lines, f"**{wl.get('status')}**: {wl.get('reason')}", ""]
    arms = wl.get("arms", {})
    cands = [a for a, e in arms.items() if a != baseline and e.get("summary")
             and e.get("status") != "not applicable"]
    head = ["metric", "better", f"{baseline} median [min-max]"]
    for c in cands:
        head += [f"{c} median [min-max]", f"I {c}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = arms.get(baseline, {}).get("summary", {})
    for m in wl.get("metrics", []):
        row = [f"{m['name']} ({m['unit']})", m["better"], _spread(base.get(m["name"]))]
        for c in cands:
            term = wl.get("scores", {}).get(c, {}).get("terms", {}).get(m["name"], {})
            row += [_spread(arms[c]["summary"].get(m["name"])), fmt(term.get("I"))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for c in [baseline, *cands]:
        sc = wl.get("scores", {}).get(c)
        if not sc:
            continue
        slos = "; ".join(f"`{s['metric']} {s['op']} {fmt(s['value'])}`"
                         f"{'' if s.get('hard', True) else ' (soft)'}: "
                         f"{'met' if s['met'] else 'MISSED'} ({fmt(s['median'])})"
                         for s in sc["slos"]) or "none"
        lines.append(f"- {c}: sum alpha*I = {fmt(sc['weighted_sum'])}, hard SLOs "
                     f"{'met' if sc['hard_slos_met'] else 'MISSED'}, term "
                     f"{fmt(sc['score'])}; SLOs: {slos}")
    for c, e in arms.items():
        if e.get("status") != "ok":
            lines.append(f"- {c}: {e.get('status')}: {e.get('reason')}")
        wins = e.get("windows", [])
        ended = [w["deployment_after"].get("reason") for w in wins
                 if (w.get("deployment_after") or {}).get("state") not in (None, "active")]
        errors = [w["error"] for w in wins if w.get("error")]
        if ended:
            lines.append(f"- {c}: the deployment ended during {len(ended)} of {len(wins)} "
                         f"windows (measured as they ran): {ended[0]}")
        if errors:
            lines.append(f"- {c}: {len(errors)} of {len(wins)} windows not measured: "
                         f"{errors[0]}")
        unrestored = [w["not_restored"] for w in wins if w.get("not_restored")]
        if unrestored:
            checked = sum(1 for w in wins if "not_restored" in w)
            lines.append(f"- {c}: **not restored** after {len(unrestored)} of {checked} "
                         f"rollbacks (later windows ran on changed tasks): "
                         + "; ".join(unrestored[0][:3]))
        if e.get("kind") == "agent" and e.get("info"):
            lines.append(_agent_line(e["info"]))
    noisy = {c: (fmt(e.get("foreign_cpus_median")),
                 sum(w.get("reruns", 0) for w in e.get("windows", [])))
             for c, e in arms.items() if e.get("windows")}
    if noisy:
        lines.append("- foreign load (median CPUs during windows; reruns): " + ", ".join(
            f"{c} {v[0]} ({v[1]})" for c, v in noisy.items()))
    return [*lines, ""]


def _t2(results: dict[str, Any]) -> list[str]:
    """The T2 track's guest, its timing label and the ratio table (arm / EEVDF)."""
    guest = results.get("guest") or {}
    label = guest.get("timing", "no guest run")
    lines = ["## T2: in the sched_ext guest host", "",
             f"- **{label}**; guest kernel {guest.get('kernel')}, accelerator "
             f"{guest.get('accel')}; `default` = EEVDF (no BPF scheduler)",
             f"- verification here {fmt(guest.get('verify_seconds'))} s; guest boot to schedcpd "
             f"{fmt(guest.get('boot_to_schedcpd_s'))} s; guest run {fmt(guest.get('run_s'))} s; "
             f"qemu max RSS {fmt(guest.get('qemu_max_rss_mb'))} MB"]
    final = (guest.get("final_state") or {}).get("final")
    if final:
        lines.append(f"- after the last window: sched_ext {final.get('state')}, "
                     f"{len(final.get('in_ext', []))} threads in SCHED_EXT, "
                     f"{len(final.get('loaders', []))} loaders")
    if guest.get("problem"):
        lines.append(f"- guest problem: {guest['problem']}")
    rows = [(wl["name"], m, wl.get("ratio_to_eevdf") or {})
            for wl in results.get("workloads", []) for m in wl.get("metrics", [])]
    arms = sorted({a for _, _, r in rows for a in r})
    if arms:
        lines += ["", f"Ratio arm / EEVDF of the medians ({label.split(':')[0]}; latency and "
                  "time: < 1 is better; throughput: > 1 is better):", "",
                  "| workload | metric | better | " + " | ".join(arms) + " |",
                  "|---|---|---|" + "---|" * len(arms)]
        for name, m, ratios in rows:
            vals = [(ratios.get(a) or {}).get(m["name"]) for a in arms]
            if any(v is not None for v in vals):
                lines.append(f"| {name} | {m['name']} | {m['better']} | "
                             + " | ".join(fmt(v) for v in vals) + " |")
    for wl in results.get("workloads", []):
        for e in (wl.get("arms") or {}).values():
            info = e.get("info") or {}
            if e.get("kind") == "agent-derived" and info:
                lines.append(f"- {wl['name']}: agent ({info.get('backend')}) picked "
                             f"`{info.get('base')}` for profile {info.get('profile')}: "
                             f"{info.get('reasoning')}")
    return [*lines, ""]


def render_markdown(results: dict[str, Any]) -> str:
    """results.md: header, scores, then a table per workload."""
    baseline = results.get("config", {}).get("baseline", "default")
    lines = _header(results)
    if results.get("track") == "T2":
        lines += _t2(results)
    lines += _scores(results)
    skipped = [w for w in results.get("workloads", []) if w.get("status") == "skipped"]
    for wl in results.get("workloads", []):
        if wl.get("status") != "skipped":
            lines += _workload(wl, baseline)
    if skipped:
        lines += ["## Skipped", ""] + [f"- {w['name']}: {w['reason']}" for w in skipped] + [""]
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"- [{p}]({p})" for p in results["plots"]] + [""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the plots, results.md and results.json into ``out``; returns ``results``."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        results["plots"] = [p.name for p in plots.render_all(results, out)]
    except ImportError as err:  # matplotlib missing: the bench extra is not installed
        results["plots"] = []
        results["plots_error"] = f"{err} (pip install 'schedcp[bench]')"
    (out / RESULTS_MD).write_text(render_markdown(results))
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=1, default=str))
    return results


def load(out: Path) -> dict[str, Any]:
    """results.json of a results directory."""
    path = Path(out) / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json here")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
