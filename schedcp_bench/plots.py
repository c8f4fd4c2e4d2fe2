"""PNG plots of a result (matplotlib, Agg backend): ratios per arm, latency distributions."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_axis(ax: Any) -> None:
    """A log y axis labelled with plain numbers (ratios read as 0.5, 1, 2, not 10^x)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def slug(name: str) -> str:
    """A file-name-safe form of ``name``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def latency_metric(workload: dict[str, Any]) -> dict[str, Any] | None:
    """The metric whose distribution is plotted: a latency if there is one."""
    metrics = workload.get("metrics", [])
    lower = [m for m in metrics if m["better"] == "lower"]
    for m in lower:
        if m["unit"] in ("ns", "us", "µs", "ms", "s") and re.search(
                r"lat|p9|wake|resp|delay", m["name"]):
            return m
    return (lower or metrics or [None])[0]


def ratio_plot(workload: dict[str, Any], baseline: str, path: Path,
               note: str = "") -> Path | None:
    """Grouped bars: I per metric, one bar per candidate arm; the line at 1 is the baseline."""
    cands = [a for a, s in workload.get("scores", {}).items() if a != baseline]
    if not cands:
        return None
    plt = _pyplot()
    names = [m["name"] for m in workload["metrics"]]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) * max(1, len(cands)) + 2), 3.6))
    width = 0.8 / len(cands)
    for k, arm in enumerate(cands):
        terms = workload["scores"][arm]["terms"]
        vals = [terms.get(n, {}).get("I") or 0.0 for n in names]
        xs = [i + (k - (len(cands) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, vals, width, label=arm)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylabel(f"I vs {baseline} (>1 better)")
    _log_axis(ax)
    ax.set_title(f"{workload['name']}: ratio per metric (medians){note}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def distribution_plot(workload: dict[str, Any], path: Path, note: str = "") -> Path | None:
    """Box plot of the latency metric over the windows, per arm."""
    metric = latency_metric(workload)
    if metric is None:
        return None
    arms, data = [], []
    for arm, entry in workload.get("arms", {}).items():
        vals = [w["metrics"][metric["name"]] for w in entry.get("windows", [])
                if (w.get("metrics") or {}).get(metric["name"]) is not None]
        if vals:
            arms.append(arm)
            data.append(vals)
    if not data:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(arms) + 1.5), 3.6))
    ax.boxplot(data, showmeans=False)
    ax.set_xticks(range(1, len(arms) + 1))
    ax.set_xticklabels(arms, rotation=10, fontsize=8)
    for i, vals in enumerate(data, 1):
        ax.scatter([i] * len(vals), vals, s=10, alpha=0.6, zorder=3)
    ax.set_ylabel(f"{metric['name']} ({metric['unit']}, {metric['better']} is better)")
    ax.set_title(f"{workload['name']}: {metric['name']} per window{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_plot(results: dict[str, Any], path: Path) -> Path | None:
    """One bar per workload and candidate arm: the alpha-weighted mean of its ratios."""
    baseline = results.get("config", {}).get("baseline", "default")
    rows = []
    for wl in results.get("workloads", []):
        for arm, sc in wl.get("scores", {}).items():
            if arm == baseline:
                continue
            alphas = sum(t["alpha"] for t in sc["terms"].values() if t["I"] is not None)
            if alphas:
                rows.append((wl["name"], arm, sc["weighted_sum"] / alphas, sc["hard_slos_met"]))
    if not rows:
        return None
    plt = _pyplot()
    wls = list(dict.fromkeys(r[0] for r in rows))
    arms = list(dict.fromkeys(r[1] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(wls) * len(arms) + 2), 3.8))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        for i, w in enumerate(wls):
            for r in rows:
                if r[0] == w and r[1] == arm:
                    x = i + (k - (len(arms) - 1) / 2) * width
                    ax.bar(x, r[2], width, color=f"C{k}", hatch="" if r[3] else "//",
                           label=arm if i == 0 or not ax.get_legend_handles_labels()[1]
                           else None)
                    ax.annotate(f"{r[2]:.2f}", (x, r[2]), ha="center", va="bottom",
                                fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(wls)))
    ax.set_xticklabels(wls, rotation=20, fontsize=8)
    _log_axis(ax)
    ax.set_ylabel(f"weighted mean I vs {baseline}")
    ax.set_title(f"per workload (hatched: a hard SLO missed){emulated_note(results)}",
                 fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def emulated_note(results: dict[str, Any]) -> str:
    """A title suffix for figures measured in an emulated (TCG) guest; "" otherwise."""
    return "\n[emulated (TCG) guest: ratios only]" if results.get("emulated") else ""


def render_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Every plot of ``results`` into ``out``; returns the files written."""
    baseline = results.get("config", {}).get("baseline", "default")
    note = emulated_note(results)
    written: list[Path] = []
    p = summary_plot(results, out / "ratios.png")
    if p:
        written.append(p)
    for wl in results.get("workloads", []):
        if wl.get("status") != "ok":
            continue
        s = slug(wl["name"])
        for made in (ratio_plot(wl, baseline, out / f"ratio-{s}.png", note),
                     distribution_plot(wl, out / f"dist-{s}.png", note)):
            if made:
                written.append(made)
    return written
