"""One pipeline run offline: upload a CSV, let the control plane run it on emulated Batch, report what happened."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from spot_hpc.pipeline import build_run_options
from spot_hpc.slack import hours_shown, savings_shown

from spotctl.deployed import services_for_stack
from spotctl.offline.adapters import OFFLINE_FUNCTION_ENV
from spotctl.offline.batch_emulator import START_DELAY, SpotTrace, TraceError
from spotctl.offline.eventbus import REGION
from spotctl.offline.runtime import CLOCK_STEP_MINUTES, DEFAULT_TRACE, OfflineControlPlane
from spotctl.offline.stack import STACK_NAME
from spotctl.reporting import format_table

SAMPLE_CSV = b"sample_id,temperature,pressure\n1,293.1,101.3\n2,294.7,101.1\n3,292.8,100.9\n"


@dataclass
class DemoOptions:
    """One demo run; the defaults are `make demo`'s (Spot capacity drops 46 minutes into hour 75 of the trace)."""

    trace: Path = DEFAULT_TRACE
    start_hour: float = 75.0
    deadline_hours: float = 12.0
    stage_hours: dict[str, float] = field(default_factory=lambda: {"preprocess": 2.0, "hpc": 4.0, "postprocess": 1.0})
    hpc_nodes: int = 2

    def upload_metadata(self) -> dict[str, str]:
        """The object metadata the demo upload carries (what a user would set with `aws s3 cp --metadata`).

        Hours are written with repr, which float() reads back exactly (`:g` would round to six digits).
        """
        return {
            "deadline-hours": repr(float(self.deadline_hours)),
            "hpc-nodes": str(self.hpc_nodes),
            "stage-hours": ",".join(f"{k}={float(v)!r}" for k, v in self.stage_hours.items()),
        }


def control_plane_services(plane: OfflineControlPlane) -> Any:
    """The domain services with the deployed functions' environment (to read the ledger as the handlers do)."""
    return services_for_stack(STACK_NAME, REGION, OFFLINE_FUNCTION_ENV)


def run_demo(options: DemoOptions) -> tuple[dict[str, Any], list[str]]:
    """Returns the run report (the design's contract) and a readable timeline.

    The options go through the control plane's own validation first (InvalidRunOptions says what is wrong).
    """
    from spot_hpc.outcome import run_report

    metadata = options.upload_metadata()
    stage_hours = build_run_options(None, metadata, options.deadline_hours, options.hpc_nodes).stage_hours
    # Virtual time runs until the pipeline settles or this horizon; past the trace's end capacity would be made up.
    # Besides its compute, each stage's job may wait START_DELAY for an On-Demand instance, between the clock step
    # in which it becomes RUNNABLE and the one in which it runs: time a deadline of minutes would not cover.
    start_hours = (START_DELAY + 2 * timedelta(minutes=CLOCK_STEP_MINUTES)) / timedelta(hours=1)
    horizon = options.deadline_hours * 3 + sum(stage_hours.values()) + len(stage_hours) * start_hours
    trace = SpotTrace.load(options.trace, options.start_hour)
    if horizon > trace.hours_available():
        latest_start = trace.hours - horizon
        advice = f"start by hour {latest_start:g}" if latest_start >= 0 else "use a longer trace"
        raise TraceError(
            f"{options.trace}: the trace has {trace.hours:g} h; a run from hour {options.start_hour:g} may need "
            f"{horizon:g} h (3 x the deadline + the stage hours + their jobs' starts), past its end: {advice} or "
            "shorten the deadline"
        )
    handler_output = io.StringIO()
    with (
        OfflineControlPlane(trace=options.trace, start_hour=options.start_hour, stage_hours=stage_hours) as plane,
        contextlib.redirect_stdout(handler_output),
    ):
        plane.upload("incoming/sample.csv", SAMPLE_CSV, metadata)
        plane.run_until_settled(max_hours=horizon)
        svc = control_plane_services(plane)
        runs = svc.ledger.list_runs()
        if not runs:
            rejections = svc.ledger.list_rejections()
            raise RuntimeError(f"no run started: {rejections}")
        report = run_report(svc, runs[-1])
        timeline = [
            f"{(t - plane.clock.start).total_seconds() / 3600:7.2f} h  {line}" for t, line in plane.batch.timeline
        ]
        report["not_emulated"] = plane.stack.not_emulated
        report["trace"] = str(options.trace)
    return report, timeline


ATTEMPT_HEADERS = ("stage", "capacity", "nodes", "status", "start h", "stop h", "cost USD", "resumed", "why it ended")


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _run_hours(report: dict[str, Any]) -> str:
    """The run's hours as its notice shows them: never rounded down onto a deadline they are past."""
    finished = report["finished_hours"]
    return "-" if finished is None else hours_shown(finished, report["deadline_hours"])


def _reason(attempt: dict[str, Any]) -> str:
    # Batch's words ("Essential container in task exited") say little on their own; lead with the control plane's class.
    failure = attempt.get("failure_class")
    reason = f"{failure}: {attempt['status_reason']}" if failure else str(attempt["status_reason"])
    # Why such an attempt's cost is 0.00.
    return (
        f"{reason} (not charged: EC2 interrupted the instance in its first hour)"
        if attempt.get("interrupted_in_first_hour")
        else reason
    )


def _cost_line(report: dict[str, Any]) -> str:
    """What the run cost, and, for a run that succeeded, what it saved (worded as its Slack notice words it); a run
    that did not succeed delivered nothing to compare, and its notice tells its cost only too."""
    cost = f"Cost ${report['cost_usd']:.2f}"
    if report["pipeline_status"] != "SUCCEEDED":
        return f"{cost} (the run {report['pipeline_status'].lower()}: no savings to tell)"
    saved, percent = savings_shown(report["savings_pct"])
    told = f"saved {percent}" if saved else f"{percent} more than On-Demand only"
    return f"{cost} vs ${report['on_demand_only_cost_usd']:.2f} On-Demand only ({told})"


def format_summary(report: dict[str, Any], timeline: list[str]) -> str:
    attempts = [
        (
            stage["name"],
            a["capacity"],
            f"x{a['nodes']}",
            a["status"],
            _hours(a["started_hours"]),
            _hours(a["stopped_hours"]),
            f"{a['cost_usd']:.2f}",
            "yes" if a["resumed_from_checkpoint"] and a["started_hours"] is not None else "",  # a never-run one did not
            _reason(a),
        )
        for stage in report["stages"]
        for a in stage["attempts"]
    ]
    lines = [
        "Timeline (simulated hours since upload):",
        *timeline,
        "",
        format_table(ATTEMPT_HEADERS, attempts, numeric_columns={4, 5, 6}),
    ]
    lines += [
        "",
        f"Pipeline {report['pipeline_status']} in {_run_hours(report)} h "
        f"of {report['deadline_hours']:g} h: deadline {'met' if report['deadline_met'] else 'MISSED'}",
        f"Interruptions {report['interruptions']}, requeues to On-Demand {report['requeues_to_on_demand']}",
        _cost_line(report),
        "Notifications: " + ", ".join(f"{n['channel']}:{n['kind']}" for n in report.get("notifications", [])),
    ]
    return "\n".join(lines)
