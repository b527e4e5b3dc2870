"""CloudWatch metric names and dimensions of the control plane, and recording a settled run (Powertools EMF).

The figures of a run are recorded once, when the run settles (from the run report kept in the ledger): counts
come from the ledger rather than from each event, so a redelivered EventBridge event never counts twice.
Dimensions stay low-cardinality (service, stage); the run id travels as EMF metadata, searchable in Logs Insights
but not a metric dimension (each dimension value would be a billed custom metric).

The template's dashboard and alarms use the same namespace, names and `service` dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from spot_hpc.cost import attempts_from_report, report_as_of_hours, stage_wall_hours
from spot_hpc.intake import NOT_THIS_STACKS_INSTANCE
from spot_hpc.run_report import FailureClass

NAMESPACE = "SpotHpc"
# Powertools' `service` dimension: POWERTOOLS_SERVICE_NAME, which the template sets to the stack's name (its alarms and
# dashboard watch that one, not another stack's runs in the same account); this one where it is not set.
SERVICE = "spot-hpc"
SERVICE_DIMENSION = "service"
STAGE_DIMENSION = "Stage"

# Counts per settled run.
PIPELINES_SUCCEEDED = "PipelinesSucceeded"
PIPELINES_FAILED = "PipelinesFailed"
DEADLINES_MET = "DeadlinesMet"
DEADLINES_MISSED = "DeadlinesMissed"
# The run report's `interruptions`: attempts that lost their capacity (Spot reclaim, host terminated, or stopped
# after checkpointing on a notice). A Spot job replaced by On-Demand before its instance went is a requeue instead.
SPOT_INTERRUPTIONS = "SpotInterruptions"
SPOT_RECLAIMS = "SpotReclaims"  # attempts whose Spot host was taken away
REQUEUES_TO_ON_DEMAND = "RequeuesToOnDemand"
# Money, USD per settled run (CloudWatch has no currency unit: NoUnit).
RUN_COST_USD = "RunCostUsd"
ON_DEMAND_ONLY_COST_USD = "OnDemandOnlyCostUsd"
SAVINGS_USD = "SavingsUsd"
SAVINGS_PERCENT = "SavingsPercent"
# Per stage (dimension Stage): first attempt's start to last attempt's stop, waits included.
STAGE_DURATION_SECONDS = "StageDurationSeconds"

# Per handled event (the settled-run figures above are counted from the ledger instead).
REJECTED_INPUTS = "RejectedInputs"  # malformed events, foreign accounts, bad uploads: recorded in the ledger too
FOREIGN_INSTANCE_SIGNALS = "ForeignInstanceSignals"  # Spot signals for instances running none of our jobs
ACTIVE_STAGES = "ActiveStages"  # what the SLA guard looked after on one run
DEFERRED_STAGES = "DeferredStages"  # what a guard pass left to a later one, out of time (an alarm's figure)
GUARD_UNREAD = "GuardUnreadSources"  # the active stages or their jobs a guard pass could not read (an alarm's figure)


def new_metrics() -> Any:
    """A Powertools `Metrics` in the control plane's namespace and service (import kept lazy for cold starts)."""
    from aws_lambda_powertools import Metrics

    return Metrics(namespace=NAMESPACE, service=os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE)


def count_reclaims(run_report: Mapping[str, Any]) -> int:
    """Spot attempts whose host was terminated under them (as the Batch state change classified them), unless the
    report already counts them."""
    if isinstance(run_report.get("reclaims"), int):
        return int(run_report["reclaims"])
    return sum(
        1
        for stage in run_report.get("stages", [])
        for attempt in stage.get("attempts", [])
        if attempt.get("failure_class") == FailureClass.SPOT_RECLAIM
    )


def record_settled_run(metrics: Any, run_report: Mapping[str, Any]) -> None:
    """Add a settled run's figures to `metrics` (flushed by the caller, e.g. `@metrics.log_metrics`).

    `run_report` is the run report of the design (pipeline_status, deadline_met, stages, interruptions,
    requeues_to_on_demand, cost_usd, on_demand_only_cost_usd, savings_pct). Every run's cost counts; the
    On-Demand-only cost and the savings only a succeeded run's.
    """
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    succeeded = run_report.get("pipeline_status") == "SUCCEEDED"
    metrics.add_metric(name=PIPELINES_SUCCEEDED, unit=MetricUnit.Count, value=1 if succeeded else 0)
    metrics.add_metric(name=PIPELINES_FAILED, unit=MetricUnit.Count, value=0 if succeeded else 1)
    deadline_met = bool(run_report.get("deadline_met"))
    metrics.add_metric(name=DEADLINES_MET, unit=MetricUnit.Count, value=1 if deadline_met else 0)
    metrics.add_metric(name=DEADLINES_MISSED, unit=MetricUnit.Count, value=0 if deadline_met else 1)
    metrics.add_metric(name=SPOT_INTERRUPTIONS, unit=MetricUnit.Count, value=int(run_report.get("interruptions", 0)))
    metrics.add_metric(name=SPOT_RECLAIMS, unit=MetricUnit.Count, value=count_reclaims(run_report))
    metrics.add_metric(
        name=REQUEUES_TO_ON_DEMAND, unit=MetricUnit.Count, value=int(run_report.get("requeues_to_on_demand", 0))
    )
    cost = float(run_report.get("cost_usd", 0.0))
    metrics.add_metric(name=RUN_COST_USD, unit=MetricUnit.NoUnit, value=cost)
    if succeeded:
        # A failed run delivered nothing to compare: its notice tells its cost only, and so do its metrics.
        on_demand_only = float(run_report.get("on_demand_only_cost_usd", 0.0))
        metrics.add_metric(name=ON_DEMAND_ONLY_COST_USD, unit=MetricUnit.NoUnit, value=on_demand_only)
        metrics.add_metric(name=SAVINGS_USD, unit=MetricUnit.NoUnit, value=round(on_demand_only - cost, 6))
        savings = float(run_report.get("savings_pct", 0.0))
        metrics.add_metric(name=SAVINGS_PERCENT, unit=MetricUnit.Percent, value=savings)
    if run_report.get("run_id"):
        metrics.add_metadata(key="run_id", value=str(run_report["run_id"]))

    # Stage durations need a Stage dimension the run-level figures must not carry: one EMF blob per stage.
    as_of_hours = report_as_of_hours(run_report)
    for stage in run_report.get("stages", []):
        # A stage that succeeded ended with its successful attempt; one that did not, with the run (as its bill runs).
        open_until = None if stage.get("status") == "SUCCEEDED" else as_of_hours
        hours = stage_wall_hours(attempts_from_report({"stages": [stage]}), open_until)
        if hours is None:
            continue
        with single_metric(
            name=STAGE_DURATION_SECONDS,
            unit=MetricUnit.Seconds,
            value=round(hours * 3600.0, 3),
            namespace=NAMESPACE,
            default_dimensions={SERVICE_DIMENSION: getattr(metrics, "service", None) or SERVICE},
        ) as metric:
            metric.add_dimension(name=STAGE_DIMENSION, value=str(stage["name"]))


def record_event_outcome(metrics: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Counts what a handler refused or ignored (every other figure is counted once, when its run settles);
    returns the result unchanged."""
    from aws_lambda_powertools.metrics import MetricUnit

    if result.get("status") == "rejected":
        metrics.add_metric(name=REJECTED_INPUTS, unit=MetricUnit.Count, value=1)
    if result.get("reason") == NOT_THIS_STACKS_INSTANCE:
        metrics.add_metric(name=FOREIGN_INSTANCE_SIGNALS, unit=MetricUnit.Count, value=1)
    unread = result.get("unread", [])
    if unread:
        metrics.add_metric(name=GUARD_UNREAD, unit=MetricUnit.Count, value=len(unread))
    if "active_stages" in result and "active stages" not in unread:  # none read is not none active
        metrics.add_metric(name=ACTIVE_STAGES, unit=MetricUnit.Count, value=int(result["active_stages"]))
    if "deferred_stages" in result:
        metrics.add_metric(name=DEFERRED_STAGES, unit=MetricUnit.Count, value=int(result["deferred_stages"]))
    return result
