"""`spotctl checkpoint-drill`: interrupt the example workloads mid-run and check that no work or output is lost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, finite_float
from spotctl.files import check_output, write_text

WORKLOAD_CHOICES = ("preprocess", "hpc", "postprocess", "all")
# The longest poll a drill can use: a drilled part works a second or two in all (the runner's DRILL_SIZES) and gets
# its notice a fifth of the way in (NOTICE_AT_PROGRESS), so a part that looks less often than once a second can finish
# before it looks, and the drill fails.
MAX_POLL_SECONDS = 1.0
# The shortest is the job runtime's own (spot_checkpoint.MIN_POLL_SECONDS, 0.01 s), read when the drill runs: the
# runtime's import would add about 0.17 s to every command's start. Each look is a loopback request (about a
# millisecond to the metadata stand-in), so every 10 ms still sees a notice well within the drill's checkpoint interval
# (0.1-0.25 s); at 1e-9 s the hpc drill took 60% more CPU than at 0.2 s, polling back to back.
SHORTEST_POLL_SHOWN = "0.01"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "checkpoint-drill",
        help="run example workloads, interrupt them mid-run, restart them and compare the output",
        description=(
            "Runs each example workload as a real process against an embedded S3 and an instance-metadata stand-in "
            "on 127.0.0.1, posts a Spot interruption notice mid-run, lets the job checkpoint and exit, restarts it "
            "and reports the time from notice to complete checkpoint, the work lost and whether the output equals "
            "an uninterrupted run's."
        ),
    )
    parser.add_argument("--workload", choices=WORKLOAD_CHOICES, default="all", help="workload to drill (default all)")
    parser.add_argument(
        "--via",
        choices=("imds", "request", "sigterm"),
        default="imds",
        help="how to interrupt: Spot notice in instance metadata (default), control-plane request, or SIGTERM",
    )
    parser.add_argument(
        "--poll-seconds",
        type=finite_float,
        default=0.2,
        help=f"how often jobs look for a notice, in seconds (default 0.2; from {SHORTEST_POLL_SHOWN} to "
        f"{MAX_POLL_SECONDS:g}: a drilled part works a second or two and gets its notice a fifth of the way in, so one "
        "that looks less often can finish before it sees it, and one that looks more often only polls back to back)",
    )
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spot_checkpoint import MIN_POLL_SECONDS

    from spotctl.drill.runner import WORKLOADS, DrillError, run_drills

    if not MIN_POLL_SECONDS <= args.poll_seconds <= MAX_POLL_SECONDS:
        why = (
            "a drilled part works a second or two, and one that looks for its notice less often can finish before it "
            "sees it"
            if args.poll_seconds > MAX_POLL_SECONDS
            else "a job that looks for its notice more often only has its watchers poll back to back, taking the "
            "cores from the parts drilled"
        )
        raise ToolError(
            f"--poll-seconds must be from {MIN_POLL_SECONDS:g} to {MAX_POLL_SECONDS:g}, not {args.poll_seconds:g}: "
            f"{why}"
        )
    if args.json is not None:
        check_output(args.json, "--json")
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    failure: DrillError | None = None
    try:
        results = run_drills(workloads, via=args.via, poll_seconds=args.poll_seconds)
    except DrillError as exc:
        # The drill stops at a workload that cannot be drilled; those drilled before it are reported all the same.
        results, failure = exc.completed, exc
    for result in results:
        print(
            f"{result.workload:<12} via {result.interrupted_via:<8} notice->checkpoint "
            f"{result.notice_to_checkpoint_seconds:6.3f} s  lost work {result.lost_work_seconds:6.3f} s "
            f"(interval {result.checkpoint_interval_seconds:.2f} s)  resumed {result.resumed_from_checkpoint}  "
            f"output identical {result.output_matches_uninterrupted}"
        )
    if args.json is not None:
        rows = [result.as_row() for result in results]
        if failure is not None:
            rows.append({"workload": failure.workload, "interrupted_via": args.via, "error": str(failure)})
        write_text(args.json, json.dumps(rows if args.workload == "all" else rows[0], indent=2) + "\n")
    if failure is not None:
        not_drilled = workloads[len(results) + 1 :]
        after = f" (not drilled after it: {', '.join(not_drilled)})" if not_drilled else ""
        raise ToolError(f"{failure}{after}") from failure
    ok = all(result.output_matches_uninterrupted and result.resumed_from_checkpoint for result in results)
    return 0 if ok else 1
