"""The end of a run: settle it in the ledger and tell the team what it cost and saved."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from spot_hpc.ledger import Run
from spot_hpc.metrics import record_settled_run
from spot_hpc.notifier import notify
from spot_hpc.placement import node_price
from spot_hpc.run_report import build_run_report
from spot_hpc.services import Services


def run_report(svc: Services, run: Run) -> dict[str, Any]:
    stages, attempts = svc.ledger.get_run_items(run.run_id)
    prices = {stage.stage: node_price(svc, "on-demand", stage) for stage in stages}
    report = build_run_report(run, stages, attempts, prices)
    report["notifications"] = svc.ledger.run_notifications(run.run_id)
    return report


@dataclass(frozen=True)
class Settlement:
    report: dict[str, Any]
    # False when the run was already settled (the state machine retried the notify task): count it once.
    first_time: bool

    def summary(self) -> dict[str, Any]:
        return {k: self.report[k] for k in SUMMARY_FIELDS}


def record_settlement(metrics: Any, settlement: Settlement) -> dict[str, Any]:
    """The run's figures go to the metrics once (not again when the state machine retries the notify task)."""
    if settlement.first_time:
        record_settled_run(metrics, settlement.report)
    return settlement.summary()


SUMMARY_FIELDS = ("run_id", "pipeline_status", "cost_usd", "on_demand_only_cost_usd", "savings_pct", "deadline_met")


def finish(svc: Services, payload: dict[str, Any]) -> Settlement:
    run_id, outcome = str(payload.get("run_id", "")), payload.get("outcome")
    if outcome not in ("succeeded", "failed"):
        raise ValueError(f"outcome must be succeeded or failed, not {outcome!r}")
    run = svc.ledger.get_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the ledger")
    error = _error_text(payload.get("error"))
    first_time = svc.ledger.finish_run(run_id, "SUCCEEDED" if outcome == "succeeded" else "FAILED", error or None)
    run = svc.ledger.get_run(run_id) or run
    report = run_report(svc, run)
    reason = (
        f"deadline {'met' if report['deadline_met'] else 'missed'}: {report['finished_hours']:.2f} h of "
        f"{run.deadline_hours:g} h"
        if outcome == "succeeded"
        else error or "a stage failed"
    )
    notify(
        svc,
        outcome,
        run,
        None,
        reason,
        cost_usd=report["cost_usd"],
        on_demand_only_cost_usd=report["on_demand_only_cost_usd"],
        savings_pct=report["savings_pct"],
        deadline_met=report["deadline_met"],
    )
    return Settlement(report, first_time)


def _error_text(error: Any) -> str:
    """The state machine's caught error: {"Error": ..., "Cause": ...} (the cause may itself be JSON)."""
    if not isinstance(error, dict):
        return ""
    cause = error.get("Cause") or ""
    try:
        parsed = json.loads(cause)
        if isinstance(parsed, dict):
            cause = parsed.get("errorMessage") or parsed.get("Cause") or cause
    except (TypeError, ValueError):
        pass
    return f"{error.get('Error', 'Error')}: {cause}".strip(": ")
