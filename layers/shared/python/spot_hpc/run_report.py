"""The run report (the design's contract): a run's stages, attempts, counts, cost and savings, from the ledger."""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Any

from spot_hpc import cost
from spot_hpc.clock import hours_between, parse_time, utc_now
from spot_hpc.ledger import Attempt, Run, Stage


class FailureClass(StrEnum):
    """Why an attempt ended without success (an attempt's `failure_class` in the ledger and the run report)."""

    SPOT_RECLAIM = "spot_reclaim"
    HOST_FAILURE = "host_failure"
    CHECKPOINTED_INTERRUPTION = "checkpointed_interruption"
    CANCELLED_BY_CONTROL_PLANE = "cancelled_by_control_plane"
    TIMEOUT = "timeout"
    APPLICATION_ERROR = "application_error"


# The capacity went away (or was about to): resubmitted without spending the application's retry budget.
RECLAIM_CLASSES = frozenset(
    {FailureClass.SPOT_RECLAIM, FailureClass.HOST_FAILURE, FailureClass.CHECKPOINTED_INTERRUPTION}
)


def _hours(run: Run, when: str | None) -> float | None:
    return None if when is None else round(hours_between(parse_time(run.started_at), parse_time(when)), 6)


def requeues_to_on_demand(attempts: list[Attempt]) -> int:
    """Moves of a stage's work from Spot to On-Demand: an On-Demand attempt right after a Spot one, whether the
    Spot job was replaced before the instance went or resubmitted after a reclaim."""
    moves = 0
    for stage in {a.stage for a in attempts}:
        ordered = sorted((a for a in attempts if a.stage == stage), key=lambda a: a.attempt)
        moves += sum(
            1 for before, after in pairwise(ordered) if (before.capacity, after.capacity) == ("spot", "on-demand")
        )
    return moves


def build_run_report(
    run: Run, stages: list[Stage], attempts: list[Attempt], on_demand_usd_per_hour: dict[str, float]
) -> dict[str, Any]:
    """`on_demand_usd_per_hour`: each stage's On-Demand price for all its nodes (the base of the savings)."""
    now_hours = hours_between(parse_time(run.started_at), utc_now())
    stage_reports = []
    billed: list[cost.Attempt] = []
    for stage in stages:
        rows = []
        for attempt in sorted((a for a in attempts if a.stage == stage.stage), key=lambda a: a.attempt):
            started, stopped = _hours(run, attempt.started_at), _hours(run, attempt.stopped_at)
            billing = cost.Attempt(attempt.capacity, attempt.nodes, started, stopped, attempt.usd_per_hour)  # type: ignore[arg-type]
            billed.append(billing)
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
                    "started_hours": started,
                    "stopped_hours": stopped,
                    "resumed_from_checkpoint": attempt.resumed_from_checkpoint,
                    "usd_per_hour": round(attempt.usd_per_hour, 6),
                    "cost_usd": cost.attempt_cost_usd(billing, now_hours),
                }
            )
        stage_reports.append(
            {
                "name": stage.stage,
                "status": stage.status,
                "attempts": rows,
                "compute_hours": stage.compute_hours,
                "on_demand_usd_per_hour": on_demand_usd_per_hour.get(stage.stage, 0.0),
            }
        )
    plans = [cost.StagePlan(s.stage, s.compute_hours, on_demand_usd_per_hour.get(s.stage, 0.0)) for s in stages]
    settled = cost.settle_run(billed, plans, now_hours)
    finished = _hours(run, run.finished_at)
    return {
        "run_id": run.run_id,
        "source": f"s3://{run.bucket}/{run.key}",
        "started_at": run.started_at,
        "pipeline_status": run.status,
        "deadline_hours": run.deadline_hours,
        "finished_hours": finished,
        "deadline_met": run.status == "SUCCEEDED" and finished is not None and finished <= run.deadline_hours + 1e-9,
        "stages": stage_reports,
        "interruptions": sum(1 for a in attempts if a.failure_class in RECLAIM_CLASSES),
        "requeues_to_on_demand": requeues_to_on_demand(attempts),
        **settled.as_report_fields(),
    }
