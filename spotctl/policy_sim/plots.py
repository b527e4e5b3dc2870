"""Plots of the policy benchmark and of one simulated run (matplotlib, headless)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spotctl.files import write_png
from spotctl.policy_sim.benchmark import POLICY_ORDER, SLACK_CLASSES, summarise
from spotctl.policy_sim.simulator import Job, RunResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_benchmark(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Mean cost / optimum per slack class, one line per policy. The axis is cut above the cheaper policies so
    their differences show; a policy far above (On-Demand, about 3x) is drawn at the top edge and labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{low:g}-{high:g}" if high != float("inf") else f">={low:g}" for low, high in SLACK_CLASSES]
    lines: dict[str, list[tuple[int, float]]] = {}
    for name in POLICY_ORDER:
        for index, slack_range in enumerate(SLACK_CLASSES):
            summary = next((s for s in summarise(rows, slack_range) if s.policy == name), None)
            if summary is not None and summary.mean_ratio == summary.mean_ratio:  # skip NaN (no run met)
                lines.setdefault(name, []).append((index, summary.mean_ratio))
    # An infinite mean (a run that paid where the optimum paid nothing) is off scale too, never the axis's limit.
    cheap = [ratio for name, points in lines.items() if name != "on_demand" for _, ratio in points if ratio < math.inf]
    top = max([*cheap, 1.1]) * 1.05
    for name, points in lines.items():
        ratios = [min(ratio, top) for _, ratio in points]
        off_scale = any(ratio > top for _, ratio in points)
        label = f"{name} (off scale, mean {sum(r for _, r in points) / len(points):.2f})" if off_scale else name
        style = "--" if name == "optimum" else ":" if off_scale else "-"
        ax.plot([p[0] for p in points], ratios, style, marker="o", label=label)
    ax.set_ylim(0.98, top * 1.01)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("deadline slack (deadline / compute)")
    ax.set_ylabel("mean cost / optimum cost\n(runs that met the deadline)")
    ax.set_title("Policy cost relative to the optimum")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    write_png(path, fig, dpi=110)
    plt.close(fig)


def plot_timeline(job: Job, result: RunResult, path: Path) -> None:
    """Per tick: Spot capacity, the choice made, progress and cumulative cost."""
    plt = _pyplot()
    hours = [record.tick * job.tick_hours for record in result.timeline]
    fig, (cap_ax, choice_ax, progress_ax) = plt.subplots(3, 1, figsize=(10, 6), sharex=True)
    all_hours = [tick * job.tick_hours for tick in range(job.ticks)]
    cap_ax.fill_between(all_hours, [int(c) for c in job.capacity], step="post", alpha=0.5, color="tab:green")
    cap_ax.set_ylabel("Spot\ncapacity")
    cap_ax.set_yticks([0, 1], ["no", "yes"])
    colours = {"idle": "lightgrey", "spot": "tab:green", "on_demand": "tab:red"}
    levels = {"idle": 0, "spot": 1, "on_demand": 2}
    for record, hour in zip(result.timeline, hours, strict=True):
        choice_ax.bar(
            hour,
            1,
            width=job.tick_hours,
            bottom=levels[record.action.value] - 0.5,
            align="edge",
            color=colours[record.action.value],
            alpha=1.0 if record.productive else 0.5,
        )
    choice_ax.set_yticks([0, 1, 2], ["idle", "spot", "on-demand"])
    choice_ax.set_ylabel("choice\n(pale: changeover)")
    progress_ax.step(hours, [r.progress * job.tick_hours for r in result.timeline], where="post", label="progress")
    progress_ax.axhline(job.work_ticks * job.tick_hours, color="black", linestyle=":", label="work")
    progress_ax.set_ylabel("compute hours done")
    progress_ax.set_xlabel("hours since start")
    cost_ax = progress_ax.twinx()
    cost_ax.step(hours, [r.cost for r in result.timeline], where="post", color="tab:orange", label="cost")
    cost_ax.set_ylabel("cost (USD)")
    deadline = job.ticks * job.tick_hours
    for ax in (cap_ax, choice_ax, progress_ax):
        ax.axvline(deadline, color="black", linestyle="--")
    met = "met" if result.met else "missed"
    fig.suptitle(f"{result.policy}: cost ${result.cost:,.2f}, deadline {met}")
    fig.tight_layout()
    write_png(path, fig, dpi=110)
    plt.close(fig)
