"""The policy benchmark: every policy on every scenario, result rows, and the summary that is judged."""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spot_hpc.policy import TICK_POLICIES

from spotctl.policy_sim.optimum import run_optimum
from spotctl.policy_sim.scenarios import Scenario, build_job, parse_scenario, scenario_id
from spotctl.policy_sim.simulator import Job, simulate

POLICY_ORDER = ("on_demand", "spot_only", "greedy", "uniform_progress", "optimum", "default")
# Slack classes (deadline / compute) the summary is broken down by: [low, high).
SLACK_CLASSES = ((1.0, 1.25), (1.25, 1.5), (1.5, 2.0), (2.0, 2.5), (2.5, math.inf))


def run_scenario(raw: Any, index: int, shared_dir: Path) -> list[dict[str, Any]]:
    """Result rows of one scenario (one per policy), or error rows when the scenario is invalid."""
    try:
        scenario = parse_scenario(raw, index)
        job = build_job(scenario, shared_dir)
        return [_policy_row(scenario, job, name) for name in POLICY_ORDER]
    except (ValueError, OverflowError, MemoryError) as exc:
        # ScenarioError, or numbers too large to turn into ticks or tables: one bad scenario must not stop the
        # benchmark.
        return [{"id": scenario_id(raw, index), "policy": name, "error": str(exc)} for name in POLICY_ORDER]


def _policy_row(scenario: Scenario, job: Job, name: str) -> dict[str, Any]:
    policy = None if name == "optimum" else TICK_POLICIES[name](scenario.advisor_bucket)
    result = run_optimum(job) if policy is None else simulate(job, policy)
    finish = result.finish_hours
    return {
        "id": scenario.id,
        "policy": name,
        "cost": round(result.cost, 6) if math.isfinite(result.cost) else math.inf,
        "met": result.met,
        "finish_hours": None if finish is None else round(finish, 6),
        "slack": round(scenario.slack, 6),
    }


def _run_indexed(item: tuple[int, Any, str]) -> list[dict[str, Any]]:
    index, raw, shared_dir = item
    return run_scenario(raw, index, Path(shared_dir))


def run_benchmark(
    scenarios: Sequence[Any],
    shared_dir: Path,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of every scenario in scenario order; `jobs` > 1 spreads scenarios over processes."""
    items = [(index, raw, str(shared_dir)) for index, raw in enumerate(scenarios)]
    rows: list[dict[str, Any]] = []
    done = 0
    results: Iterable[list[dict[str, Any]]]
    if jobs > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(_run_indexed, items, chunksize=4)
            for scenario_rows in results:
                rows.extend(scenario_rows)
                done += 1
                if progress:
                    progress(done, len(items))
    else:
        for item in items:
            rows.extend(_run_indexed(item))
            done += 1
            if progress:
                progress(done, len(items))
    return rows


DEFAULT_JOBS = 2


def worker_count(requested: int | None, scenarios: int) -> int:
    """Worker processes for `requested` (None: DEFAULT_JOBS): never more than the CPUs or the scenarios, since
    extra processes only add start-up time (1000 workers took 7 s on a run that takes 0.4 s)."""
    return max(1, min(requested or DEFAULT_JOBS, os.cpu_count() or 1, scenarios))


@dataclass(frozen=True)
class PolicySummary:
    """One policy over the scenarios the optimum can meet: mean cost / optimum, deadlines met."""

    policy: str
    scenarios: int
    mean_ratio: float
    met: int


def judged_ratios(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, tuple[float, bool, float]]]:
    """{scenario id: {policy: (cost / optimum cost, met, slack)}} over scenarios whose optimum meets the deadline."""
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            by_id.setdefault(row["id"], {})[row["policy"]] = row
    ratios: dict[str, dict[str, tuple[float, bool, float]]] = {}
    for judged_id, policies in by_id.items():
        optimum = policies.get("optimum")
        if not optimum or not optimum["met"]:
            continue
        ratios[judged_id] = {
            name: (cost_ratio(row["cost"], optimum["cost"]) if row["met"] else math.inf, row["met"], row["slack"])
            for name, row in policies.items()
        }
    return ratios


def cost_ratio(cost: float, optimum_cost: float) -> float:
    """cost / optimum cost. Where the optimum costs nothing (free Spot), a run that paid nothing is at it and one that
    paid anything is infinitely above it, not at it."""
    if optimum_cost > 0:
        return cost / optimum_cost
    return 1.0 if cost <= 0 else math.inf


def summarise(rows: Iterable[dict[str, Any]], slack_range: tuple[float, float] | None = None) -> list[PolicySummary]:
    """Per policy: mean of cost / optimum over scenarios the optimum meets (a missed deadline counts only in `met`;
    its ratio is left out of the mean) within `slack_range`."""
    summaries = []
    ratios = judged_ratios(rows)
    for name in POLICY_ORDER:
        values: list[float] = []
        met = total = 0
        for policies in ratios.values():
            if name not in policies:
                continue
            ratio, was_met, slack = policies[name]
            if slack_range and not slack_range[0] <= slack < slack_range[1]:
                continue
            total += 1
            met += was_met
            if was_met:
                values.append(ratio)
        if total:
            summaries.append(PolicySummary(name, total, statistics.fmean(values) if values else math.nan, met))
    return summaries


def error_count(rows: Iterable[dict[str, Any]]) -> int:
    return len({row["id"] for row in rows if "error" in row})


def invalid_scenarios(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """{scenario id: error} of the scenarios that have error rows, in scenario order."""
    return {row["id"]: row["error"] for row in rows if "error" in row}


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """Human summary: one table overall and one per slack class (markdown, readable in a terminal too)."""
    lines = []
    judged = len(judged_ratios(rows))
    scenarios = len({row["id"] for row in rows})
    lines.append(
        f"{scenarios} scenarios, {error_count(rows)} invalid, {judged} where the optimum meets the deadline "
        "(the ones judged). Mean cost / optimum counts runs that met the deadline."
    )
    lines.append("")
    header = "| policy | scenarios | mean cost / optimum | deadlines met |"
    for title, slack_range in [("all", None), *((_class_name(c), c) for c in SLACK_CLASSES)]:
        summaries = summarise(rows, slack_range)
        if not summaries:
            continue
        lines.append(f"**slack {title}**" if slack_range else "**all scenarios**")
        lines.append("")
        lines.append(header)
        lines.append("|---|---:|---:|---:|")
        for summary in summaries:
            lines.append(
                f"| {summary.policy} | {summary.scenarios} | {summary.mean_ratio:.3f} | "
                f"{summary.met}/{summary.scenarios} |"
            )
        lines.append("")
    return "\n".join(lines)


def _class_name(slack_range: tuple[float, float]) -> str:
    low, high = slack_range
    return f">= {low:g}" if math.isinf(high) else f"{low:g}-{high:g}"


def progress_bar(stream: Any = None) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr, only when it is a terminal."""
    out = stream or sys.stderr

    def show(done: int, total: int) -> None:
        if not out.isatty():
            return
        width = 30
        filled = int(width * done / total)
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} scenarios")
        if done == total:
            out.write("\n")
        out.flush()

    return show
