"""Spot interruption warnings and rebalance recommendations (aws.ec2).

Within the two-minute window: one ledger query finds the jobs on the instance (no scans), each gets a checkpoint
request, and when the policy says the deadline is at risk the Spot job is replaced by an On-Demand one before the
instance goes. AWS calls per job are bounded: a checkpoint-request put, at most one SubmitJob and one TerminateJob.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from spot_hpc.events import RebalanceRecommendationEvent, SpotInterruptionEvent
from spot_hpc.ledger import LedgerConflict
from spot_hpc.notifier import notify
from spot_hpc.placement import choose_capacity, place_attempt, request_checkpoint
from spot_hpc.policy import Action
from spot_hpc.services import Services

logger = logging.getLogger(__name__)
REQUEUE = "requeue_to_on_demand"


def on_spot_signal(svc: Services, event: dict[str, Any], account_id: str) -> dict[str, Any]:
    detail_type = event.get("detail-type") if isinstance(event, dict) else None
    model = (
        RebalanceRecommendationEvent
        if detail_type == "EC2 Instance Rebalance Recommendation"
        else SpotInterruptionEvent
    )
    try:
        parsed = model.model_validate(event)
    except ValidationError as exc:
        svc.ledger.record_rejection(
            "ec2-event",
            f"malformed Spot event: {exc.errors()[0]['msg']}",
            {"event_id": str(event.get("id", "")) if isinstance(event, dict) else ""},
        )
        return {"status": "rejected", "reason": "malformed"}
    if parsed.account != account_id:
        svc.ledger.record_rejection(
            "ec2-event", f"event from foreign account {parsed.account}", {"event_id": parsed.id}
        )
        return {"status": "rejected", "reason": "foreign account"}
    warning = isinstance(parsed, SpotInterruptionEvent)
    instance_id = parsed.detail.instance_id
    refs = svc.ledger.jobs_on_instance(instance_id)
    if not refs:
        # Other workloads' instances share the account's event stream: counted, not acted on.
        return {"status": "ignored", "reason": "not this stack's instance", "instance_id": instance_id}
    results = []
    for ref in refs:
        results.append(_handle_job(svc, ref.run_id, ref.stage, ref.attempt, ref.job_id, instance_id, warning))
    return {"status": "handled", "instance_id": instance_id, "jobs": results}


def _handle_job(
    svc: Services, run_id: str, stage_name: str, attempt_no: int, job_id: str, instance_id: str, warning: bool
) -> dict[str, Any]:
    run = svc.ledger.get_run(run_id)
    stage = svc.ledger.get_stage(run_id, stage_name)
    if run is None or stage is None or stage.attempt != attempt_no or stage.status != "RUNNING":
        return {"job_id": job_id, "action": "none", "reason": "job no longer current"}
    signal = "interruption warning" if warning else "rebalance recommendation"
    request_checkpoint(svc, stage, f"{signal} for {instance_id}")
    # After a warning the capacity is going: the policy chooses between waiting for Spot and On-Demand now.
    decision = choose_capacity(svc, run, stage, current=Action.SPOT, spot_available=not warning)
    if decision.action != Action.ON_DEMAND:
        return {"job_id": job_id, "action": "checkpoint", "reason": decision.reason}
    try:
        svc.ledger.update_attempt(
            run_id, stage_name, attempt_no, condition="attribute_not_exists(cancel_reason)", cancel_reason=REQUEUE
        )
    except LedgerConflict:
        return {"job_id": job_id, "action": "none", "reason": "already requeued"}
    placed = place_attempt(svc, run, stage, "on-demand", f"{signal}: {decision.reason}")
    svc.batch.terminate(job_id, f"spot-hpc: requeued to On-Demand ({signal})")
    if placed:
        notify(
            svc, "requeued", run, stage_name, f"{signal} on {instance_id}: {decision.reason}", attempt=placed.attempt
        )
    return {"job_id": job_id, "action": "requeued", "reason": decision.reason}
