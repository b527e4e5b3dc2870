"""`spotctl demo`: one pipeline run offline on the real template, state machine and handlers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spotctl.cli import ToolError, finite_float
from spotctl.files import check_output, write_text


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="run one pipeline offline and print its timeline and cost")
    parser.add_argument(
        "--trace",
        type=Path,
        help="Spot availability trace; a relative path is relative to the current directory (default: a p3.2xlarge "
        "us-east-1a trace of the project)",
    )
    parser.add_argument("--start-hour", type=finite_float, help="hour of the trace the run starts at (default 75)")
    parser.add_argument("--deadline-hours", type=finite_float, help="the run's deadline (default 12)")
    parser.add_argument(
        "--stage-hours",
        help="compute each stage needs on one uninterrupted attempt (default preprocess=2,hpc=4,postprocess=1)",
    )
    parser.add_argument("--hpc-nodes", type=int, help="nodes of the multi-node HPC stage (default 2)")
    parser.add_argument("--json", type=Path, help="write the run report here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spot_hpc.pipeline import InvalidRunOptions, parse_stage_hours
    from spot_hpc.run_report import run_report_json

    from spotctl.offline.batch_emulator import TraceError
    from spotctl.offline.demo import DemoOptions, format_summary, run_demo
    from spotctl.offline.stack import TemplateError

    # The demo's HPC stage is always a multi-node parallel job (the control plane's "shards" mode is not offered
    # here), so say so in the demo's own terms rather than with the control plane's advice.
    if args.hpc_nodes is not None and args.hpc_nodes < 2:
        raise ToolError(f"--hpc-nodes {args.hpc_nodes}: the HPC stage is a multi-node job and needs at least 2 nodes")
    if args.json:
        check_output(args.json, "--json", reads={"--trace": args.trace})
    options = DemoOptions()
    for name in ("trace", "start_hour", "deadline_hours", "hpc_nodes"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    started = time.monotonic()
    try:
        if args.stage_hours is not None:
            options.stage_hours = {**options.stage_hours, **parse_stage_hours(args.stage_hours)}
        report, timeline = run_demo(options)
    except InvalidRunOptions as exc:
        raise ToolError(f"invalid run options: {exc}") from exc
    except (TraceError, TemplateError) as exc:
        raise ToolError(str(exc)) from exc
    if args.json:
        # Strict JSON (no NaN or Infinity): a report that cannot be written so is the tool's fault, not the run's.
        # Written before the summary is printed, so that a reader of stdout that has gone (`| head`) does not leave an
        # earlier run's report where this run's was asked for.
        write_text(args.json, run_report_json(report))
    print(format_summary(report, timeline))
    print(
        f"\nOffline runtime: {len(report['not_emulated'])} template resources not emulated "
        f"({', '.join(sorted({r['type'] for r in report['not_emulated']}))}); "
        f"wall time {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if report["pipeline_status"] == "RUNNING":
        # The run itself ending, succeeded or failed, is exit 0; one the demo stopped watching is the demo's failure.
        print(
            "spotctl demo: error: the run had not ended when virtual time reached the demo's horizon (3 x the "
            "deadline + the stage hours + their jobs' starts); its report above is of an unfinished run",
            file=sys.stderr,
        )
        return 1
    return 0
