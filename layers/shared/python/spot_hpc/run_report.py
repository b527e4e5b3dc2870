"""The run report (the design's contract): a run's stages, attempts, counts, cost and savings, from the ledger."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from itertools import pairwise
from typing import Any

from spot_hpc import cost
from spot_hpc.clock import format_time, hours_between, parse_time, utc_now
from spot_hpc.ledger import Attempt, Run, Stage


class FailureClass(StrEnum):
    """Why an attempt ended without success (an attempt's `failure_class` in the ledger and the run report)."""

    SPOT_RECLAIM = "spot_reclaim"
    HOST_FAILURE = "host_failure"
    CHECKPOINTED_INTERRUPTION = "checkpointed_interruption"
    CANCELLED_BY_CONTROL_PLANE = "cancelled_by_control_plane"
    TIMEOUT = "timeout"
    S3_UNAVAILABLE = "s3_unavailable"
    APPLICATION_ERROR = "application_error"


# The capacity went away (or was about to): resubmitted without spending the application's retry budget.
RECLAIM_CLASSES = frozenset(
    {FailureClass.SPOT_RECLAIM, FailureClass.HOST_FAILURE, FailureClass.CHECKPOINTED_INTERRUPTION}
)

# What each class means, in the words a research team reads in Slack.
FAILURE_WORDS: dict[str, str] = {
    FailureClass.SPOT_RECLAIM: "Spot took its instance back",
    FailureClass.HOST_FAILURE: "its instance was terminated under it",
    FailureClass.CHECKPOINTED_INTERRUPTION: "it checkpointed and stopped for a Spot interruption",
    FailureClass.CANCELLED_BY_CONTROL_PLANE: "the control plane cancelled it to move the work to On-Demand",
    FailureClass.TIMEOUT: "it ran past its time limit",
    FailureClass.S3_UNAVAILABLE: "S3 stayed busy or failing as it started, past its retries",
    FailureClass.APPLICATION_ERROR: "the application failed",
}


def describe_failure(failure_class: str | None, exit_code: int | None = None) -> str:
    """Why an attempt failed, in plain words (with the exit code of an application error)."""
    words = FAILURE_WORDS.get(failure_class or "", "it failed")
    if failure_class == FailureClass.APPLICATION_ERROR and exit_code is not None:
        words += f" (exit code {exit_code})"
    return words


def _hours(run: Run, when: str | None) -> float | None:
    """Hours since the run started, as the report shows them (6 decimals: 3.6 ms)."""
    return None if when is None else round(hours_between(parse_time(run.started_at), parse_time(when)), 6)


def requeues_to_on_demand(attempts: list[Attempt]) -> int:
    """Moves of a stage's work from Spot to On-Demand: an On-Demand attempt right after a Spot one, whether the
    Spot job was replaced before the instance went or resubmitted after a reclaim, and not ended as it was placed."""
    moves = 0
    for stage in {a.stage for a in attempts}:
        ordered = sorted((a for a in attempts if a.stage == stage), key=lambda a: a.attempt)
        moves += sum(1 for before, after in pairwise(ordered) if moved_to_on_demand(before, after))
    return moves


def moved_to_on_demand(before: Attempt, after: Attempt) -> bool:
    """Whether the attempt after `before` moved the stage's work from Spot to On-Demand (a requeue): one ended as it
    was placed, its stage settled meanwhile, moved none."""
    return (before.capacity, after.capacity) == ("spot", "on-demand") and not after.ended_as_placed


def build_run_report(
    run: Run, stages: list[Stage], attempts: list[Attempt], on_demand_usd_per_hour: dict[str, float | None]
) -> dict[str, Any]:
    """`on_demand_usd_per_hour`: each stage's On-Demand price for all its nodes (the base of the savings), None when
    it could not be looked up. An unknown price counts as 0, and in `prices_unknown` when a figure needed it."""
    # Rounded as the report shows hours: the running attempts' costs are recomputed from it (`as_of_hours`).
    now_hours = round(hours_between(parse_time(run.started_at), utc_now()), 6)
    finished = _hours(run, run.finished_at)
    if run.status != "RUNNING" and finished is not None:
        # A run that ended is billed as of its end: the run's end stopped its jobs, and an attempt whose own end was
        # never recorded (its job's event lost once the stage had left the guard's watch) is not billed for ever.
        now_hours = min(now_hours, finished)
    stage_reports: list[dict[str, Any]] = []
    billed: list[cost.Attempt] = []
    for stage in stages:
        rows = []
        for attempt in sorted((a for a in attempts if a.stage == stage.stage), key=lambda a: a.attempt):
            rows.append(
                {
                    "job_id": attempt.job_id,
                    "queue": attempt.queue,
                    "capacity": attempt.capacity,
                    "nodes": attempt.nodes,
                    "status": attempt.status,
                    "status_reason": attempt.status_reason or "",
                    "exit_code": attempt.exit_code,
                    "failure_class": attempt.failure_class,
                    "started_hours": _hours(run, attempt.started_at),
                    "stopped_hours": _hours(run, attempt.stopped_at),
                    "resumed_from_checkpoint": bool(attempt.resumed_from_checkpoint),
                    "usd_per_hour": round(attempt.usd_per_hour, 6),
                    "price_unknown": bool(attempt.price_unknown),
                }
            )
            if attempt.instance_seconds is not None:  # an ended array: its shards' own instance time, billed
                rows[-1]["instance_seconds"] = attempt.instance_seconds
            if attempt.run_seconds is not None:  # and run, billed or not (the On-Demand-only base counts it)
                rows[-1]["run_seconds"] = attempt.run_seconds
            if attempt.interrupted_in_first_hour:  # AWS charges nothing for the instance
                rows[-1]["interrupted_in_first_hour"] = True
            if attempt.instance_type:  # what the job ran on, which its price is of
                rows[-1]["instance_type"] = attempt.instance_type
                rows[-1]["availability_zone"] = attempt.availability_zone
            # Billed from the reported hours, as `cost.check_run_report_costs` recomputes them: rounded to 3.6 ms,
            # they still give the ledger's whole seconds (`cost.billed_seconds`).
            billed.append(cost.attempt_from_report(rows[-1]))
            rows[-1]["cost_usd"] = cost.attempt_cost_usd(billed[-1], now_hours)
        stage_reports.append(
            {
                "name": stage.stage,
                "status": stage.status,
                "attempts": rows,
                "compute_hours": stage.compute_hours,
                "on_demand_usd_per_hour": round(float(on_demand_usd_per_hour.get(stage.stage) or 0.0), 6),
            }
        )
    for stage_report in stage_reports:  # the hours its On-Demand-only cost counts, for whoever reads the report
        stage_report["on_demand_only_hours"] = round(cost.on_demand_only_hours(stage_report, now_hours), 6)
    plans = cost.stage_plans_from_report({"stages": stage_reports, "as_of_hours": now_hours}) or []
    settled = cost.settle_run(billed, plans, now_hours)
    # A run that ended lists the stages it ran, each SUCCEEDED or FAILED; those it never reached (after a stage that
    # failed for good) are named apart: they cost nothing and have no outcome.
    not_run = [item["name"] for item in stage_reports if run.status != "RUNNING" and item["status"] == "PENDING"]
    return {
        "run_id": run.run_id,
        "source": f"s3://{run.bucket}/{run.key}",
        "started_at": format_time(parse_time(run.started_at)),
        "pipeline_status": run.status,
        "deadline_hours": run.deadline_hours,
        "finished_hours": finished,
        # What an attempt still running is billed up to: when the report was made, or the end of a run that ended.
        "as_of_hours": now_hours,
        # Met: the pipeline succeeded by its deadline. A failed run has not met it; nor, yet, has one still running.
        "deadline_met": run.status == "SUCCEEDED" and finished is not None and finished <= run.deadline_hours + 1e-9,
        "stages": [item for item in stage_reports if item["name"] not in not_run],
        "stages_not_run": not_run,
        "interruptions": sum(1 for a in attempts if a.failure_class in RECLAIM_CLASSES),
        "requeues_to_on_demand": requeues_to_on_demand(attempts),
        # Prices that could not be looked up and count as 0 in a figure: of attempts that ran and AWS charges for (one
        # on an instance EC2 interrupted within its first hour costs nothing at any price, as does an array none of
        # whose shards' instance time is billed), and of the On-Demand bases of stages that count hours (one never
        # reached, or not yet, counts none: its price changes nothing).
        "prices_unknown": sum(
            1
            for a in attempts
            if a.price_unknown
            and a.started_at is not None
            and not a.interrupted_in_first_hour
            and a.instance_seconds != 0
        )
        + sum(
            1
            for item in stage_reports
            if on_demand_usd_per_hour.get(item["name"]) is None and item["on_demand_only_hours"] > 0
        ),
        **settled.as_report_fields(),
    }


def run_report_json(report: dict[str, Any], indent: int | None = 2) -> str:
    """The report as strict JSON: NaN and Infinity are refused, naming the field (no strict parser reads them)."""
    _refuse_non_finite(report, "report")
    return json.dumps(report, indent=indent, allow_nan=False)


def _refuse_non_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"run report field {where} is not a finite number: {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{where}[{index}]")
