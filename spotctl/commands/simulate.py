"""`spotctl simulate`: one job or pipeline on one trace, tick by tick, to explain the policy's decisions."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError
from spotctl.commands.bench import PROJECT_ROOT

POLICIES = ("default", "greedy", "uniform_progress", "spot_only", "on_demand", "optimum")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="one job or pipeline on one Spot trace, with a per-tick timeline",
        description="Simulates one job (or pipeline) on a trace and prints when and why it ran on Spot, "
        "On-Demand or waited. Take the job from a scenario file (--scenarios, --id) or describe it with options.",
    )
    parser.add_argument("--scenarios", type=Path, help="a benchmark scenario file to take the job from")
    parser.add_argument("--id", help="the scenario's id in --scenarios (default: the first)")
    parser.add_argument("--trace", help="trace file (relative paths are under --shared-dir)")
    parser.add_argument("--shared-dir", type=Path, default=PROJECT_ROOT, help="base of relative trace paths")
    parser.add_argument("--compute-hours", type=float, help="compute the job needs (or use --stages)")
    parser.add_argument("--deadline-hours", type=float, help="hours from the start to the deadline")
    parser.add_argument(
        "--stages",
        help="pipeline stages NAME=HOURS[:od], comma-separated; ':od' marks a stage that cannot use Spot "
        "(e.g. preprocess=2,hpc=20:od,postprocess=1)",
    )
    parser.add_argument("--start-tick", type=int, default=0, help="first tick of the window (default 0)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--tick-seconds", type=float, default=300.0)
    parser.add_argument("--changeover-hours", type=float, default=0.2)
    parser.add_argument("--od-price", type=float, default=3.06, help="USD per hour, whole job (default p3.2xlarge)")
    parser.add_argument("--spot-price", type=float, default=0.918, help="USD per hour, whole job")
    parser.add_argument("--advisor-bucket", type=int, choices=range(5), help="Spot Advisor interruption bucket")
    parser.add_argument("--policy", choices=POLICIES, default="default")
    parser.add_argument("--png", type=Path, help="write the timeline as a PNG")
    parser.add_argument("--json", type=Path, help="write the run (summary and per-tick timeline) as JSON")
    parser.set_defaults(func=run_simulate)


def _parse_stages(text: str) -> list[dict[str, Any]]:
    stages = []
    for part in text.split(","):
        name, sep, rest = part.strip().partition("=")
        hours_text, _, kind = rest.partition(":")
        try:
            hours = float(hours_text)
        except ValueError:
            hours = math.nan
        if not sep or not name or not hours > 0 or kind not in ("", "od", "spot"):
            raise ToolError(f"bad stage {part!r}: expected NAME=HOURS or NAME=HOURS:od")
        stages.append({"name": name, "compute_hours": hours, "spot": kind != "od"})
    return stages


def _scenario_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenarios:
        from spotctl.policy_sim.scenarios import load_scenarios

        scenarios = load_scenarios(args.scenarios)
        if args.id is None:
            return scenarios[0] if scenarios else {}
        for candidate in scenarios:
            if isinstance(candidate, dict) and str(candidate.get("id")) == args.id:
                return candidate
        raise ToolError(f"no scenario with id {args.id!r} in {args.scenarios}")
    if not args.trace or args.deadline_hours is None or (args.compute_hours is None and not args.stages):
        raise ToolError("give --scenarios, or --trace, --deadline-hours and --compute-hours (or --stages)")
    raw: dict[str, Any] = {
        "id": "simulate",
        "trace": args.trace,
        "nodes": args.nodes,
        "tick_seconds": args.tick_seconds,
        "start_tick": args.start_tick,
        "deadline_hours": args.deadline_hours,
        "changeover_hours": args.changeover_hours,
        "od_price": args.od_price,
        "spot_price": args.spot_price,
        "advisor_bucket": args.advisor_bucket,
    }
    if args.stages:
        raw["stages"] = _parse_stages(args.stages)
        raw["compute_hours"] = sum(stage["compute_hours"] for stage in raw["stages"])
    else:
        raw["compute_hours"] = args.compute_hours
    return raw


def run_simulate(args: argparse.Namespace) -> int:
    from spot_hpc.policy import TICK_POLICIES

    from spotctl.policy_sim.optimum import run_optimum
    from spotctl.policy_sim.scenarios import ScenarioError, build_job, parse_scenario
    from spotctl.policy_sim.simulator import simulate
    from spotctl.policy_sim.timeline import ExplainedPolicy, format_timeline

    raw = _scenario_from_args(args)
    try:
        scenario = parse_scenario(raw, 0)
        job = build_job(scenario, args.shared_dir)
    except ScenarioError as exc:
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
    print(format_timeline(job, result, reasons))
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
        try:
            args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ToolError(f"cannot write {args.json}: {exc}") from None
    if args.png:
        from spotctl.policy_sim.plots import plot_timeline

        plot_timeline(job, result, args.png)
        print(f"timeline written to {args.png}")
    return 0
