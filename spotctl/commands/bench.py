"""`spotctl bench policy`: every policy on a scenario file, against the exact optimum (see benchmarks/RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, positive_int
from spotctl.files import check_output, write_text, writing

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
    policy.set_defaults(func=run_policy_bench)


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
    check_output(args.json, "--json")
    if args.summary:
        check_output(args.summary, "--summary")
    if args.plot:
        check_output(args.plot, "--plot", suffix=".png")
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

        with writing(args.plot):
            plot_benchmark(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


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
