"""`spotctl demo`: one pipeline run offline on the real template, state machine and handlers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="run one pipeline offline and print its timeline and cost")
    parser.add_argument("--trace", type=Path, help="Spot availability trace (default: a p3.2xlarge us-east-1a trace)")
    parser.add_argument("--start-hour", type=float, default=75.0, help="hour of the trace the run starts at")
    parser.add_argument("--deadline-hours", type=float, default=12.0)
    parser.add_argument(
        "--stage-hours",
        default="preprocess=2,hpc=4,postprocess=1",
        help="compute each stage needs on one uninterrupted attempt",
    )
    parser.add_argument("--hpc-nodes", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the run report here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spot_hpc.pipeline import InvalidRunOptions, parse_stage_hours

    from spotctl.cli import ToolError
    from spotctl.offline.batch_emulator import TraceError
    from spotctl.offline.demo import DemoOptions, format_summary, run_demo
    from spotctl.offline.runtime import DEFAULT_TRACE
    from spotctl.offline.stack import TemplateError

    if not 0 < args.deadline_hours <= 24 * 365:
        raise ToolError(f"--deadline-hours must be a positive number of hours, not {args.deadline_hours}")
    if args.hpc_nodes < 2:
        raise ToolError("--hpc-nodes: a multi-node parallel job needs at least 2 nodes")
    try:
        stage_hours = parse_stage_hours(args.stage_hours)
    except InvalidRunOptions as exc:
        raise ToolError(f"--stage-hours: {exc}") from exc
    unknown = set(stage_hours) - {"preprocess", "hpc", "postprocess"}
    if unknown or any(h <= 0 for h in stage_hours.values()):
        raise ToolError(
            f"--stage-hours: stages are preprocess, hpc, postprocess with positive hours ({args.stage_hours})"
        )
    options = DemoOptions(
        trace=args.trace or DEFAULT_TRACE,
        start_hour=args.start_hour,
        deadline_hours=args.deadline_hours,
        stage_hours=stage_hours,
        hpc_nodes=args.hpc_nodes,
    )
    started = time.monotonic()
    try:
        report, timeline = run_demo(options)
    except (TraceError, TemplateError) as exc:
        raise ToolError(str(exc)) from exc
    print(format_summary(report, timeline))
    print(
        f"\nOffline runtime: {len(report['not_emulated'])} template resources not emulated "
        f"({', '.join(sorted({r['type'] for r in report['not_emulated']}))}); "
        f"wall time {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0
