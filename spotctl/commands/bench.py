"""`spotctl bench policy`: every policy on a scenario file, against the exact optimum (see benchmarks/RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError
from spotctl.files import check_output, write_text, writing

# The project root: its data/ holds the traces that scenario paths are relative to.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    policy.add_argument("--jobs", type=int, default=0, help="worker processes (default: up to 2)")
    policy.set_defaults(func=run_policy_bench)


def run_policy_bench(args: argparse.Namespace) -> int:
    from spotctl.policy_sim.benchmark import default_jobs, format_summary, progress_bar, run_benchmark
    from spotctl.policy_sim.scenarios import load_scenarios

    if not args.shared_dir.is_dir():
        raise ToolError(f"--shared-dir is not a directory: {args.shared_dir}")
    # Outputs are written after the whole benchmark: a path that cannot be written is refused before it.
    check_output(args.json, "--json")
    if args.summary:
        check_output(args.summary, "--summary")
    if args.plot:
        check_output(args.plot, "--plot", suffix=".png")
    scenarios = load_scenarios(args.scenarios)
    started = time.monotonic()
    rows = run_benchmark(
        scenarios, args.shared_dir, jobs=args.jobs or default_jobs(), progress=progress_bar(sys.stderr)
    )
    elapsed = time.monotonic() - started
    write_text(args.json, json.dumps({"results": rows}, indent=1) + "\n")
    summary = format_summary(rows)
    print(summary)
    print(f"{len(scenarios)} scenarios in {elapsed:.1f} s; rows written to {args.json}")
    if args.summary:
        write_text(args.summary, summary + "\n")
    if args.plot:
        from spotctl.policy_sim.plots import plot_benchmark

        with writing(args.plot):
            plot_benchmark(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0
