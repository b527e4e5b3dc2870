"""What one plan of the deadline policy costs inside the SLA guard Lambda: solve time and peak memory, per case.

Each case runs in a fresh process (`python -m spotctl.policy_sim.planner_cost CASE`), so that its peak RSS is its
own: the process loads the SLA guard's handler module as a cold start does (Powertools, boto3 and the clients the
handler builds, numpy, spot_hpc; the environment is the template's, with placeholders for what a deployment fills
in), then asks `decide` once for a stage idle with Spot capacity, as a guard pass asks `placement.choose_capacity`:
from a cold plan cache, or (the last case) with the cache full of other stages' plans, as a warm guard keeps them.
The plan the policy then solves is the one a stage with this much work and time left gets. Peak RSS (the process's
own high-water mark: see `_peak_rss_mb`) is compared with the function's MemorySize in template.yaml: Lambda counts
MB of 2^20 bytes, and so does this module.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spot_hpc.policy import Decision, SpotStats

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FUNCTION = "SlaGuardFunction"
# Where the Lambda finds the layer's packages; the child imports the checkout's code whether or not it is installed.
CODE_PATHS = (PROJECT_ROOT, PROJECT_ROOT / "layers" / "shared" / "python", PROJECT_ROOT / "jobs" / "runtime")
CHANGEOVER_HOURS = (0.1, 0.2, 1.0)
DEADLINE_HOURS = (24.0, 72.0, 168.0)
WORK_HOURS = 96.0
# Prices only weigh the choices; their scale does not change the plan's size.
OD_PRICE, SPOT_PRICE = 1.0, 0.3
# A case that takes longer is reported as failed rather than waited on for ever.
CASE_TIMEOUT_SECONDS = 900
_EPS = 1e-9


class PlannerCostError(Exception):
    """The template does not say what the benchmark needs, or a case cannot be run."""


@dataclass(frozen=True)
class PlannerCase:
    """A stage with `work_hours` of compute left and `deadline_hours` to do it in."""

    label: str
    deadline_hours: float
    work_hours: float
    changeover_hours: float
    # Solved with the plan cache first filled to its bound (`PLAN_CACHE_BYTES`) with other stages' plans.
    full_cache: bool = False


def planned_work_hours(deadline_hours: float, changeover_hours: float, work_hours: float = WORK_HOURS) -> float:
    """`work_hours`, capped where the policy still plans: a stage with Spot capacity and less slack than two
    changeovers goes to On-Demand by the guard rails, without a plan."""
    step_hours = _step_hours()
    most_steps = math.floor((deadline_hours - 2 * changeover_hours) / step_hours + _EPS)
    return min(work_hours, most_steps * step_hours)


def default_cases(changeovers: Sequence[float] = CHANGEOVER_HOURS) -> list[PlannerCase]:
    """Every deadline with 96 h of work (capped) and every changeover, then the largest plan the bounds allow with
    the longest changeover (the most age states, and so the most work per cell), from a cold plan cache and from a
    full one. A deadline too short to plan for with a changeover is left out."""
    cases = [
        PlannerCase(f"{deadline:g} h / c {change:g} h", deadline, work, change)
        for deadline in DEADLINE_HOURS
        for change in changeovers
        if (work := planned_work_hours(deadline, change)) > 0
    ]
    largest = worst_case(max(changeovers))
    return [*cases, largest, replace(largest, label=largest.label + ", plan cache full", full_cache=True)]


def worst_case(changeover_hours: float) -> PlannerCase:
    """The stage whose plan comes closest to its bounds (`MAX_CELLS`, or `MAX_VALUE_CELLS` with a changeover of hours)
    on the finest grid, with the least slack that still plans.

    `grid_multiple` makes a larger plan coarser, and counts the age states of the fine step, so the largest plan is
    one at a bound without coarsening; most work (least slack) also makes each step's sums the widest."""
    from spot_hpc.policy.plan import MAX_CELLS, age_states, grid_multiple
    from spot_hpc.policy.stats import band_hours_for

    step_hours = _step_hours()
    ages = age_states(band_hours_for(step_hours, changeover_hours), step_hours)
    slack_steps = math.ceil(2 * changeover_hours / step_hours - _EPS)
    work_steps = math.isqrt(MAX_CELLS // (2 * ages))
    change_steps = round(changeover_hours / step_hours)
    while grid_multiple(work_steps + slack_steps, work_steps, ages, change_steps) > 1:
        work_steps -= 1
    # Whole steps, unrounded: the policy counts steps left down and work up, and a rounded hour can tip either.
    return PlannerCase(
        f"largest plan, c {changeover_hours:g} h",
        (work_steps + slack_steps) * step_hours,
        work_steps * step_hours,
        changeover_hours,
    )


def _step_hours() -> float:
    """The policy's decision step when the caller names none, as in the SLA guard (its schedule: 5 minutes)."""
    from spot_hpc.policy import DEFAULT_STEP_HOURS

    return DEFAULT_STEP_HOURS


def parse_changeovers(text: str) -> list[float]:
    """`0.1,0.2,1` -> [0.1, 0.2, 1.0] (hours)."""
    try:
        changeovers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"changeovers {text!r}: expected hours separated by commas, e.g. 0.1,0.2,1") from None
    if not changeovers or not all(math.isfinite(change) and change >= 0 for change in changeovers):
        raise ValueError(f"changeovers {text!r}: give one or more finite hours >= 0")
    return changeovers


def parse_case(text: str) -> PlannerCase:
    """`DEADLINE:WORK:CHANGEOVER` in hours, e.g. `24:12:0.2`."""
    parts = text.split(":")
    try:
        deadline, work, change = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"case {text!r}: expected DEADLINE:WORK:CHANGEOVER in hours, e.g. 24:12:0.2") from None
    if not all(math.isfinite(value) for value in (deadline, work, change)):
        raise ValueError(f"case {text!r}: hours must be finite")
    if not (0 < work <= deadline) or change < 0:
        raise ValueError(f"case {text!r}: needs 0 < work <= deadline and a changeover >= 0")
    return PlannerCase(text, deadline, work, change)


# ------------------------------------------------------------------ the template: memory limit and environment
def memory_limit_mb(template: dict[str, Any], function: str = FUNCTION) -> int:
    """The function's MemorySize, or the template's Globals' when it has none of its own."""
    own = _function_properties(template, function).get("MemorySize")
    shared = _section(template, "Globals", "Function").get("MemorySize")
    size = own if own is not None else shared
    if not isinstance(size, int):
        raise PlannerCostError(f"{function} has no MemorySize in MB")
    return size


def handler_file(template: dict[str, Any], root: Path, function: str = FUNCTION) -> Path:
    """The module the function's Handler names, under its CodeUri."""
    properties = {**_section(template, "Globals", "Function"), **_function_properties(template, function)}
    code_uri, handler = properties.get("CodeUri"), properties.get("Handler")
    if not isinstance(code_uri, str) or not isinstance(handler, str):
        raise PlannerCostError(f"{function} has no local CodeUri and Handler")
    return root / code_uri / (handler.rsplit(".", 1)[0].replace(".", "/") + ".py")


def lambda_environment(template: dict[str, Any], function: str = FUNCTION) -> dict[str, str]:
    """The function's environment variables: parameters' defaults where a value refers to one, else a placeholder
    (the name of what a deployment fills in): enough for the handler's settings to validate at cold start."""
    shared = _section(template, "Globals", "Function", "Environment", "Variables")
    own = _function_properties(template, function, "Environment", "Variables")
    parameters = _section(template, "Parameters")
    region = "us-east-1"
    environment = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_LAMBDA_FUNCTION_NAME": function}
    for name, value in {**shared, **own}.items():
        environment[name] = _placeholder(name, value, parameters)
    return environment


def _placeholder(name: str, value: Any, parameters: dict[str, Any]) -> str:
    if isinstance(value, str | int | float):
        return str(value)
    reference = value.get("Ref") if isinstance(value, dict) and len(value) == 1 else None
    parameter = parameters.get(reference) if isinstance(reference, str) else None
    if isinstance(parameter, dict) and "Default" in parameter:
        return str(parameter["Default"])
    return f"placeholder-{name.lower().replace('_', '-')}"


def _function_properties(template: dict[str, Any], function: str, *keys: str) -> dict[str, Any]:
    """The function's Properties, or the mapping at `keys` under them."""
    if function not in _section(template, "Resources"):
        raise PlannerCostError(f"no {function} in Resources")
    return _section(template, "Resources", function, "Properties", *keys)


def _section(template: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The mapping at `keys`, {} where a key is absent; a section that is there and not a mapping is the template's
    error to name, not an AttributeError."""
    section: Any = template
    for depth, key in enumerate(keys):
        section = section.get(key)
        if section is None:
            return {}
        if not isinstance(section, dict):
            raise PlannerCostError(f"{'.'.join(keys[: depth + 1])} is not a mapping")
    return section


# ------------------------------------------------------------------ the parent: one process per case
def run_cases(
    cases: Iterable[PlannerCase], handler: Path, environment: dict[str, str], memory_mb: int
) -> list[dict[str, Any]]:
    """One row per case, in order, each measured in a process of its own (one at a time: no case shares the CPUs
    or the memory with another)."""
    return [run_case(case, handler, environment, memory_mb) for case in cases]


def run_case(case: PlannerCase, handler: Path, environment: dict[str, str], memory_mb: int) -> dict[str, Any]:
    """The case's row; a case whose process fails (out of memory, say) has an `error` and counts as over."""
    request = json.dumps({"case": asdict(case), "handler": str(handler)})
    paths = os.pathsep.join(str(path) for path in CODE_PATHS)
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, **environment, "PYTHONPATH": paths + (os.pathsep + inherited if inherited else "")}
    row: dict[str, Any] = {**asdict(case), "memory_mb": memory_mb}
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, request],
            env=env,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result within {CASE_TIMEOUT_SECONDS} s", "within_memory": False}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {**row, "error": f"the case's process failed: {last}", "within_memory": False}
    try:
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {**row, "error": f"the case's process printed no result: {done.stdout[-200:]!r}", "within_memory": False}
    return {**row, **measured, "within_memory": measured["peak_rss_mb"] <= memory_mb}


def over_memory(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if not row["within_memory"]]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (readable in a terminal too)."""
    lines = [
        "| case | deadline h | work h | changeover h | grid (x step) | plan cells | solve s | cold start MB "
        "| plans cached MB (before / after) | peak RSS MB | within limit MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        head = f"| {row['label']} | {row['deadline_hours']:g} | {row['work_hours']:g} | {row['changeover_hours']:g} "
        if "error" in row:
            lines.append(head + f"| | | | | | | no: {row['error']} |")
            continue
        within = "yes" if row["within_memory"] else "**no**"
        lines.append(
            head + f"| {row['grid_multiple']} ({row['grid_multiple'] * row['step_minutes']:g} min) "
            f"| {row['plan_cells']:,} | {row['solve_seconds']:.2f} "
            f"| {row['baseline_rss_mb']:.0f} | {row['cached_mb_before']:.0f} / {row['cached_mb_after']:.0f} "
            f"| {row['peak_rss_mb']:.0f} | {within} ({row['memory_mb']}) |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the child: one case, measured
def measure(case: PlannerCase, handler: Path) -> dict[str, Any]:
    """Loads the handler as a cold start does, then times one `decide`, from a cold plan cache or a full one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sla_guard_app", handler)
    if spec is None or spec.loader is None:
        raise PlannerCostError(f"cannot load {handler}")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    missing = [name for name in ("boto3", "numpy", "spot_hpc.policy") if name not in sys.modules]
    if missing:
        raise PlannerCostError(f"the handler's cold start did not load {missing}: its memory would be understated")

    from spot_hpc.policy import DEFAULT_STEP_HOURS, plan
    from spot_hpc.policy.deadline import plan_grid

    baseline = _peak_rss_mb()
    if len(plan.PLANS):
        raise PlannerCostError("the plan cache is not cold")
    if case.full_cache:
        _fill_plan_cache()
    cached_mb = plan.PLANS.nbytes / 2**20
    solves = plan.PLANS.solves
    started = time.perf_counter()
    decision, stats = _ask_idle_with_capacity(case.work_hours, case.deadline_hours, case.changeover_hours, SPOT_PRICE)
    seconds = time.perf_counter() - started
    solved = plan.PLANS.latest
    if solved is None or plan.PLANS.solves != solves + 1:
        raise PlannerCostError(f"no plan was solved: the policy decided {decision.action} ({decision.reason})")
    multiple, _, _ = plan_grid(
        case.work_hours, case.deadline_hours, case.changeover_hours, stats.band_hours, DEFAULT_STEP_HOURS
    )
    return {
        "step_minutes": DEFAULT_STEP_HOURS * 60,
        "grid_multiple": multiple,
        "plan_cells": solved.cells,
        "decision": decision.action.value,
        "solve_seconds": round(seconds, 4),
        "baseline_rss_mb": round(baseline, 1),
        "cached_mb_before": round(cached_mb, 1),
        "cached_mb_after": round(plan.PLANS.nbytes / 2**20, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _fill_plan_cache() -> None:
    """Fills the plan cache to its bound with the plans of stages that differ only in their Spot price (so in their
    plans' inputs), each with a day's deadline and 20 hours of work, as a guard keeps them for the stages it checks."""
    from spot_hpc.policy import plan

    price = SPOT_PRICE
    while True:
        price *= 0.9
        _ask_idle_with_capacity(20.0, 24.0, 0.2, price)
        last = plan.PLANS.latest
        if last is None or plan.PLANS.nbytes + last.nbytes > plan.PLANS.max_bytes:
            return


def _ask_idle_with_capacity(
    work_hours: float, deadline_hours: float, changeover_hours: float, spot_price: float
) -> tuple[Decision, SpotStats]:
    """`decide` for a stage idle with Spot capacity that has learnt nothing of Spot yet, as the guard reads it from
    the ledger (its bands fit the changeover): (the decision, the stage's statistics)."""
    from spot_hpc.ledger import Stage
    from spot_hpc.placement import spot_stats
    from spot_hpc.policy import Action, decide
    from spot_hpc.policy.stats import DEFAULT_BUCKET

    stats = spot_stats(Stage("bench", "preprocess", 0, work_hours, True, 1), changeover_hours, DEFAULT_BUCKET)
    decision = decide(
        remaining_hours=work_hours,
        hours_left=deadline_hours,
        current=Action.IDLE,
        spot_available=True,
        changeover_hours=changeover_hours,
        od_price=OD_PRICE,
        spot_price=spot_price,
        stats=stats,
    )
    return decision, stats


def _peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB of 2^20 bytes.

    On Linux from /proc (VmHWM, the peak of this program's own memory): `ru_maxrss` also keeps the peak of the
    process that started it, carried over through fork and exec, so a case started from a large process (a test
    run) would be charged for its parent. Elsewhere `ru_maxrss` (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _child_main(argv: Sequence[str]) -> int:
    request = json.loads(argv[0])
    result = measure(PlannerCase(**request["case"]), Path(request["handler"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
