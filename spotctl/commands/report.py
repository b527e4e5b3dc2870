"""`spotctl report`: per-run and per-period summaries of run reports, with an optional PNG chart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError
from spotctl.files import check_output, read_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarise runs: cost, On-Demand-only cost and savings per run and per day or week",
        description="Summarise run reports as tables (per run, per period) and optionally a PNG chart.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-json",
        dest="from_json",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="run report files (as written by `spotctl demo --json`); a file may also hold a list of reports",
    )
    source.add_argument(
        "--stack",
        metavar="NAME",
        help="read every run from a deployed stack's ledger (AWS credentials of the account are used)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="region of --stack (default: AWS_REGION, else the AWS CLI's region: AWS_DEFAULT_REGION or the "
        "profile's region, else us-east-1); not with --from-json, whose reports are read as they are",
    )
    parser.add_argument("--period", choices=("day", "week"), default="day", help="period of the totals table")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="write a bar chart of cost vs On-Demand by run (with no runs there is no chart: the report says so on "
        "stderr and exits 1)",
    )
    parser.set_defaults(func=run_report)


def load_run_reports(paths: list[Path]) -> list[dict[str, Any]]:
    """Run reports from JSON files; a report without `run_id` is named after its file. A run id or a file given twice
    is refused: its cost would count twice in the totals. Each report is checked as it is read (`summarise_run`), so
    that one whose figures are not what they can be is refused naming its file as well as the run and the field."""
    from spotctl.reporting import summarise_run

    reports: list[dict[str, Any]] = []
    found_in: dict[str, Path] = {}
    # A file named twice (`runs/*.json runs/a.json`) would count its runs twice, and runs without a run id are not
    # told apart by their ids: they are named after their file.
    given_as: dict[Path, Path] = {}
    for path in paths:
        first = given_as.setdefault(path.resolve(), path)
        if first is not path:
            raise ToolError(f"{path} is {first} again: give each file once")
        document = read_json(path)
        items = document if isinstance(document, list) else [document]
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raise ToolError(f"{path}: expected a run report object (or a list of them)")
            if item.get("run_id") not in (None, ""):
                run_id = str(item["run_id"])
                if run_id in found_in:
                    raise ToolError(f"run {run_id!r} is in {found_in[run_id]} and again in {path}: give each run once")
                found_in[run_id] = path
            report = dict(item)
            report.setdefault("run_id", path.stem if len(items) == 1 else f"{path.stem}[{position}]")
            try:
                summarise_run(report, len(reports))
            except ValueError as exc:
                raise ToolError(f"{path}: {exc}") from None
            reports.append(report)
    return reports


def load_stack_reports(stack: str, region: str | None) -> tuple[str, list[dict[str, Any]]]:
    """("stack NAME in REGION", every run in its ledger as a run report). Each report is checked as it is read
    (`summarise_run`), as a file's are, and every error names the stack, as a file's name the file."""
    from spotctl.deployed import StackNotFound, run_reports, services_for_stack, stack_region
    from spotctl.reporting import summarise_run

    try:
        region = stack_region(region)
    except ToolError as exc:
        raise ToolError(f"stack {stack!r}: {exc}") from None
    try:
        # Its errors name the stack and its region already.
        services = services_for_stack(stack, region)
    except StackNotFound as exc:
        raise ToolError(str(exc)) from None
    where = f"stack {stack!r} in {region}"
    try:
        reports = run_reports(services)
        for index, report in enumerate(reports):
            summarise_run(report, index)
    except (ToolError, ValueError) as exc:
        raise ToolError(f"{where}: {exc}") from None
    return where, reports


def run_report(args: argparse.Namespace) -> int:
    from spotctl.reporting import render_report

    if args.from_json and args.region is not None:
        # Nothing in a report file is looked up in a region: a region given with one would be silently ignored.
        raise ToolError("--region is the region of --stack; --from-json reads run reports from files, which need none")
    if args.plot is not None:
        check_output(args.plot, "--plot", suffix=".png")
    if args.from_json:
        reports, no_runs = load_run_reports(list(args.from_json)), "there are no runs to chart"
    else:
        where, reports = load_stack_reports(args.stack, args.region)
        no_runs = f"{where} has no runs to chart"
    try:
        # The chart's folders are made only as it is written, after every report was read: a report that fails
        # leaves none behind.
        text = render_report(reports, args.plot, period=args.period)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    print(text)
    if args.plot is not None and not reports:
        # No chart was written, and an earlier one at that path is left as it was: the user (or a script about to
        # send the chart on) is told, and the exit code says the report did not do all it was asked.
        print(f"spotctl report: no chart written to {args.plot}: {no_runs}", file=sys.stderr)
        return 1
    return 0
