"""`spotctl simulate`: one job or pipeline on one trace, tick by tick, to explain the policy's decisions."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, finite_float
from spotctl.commands.bench import PROJECT_ROOT
from spotctl.files import check_output, write_text

POLICIES = ("default", "greedy", "uniform_progress", "spot_only", "on_demand", "optimum")
# Options that describe the job, when it is not taken from a scenario file; their defaults are applied only then,
# so that a job option given with --scenarios can be told apart and refused (None: the option has no default).
JOB_OPTION_DEFAULTS: dict[str, Any] = {
    "trace": None,
    "compute_hours": None,
    "deadline_hours": None,
    "stages": None,
    "start_tick": 0,
    "nodes": 1,
    "tick_seconds": 300.0,
    "changeover_hours": 0.2,
    "od_price": 3.06,
    "spot_price": 0.918,
    "advisor_bucket": None,
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="one job or pipeline on one Spot trace, with a per-tick timeline",
        description="Simulates one job (or pipeline) on a trace and prints when it ran on Spot, On-Demand or "
        "waited. Only --policy default (the deployed policy) also says why at each choice; the other policies "
        "give no reasons (optimum only notes that it knows the whole window). Take the job from a scenario file "
        "(--scenarios, --id) or describe it with options.",
    )
    defaults = JOB_OPTION_DEFAULTS
    parser.add_argument("--scenarios", type=Path, help="a benchmark scenario file to take the job from")
    parser.add_argument("--id", help="the scenario's id in --scenarios (default: the first)")
    parser.add_argument(
        "--trace",
        help="trace file; a relative path is under --shared-dir (the project root by default), "
        "not the current directory",
    )
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=PROJECT_ROOT,
        help="base of relative trace paths, of --trace and of the scenario file's traces (default: the project "
        "root, %(default)s)",
    )
    parser.add_argument("--compute-hours", type=finite_float, help="compute the job needs (or use --stages)")
    parser.add_argument("--deadline-hours", type=finite_float, help="hours from the start to the deadline")
    parser.add_argument(
        "--stages",
        help="pipeline stages NAME=HOURS[:od], comma-separated, each name once; ':od' marks a stage that cannot use "
        "Spot (e.g. preprocess=2,hpc=20:od,postprocess=1)",
    )
    parser.add_argument("--start-tick", type=int, help="first tick of the window (default 0)")
    parser.add_argument(
        "--nodes",
        type=int,
        help=f"nodes the job needs: a tick has Spot capacity when the trace has at least this many "
        f"(default {defaults['nodes']})",
    )
    parser.add_argument(
        "--tick-seconds",
        type=finite_float,
        help="length of a policy tick, rounded to a whole number (at least 1) of the trace's samples "
        f"(default {defaults['tick_seconds']:g})",
    )
    parser.add_argument(
        "--changeover-hours",
        type=finite_float,
        help="paid time lost each time the job starts on, or switches to, Spot or On-Demand; rounded to whole ticks "
        f"(default {defaults['changeover_hours']:g})",
    )
    parser.add_argument("--od-price", type=finite_float, help="USD per hour, whole job (default 3.06, p3.2xlarge)")
    parser.add_argument("--spot-price", type=finite_float, help="USD per hour, whole job (default 0.918)")
    parser.add_argument("--advisor-bucket", type=int, choices=range(5), help="Spot Advisor interruption bucket")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="default",
        help="the policy to run (default: default, the deployed policy; the only one that says why it chose)",
    )
    parser.add_argument("--png", type=Path, help="write the timeline as a PNG")
    parser.add_argument("--json", type=Path, help="write the run (summary and per-tick timeline) as JSON")
    parser.set_defaults(func=run_simulate)


def _parse_stages(text: str) -> list[dict[str, Any]]:
    stages = []
    for part in text.split(","):
        name, sep, rest = part.strip().partition("=")
        name = name.strip()  # "hpc =2" names the stage hpc, as "hpc=2" does
        hours_text, _, kind = rest.partition(":")
        try:
            hours = float(hours_text)
        except ValueError:
            hours = math.nan
        if not sep or not name or not (math.isfinite(hours) and hours > 0) or kind not in ("", "od", "spot"):
            raise ToolError(f"bad stage {part!r}: expected NAME=HOURS or NAME=HOURS:od")
        stages.append({"name": name, "compute_hours": hours, "spot": kind != "od"})
    return stages


def _option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scenario_from_args(args: argparse.Namespace) -> tuple[Any, int]:
    """The raw scenario and its index in the file (its fallback id), from --scenarios or from the job options."""
    given = [name for name in JOB_OPTION_DEFAULTS if getattr(args, name) is not None]
    if args.scenarios:
        from spotctl.policy_sim.scenarios import load_scenarios, scenario_id

        if given:
            flags = ", ".join(_option_flag(name) for name in given)
            raise ToolError(f"{flags}: the job comes from --scenarios; drop these options or --scenarios")
        scenarios = load_scenarios(args.scenarios)
        if not scenarios:
            raise ToolError(f"{args.scenarios} has no scenarios: nothing to simulate")
        if args.id is None:
            return scenarios[0], 0
        for index, candidate in enumerate(scenarios):
            if scenario_id(candidate, index) == args.id:
                return candidate, index
        raise ToolError(f"no scenario with id {args.id!r} in {args.scenarios}")
    if args.id is not None:
        raise ToolError("--id picks a scenario of --scenarios: give --scenarios too")
    if not args.trace or args.deadline_hours is None or (args.compute_hours is None and not args.stages):
        raise ToolError("give --scenarios, or --trace, --deadline-hours and --compute-hours (or --stages)")
    if args.compute_hours is not None and args.stages:
        raise ToolError("give --compute-hours or --stages, not both: the stages' hours are the job's compute")
    raw: dict[str, Any] = {"id": "simulate"}
    for name, default in JOB_OPTION_DEFAULTS.items():
        raw[name] = default if getattr(args, name) is None else getattr(args, name)
    if args.stages:
        raw["stages"] = _parse_stages(args.stages)
        raw["compute_hours"] = sum(stage["compute_hours"] for stage in raw["stages"])
    return raw, 0


def run_simulate(args: argparse.Namespace) -> int:
    from spot_hpc.policy import TICK_POLICIES

    from spotctl.policy_sim.optimum import run_optimum
    from spotctl.policy_sim.scenarios import build_job, parse_scenario
    from spotctl.policy_sim.simulator import simulate
    from spotctl.policy_sim.timeline import ExplainedPolicy, format_timeline
    from spotctl.policy_sim.traces import resolve

    # The trace file as `build_job` reads it (a relative one is under --shared-dir).
    trace = None if args.trace is None else Path(resolve(str(args.trace), args.shared_dir))
    reads = {"--scenarios": args.scenarios, "--trace": trace}
    if args.json:
        check_output(args.json, "--json", reads=reads)
    if args.png:
        check_output(args.png, "--png", suffix=".png", reads=reads)
    raw, index = _scenario_from_args(args)
    try:
        scenario = parse_scenario(raw, index)
        job = build_job(scenario, args.shared_dir)
    except (ValueError, OverflowError) as exc:  # ScenarioError, or numbers too large to turn into ticks
        raise ToolError(str(exc)) from None
    if args.policy == "optimum":
        result = run_optimum(job, record=True)
        reasons = ["knows the whole window in advance"] * len(result.timeline)
        if not result.met:
            raise ToolError("no policy can meet this deadline on this trace")
    else:
        policy = ExplainedPolicy(TICK_POLICIES[args.policy](scenario.advisor_bucket))
        result = simulate(job, policy, record=True)
        reasons = policy.reasons
    # The files are written before the timeline is printed: a reader of stdout that has gone (`| head -1`) stops the
    # command at its first print, and must not leave an earlier run's files where this run's were asked for.
    timeline = format_timeline(job, result, reasons)
    if args.json:
        document = {
            "policy": result.policy,
            "cost": result.cost,
            "met": result.met,
            "finish_hours": result.finish_hours,
            "tick_hours": job.tick_hours,
            "timeline": [
                {
                    "tick": record.tick,
                    "hours": record.tick * job.tick_hours,
                    "stage": record.stage,
                    "capacity": record.capacity,
                    "action": record.action.value,
                    "productive": record.productive,
                    "progress_hours": record.progress * job.tick_hours,
                    "cost": record.cost,
                    "reason": reason,
                }
                for record, reason in zip(result.timeline, reasons, strict=False)
            ],
        }
        write_text(args.json, json.dumps(document, indent=1) + "\n")
    if args.png:
        from spotctl.policy_sim.plots import plot_timeline

        plot_timeline(job, result, args.png)
    print(timeline)
    if args.png:
        print(f"timeline written to {args.png}")
    return 0
