"""Spot interruption warnings and rebalance recommendations (aws.ec2).

Within the two-minute window: one ledger query finds the jobs on the instance (no scans), each gets a checkpoint
request, and when the policy says the deadline is at risk the Spot job is replaced by an On-Demand one before the
instance goes. AWS calls per job are bounded: a checkpoint-request put, at most one SubmitJob and one TerminateJob.
"""

from __future__ import annotations

import logging
from typing import Any

from spot_hpc.events import RebalanceRecommendationEvent, SpotInterruptionEvent
from spot_hpc.intake import NOT_THIS_STACKS_INSTANCE, Rejected, parse_event, reject
from spot_hpc.ledger import JobRef
from spot_hpc.placement import choose_capacity, request_checkpoint, requeue_to_on_demand, tell_requeue
from spot_hpc.policy import Action
from spot_hpc.services import Services

logger = logging.getLogger(__name__)


def on_spot_signal(svc: Services, event: dict[str, Any], account_id: str) -> dict[str, Any]:
    rebalance = isinstance(event, dict) and event.get("detail-type") == "EC2 Instance Rebalance Recommendation"
    model: type[SpotInterruptionEvent | RebalanceRecommendationEvent] = (
        RebalanceRecommendationEvent if rebalance else SpotInterruptionEvent
    )
    try:
        parsed = parse_event(model, event, account_id)
    except Rejected as exc:
        return reject(svc, "ec2-event", str(exc), event)
    instance_id = parsed.detail.instance_id
    refs = svc.ledger.jobs_on_instance(instance_id)
    if not refs:
        # Other workloads' instances share the account's event stream: counted, not acted on.
        return {"status": "ignored", "reason": NOT_THIS_STACKS_INSTANCE, "instance_id": instance_id}
    signal = "rebalance recommendation" if rebalance else "interruption warning"
    jobs = [_handle_job(svc, ref, instance_id, signal, warning=not rebalance) for ref in refs]
    return {"status": "handled", "instance_id": instance_id, "jobs": jobs}


def _handle_job(svc: Services, ref: JobRef, instance_id: str, signal: str, warning: bool) -> dict[str, Any]:
    run = svc.ledger.get_run(ref.run_id)
    stage = svc.ledger.get_stage(ref.run_id, ref.stage)
    if run is None or stage is None or stage.attempt != ref.attempt or stage.status != "RUNNING":
        if run is not None and stage is not None and stage.attempt > ref.attempt:
            # Requeued already: by this warning's earlier delivery, perhaps, which died before telling of it.
            tell_requeue(svc, run, stage.stage, ref.attempt, f"{signal} on {instance_id}")
        return {"job_id": ref.job_id, "action": "none", "reason": "job no longer current"}
    request_checkpoint(svc, stage, f"{signal} for {instance_id}")
    # After a warning the capacity is going: the policy chooses between waiting for Spot and On-Demand now.
    decision = choose_capacity(svc, run, stage, current=Action.SPOT, spot_available=not warning)
    if decision.action != Action.ON_DEMAND:
        return {"job_id": ref.job_id, "action": "checkpoint", "reason": decision.reason}
    placed = requeue_to_on_demand(svc, run, stage, ref.job_id, f"{signal} on {instance_id}: {decision.reason}")
    if placed is None:
        return {"job_id": ref.job_id, "action": "none", "reason": "already requeued"}
    return {"job_id": ref.job_id, "action": "requeued", "reason": decision.reason}
