"""`spotctl bench policy`: every policy on a scenario file, against the exact optimum; `spotctl bench planner`: the
deadline planner's solve time and peak memory in the SLA guard Lambda (both in benchmarks/RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, positive_int
from spotctl.files import check_output, write_text

# Only the standard library at import: the planner's cases are measured in processes of their own.
from spotctl.policy_sim.planner_cost import (
    CHANGEOVER_HOURS,
    FUNCTION,
    PlannerCostError,
    default_cases,
    format_table,
    handler_file,
    lambda_environment,
    memory_limit_mb,
    over_memory,
    parse_case,
    parse_changeovers,
    run_cases,
)

# The project root: its data/ holds the traces that scenario paths are relative to.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Invalid scenarios named on stderr; the rest are counted (every one has error rows in --json).
MAX_INVALID_SHOWN = 20


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    policy = kinds.add_parser(
        "policy",
        help="the Spot / On-Demand policies on a scenario file, against the optimum",
        description="Runs on_demand, spot_only, greedy, uniform_progress, optimum and default on every scenario.",
    )
    policy.add_argument("--scenarios", type=Path, required=True, help='scenario file ({"scenarios": [...]})')
    policy.add_argument(
        "--shared-dir", type=Path, default=PROJECT_ROOT, help="base of relative trace paths (default: project root)"
    )
    policy.add_argument("--json", type=Path, required=True, help="write the result rows here")
    policy.add_argument("--plot", type=Path, help="write a PNG of cost / optimum by slack, one line per policy")
    policy.add_argument("--summary", type=Path, help="also write the summary tables (markdown) here")
    policy.add_argument(
        "--jobs",
        type=positive_int,
        help="worker processes (default: 2); never more than the CPUs (os.cpu_count(), "
        f"{os.cpu_count() or 1} here) or the scenarios in the file",
    )
    # `command` heads the command's error lines (cli.main): the whole command, as argparse names it in its own.
    policy.set_defaults(func=run_policy_bench, command="bench policy")
    planner = kinds.add_parser(
        "planner",
        help="the deadline planner's solve time and peak memory in the SLA guard Lambda, against its MemorySize",
        description=(
            "Runs each case in a fresh process that loads the SLA guard's handler as a cold start does and asks the "
            "policy once from a cold plan cache; reports solve time, peak RSS and the grid used, and exits 1 when a "
            "case's peak RSS exceeds the memory limit. Default cases: deadlines of 24, 72 and 168 h with 96 h of "
            "work (capped where the policy still plans), changeovers of 0.1, 0.2 and 1 h, and the largest plan "
            "the planner's bounds allow, from a cold plan cache and from one full of other stages' plans."
        ),
    )
    cases = planner.add_mutually_exclusive_group()
    cases.add_argument(
        "--changeovers",
        type=_argument_type(parse_changeovers),
        metavar="HOURS,...",
        help="changeovers of the default cases (default: 0.1,0.2,1); the largest plan is taken with the longest",
    )
    cases.add_argument(
        "--case",
        dest="cases",
        action="append",
        type=_argument_type(parse_case),
        metavar="DEADLINE:WORK:CHANGEOVER",
        help="a case in hours instead of the default ones (repeatable), e.g. 24:12:0.2",
    )
    planner.add_argument(
        "--template", type=Path, default=PROJECT_ROOT / "template.yaml", help="SAM template (default: the project's)"
    )
    planner.add_argument(
        "--memory-mb",
        type=positive_int,
        help="the memory limit to check against (default: the SLA guard function's MemorySize in the template)",
    )
    planner.add_argument("--json", type=Path, help="also write the rows here")
    planner.set_defaults(func=run_planner_bench, command="bench planner")


def run_policy_bench(args: argparse.Namespace) -> int:
    from spotctl.policy_sim.benchmark import (
        format_summary,
        invalid_scenarios,
        progress_bar,
        run_benchmark,
        worker_count,
    )
    from spotctl.policy_sim.scenarios import load_scenarios

    if not args.shared_dir.is_dir():
        raise ToolError(f"--shared-dir is not a directory: {args.shared_dir}")
    # Outputs are written after the whole benchmark: a path that cannot be written is refused before it.
    reads = {"--scenarios": args.scenarios}
    check_output(args.json, "--json", reads=reads)
    if args.summary:
        check_output(args.summary, "--summary", reads=reads)
    if args.plot:
        check_output(args.plot, "--plot", suffix=".png", reads=reads)
    scenarios = load_scenarios(args.scenarios)
    if not scenarios:
        _write_rows(args.json, [])  # the rows file exists whatever happens
        raise ToolError(f"{args.scenarios} has no scenarios: nothing to benchmark")
    started = time.monotonic()
    jobs = worker_count(args.jobs, len(scenarios))
    rows = run_benchmark(scenarios, args.shared_dir, jobs=jobs, progress=progress_bar(sys.stderr))
    elapsed = time.monotonic() - started
    # The rows are written even when every scenario is invalid: they hold every scenario's error.
    _write_rows(args.json, rows)
    invalid = invalid_scenarios(rows)
    _print_invalid(invalid, args.json)
    if len(invalid) == len(scenarios):
        raise ToolError(f"all {len(scenarios)} scenarios of {args.scenarios} are invalid: nothing was benchmarked")
    summary = format_summary(rows)
    print(summary)
    print(f"{len(scenarios)} scenarios in {elapsed:.1f} s; rows written to {args.json}")
    if args.summary:
        write_text(args.summary, summary + "\n")
    if args.plot:
        from spotctl.policy_sim.plots import plot_benchmark

        plot_benchmark(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError with a message for the user."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def run_planner_bench(args: argparse.Namespace) -> int:
    from spotctl.offline.stack import TemplateError, load_template

    if args.json:
        check_output(args.json, "--json", reads={"--template": args.template})
    try:
        template = load_template(args.template)
        memory_mb = args.memory_mb or memory_limit_mb(template)
        handler = handler_file(template, args.template.resolve().parent)
        environment = lambda_environment(template)
    except TemplateError as exc:
        raise ToolError(str(exc)) from exc
    except PlannerCostError as exc:
        raise ToolError(f"{args.template}: {exc}") from exc
    if not handler.is_file():
        raise ToolError(f"{FUNCTION}'s handler {handler} is not there")
    cases = args.cases or default_cases(args.changeovers or CHANGEOVER_HOURS)
    rows = run_cases(cases, handler, environment, memory_mb)
    print(format_table(rows))
    if args.json:
        _write_rows(args.json, rows)
        print(f"rows written to {args.json}")
    over = over_memory(rows)
    for row in over:
        problem = row.get("error") or f"peak RSS {row['peak_rss_mb']:.0f} MB exceeds {memory_mb} MB"
        print(f"spotctl bench planner: {row['label']}: {problem}", file=sys.stderr)
    return 1 if over else 0


def _print_invalid(invalid: dict[str, str], rows_path: Path) -> None:
    """One stderr line per invalid scenario (the first MAX_INVALID_SHOWN): the reasons are otherwise only in the
    rows, and the run still succeeds when some scenario is valid."""
    for scenario_id, error in list(invalid.items())[:MAX_INVALID_SHOWN]:
        message = " ".join(error.split())  # one line each, whatever the error says
        print(f"spotctl bench policy: invalid scenario {scenario_id}: {message}", file=sys.stderr)
    if len(invalid) > MAX_INVALID_SHOWN:
        more = len(invalid) - MAX_INVALID_SHOWN
        print(f"spotctl bench policy: ... and {more} more invalid (every error is in {rows_path})", file=sys.stderr)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, json.dumps({"results": rows}, indent=1) + "\n")
