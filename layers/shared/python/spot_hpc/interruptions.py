"""Spot interruption warnings and rebalance recommendations (aws.ec2).

Within the two-minute window: one ledger query finds the jobs on the instance (no scans), each gets a checkpoint
request, and when the policy says the deadline is at risk the Spot job is replaced by an On-Demand one before the
instance goes. AWS calls per job are bounded: a checkpoint-request put, at most one SubmitJob and one TerminateJob.

Every signal is also kept for a while: EventBridge keeps no order between EC2's events and Batch's, so a job's RUNNING
may be told after it (`act_on_kept_signals`, called when a job's instance is recorded). A kept warning also tells,
once the job has ended, whether EC2 interrupted its instance within the instance's first hour, which AWS does not
charge for, for none of the instance's usage (`first_hour`); a warning for an instance our jobs ran on has the SLA
guard ask EC2 how the instance ended, once the warning's two minutes are out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from spot_hpc.clock import format_time, happened_at, parse_time, utc_now
from spot_hpc.events import RebalanceRecommendationEvent, SpotInterruptionEvent
from spot_hpc.first_hour import await_interruption
from spot_hpc.intake import NOT_THIS_STACKS_INSTANCE, Rejected, parse_event, reject
from spot_hpc.ledger import InstanceSignal, JobRef
from spot_hpc.placement import choose_capacity, request_checkpoint, requeue_to_on_demand, tell_requeue
from spot_hpc.policy import Action
from spot_hpc.services import Services

logger = logging.getLogger(__name__)
# A kept signal is acted on when its job's start is told within this long of it: a warning comes two minutes before
# the reclaim, and a start event may come minutes late (delivery, a handler's retries). Later, the job has ended.
SIGNAL_KEPT_FOR = timedelta(minutes=10)


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
    signal = "rebalance recommendation" if rebalance else "interruption warning"
    # Kept first, whatever runs there, then the instance's jobs read: a job whose start is recorded meanwhile (or
    # later, on an instance that ran other jobs of ours before) finds the signal when it is.
    signalled_at = format_time(happened_at(parsed.time))
    kept = InstanceSignal(instance_id, signal, warning=not rebalance, signalled_at=signalled_at)
    svc.ledger.keep_instance_signal(kept, parsed.id, SIGNAL_KEPT_FOR)
    refs = svc.ledger.jobs_on_instance(instance_id)
    if not refs:
        # Mostly other workloads' instances, which share the account's event stream: counted, not acted on.
        return {"status": "ignored", "reason": NOT_THIS_STACKS_INSTANCE, "instance_id": instance_id}
    if not rebalance:
        # Whether EC2 takes it within its first hour (AWS then bills none of the jobs that ran there, ended ones
        # too) is known once it has: the SLA guard asks. Awaited before the jobs are acted on, which may fail.
        await_interruption(svc, instance_id, parse_time(signalled_at))
    # Each job on its own: one that cannot be acted on now (S3 or Batch throttled past the client's retries) must not
    # leave the others, of other runs, unasked within the warning's two minutes. The event then fails, and its retry
    # acts on every job again, each step repeating safely.
    jobs, failed = [], []
    for ref in refs:
        try:
            jobs.append(act_on_signal(svc, ref, instance_id, signal, not rebalance, parse_time(signalled_at)))
        except Exception as exc:
            logger.exception("could not act on a Spot signal for a job", extra={"job_id": ref.job_id})
            failed.append(exc)
    if failed:
        raise failed[0]
    return {"status": "handled", "instance_id": instance_id, "jobs": jobs}


def act_on_kept_signals(svc: Services, ref: JobRef, instance_ids: Iterable[str]) -> list[dict[str, Any]]:
    """A job's start on `instance_ids` was just recorded: the Spot signals given for them before it was (kept by
    `on_spot_signal`) are acted on now, as they would have been; but a rebalance recommendation given before the job
    started (`act_on_signal`)."""
    since = utc_now() - SIGNAL_KEPT_FOR
    acted = []
    for instance_id in instance_ids:
        for kept in svc.ledger.instance_signals(instance_id, since):
            given = parse_time(kept.signalled_at)
            if not kept.warning and _started_after(svc, ref, given):
                continue
            acted.append(act_on_signal(svc, ref, instance_id, kept.signal, kept.warning, given))
            if kept.warning:
                await_interruption(svc, instance_id, given)
    return acted


def act_on_signal(
    svc: Services, ref: JobRef, instance_id: str, signal: str, warning: bool, signalled_at: datetime
) -> dict[str, Any]:
    run = svc.ledger.get_run(ref.run_id)
    stage = svc.ledger.get_stage(ref.run_id, ref.stage)
    if run is None or stage is None or stage.attempt != ref.attempt or stage.status != "RUNNING":
        if run is not None and stage is not None and stage.attempt > ref.attempt:
            # Requeued already: by this warning's earlier delivery, perhaps, which died before telling of it.
            tell_requeue(svc, run, stage.stage, ref.attempt, f"{signal} on {instance_id}")
        return {"job_id": ref.job_id, "action": "none", "reason": "job no longer current"}
    if not warning and _started_after(svc, ref, signalled_at):
        # A recommendation was acted on for the jobs it was given for; one started after it (kept for its instance, or
        # found by the recommendation's retry) has no progress of its own to save yet. A warning is acted on whenever
        # given: the instance goes with the job on it.
        return {"job_id": ref.job_id, "action": "none", "reason": f"started after the {signal}"}
    # A rebalance recommendation says the instance is at risk, not going: its jobs save their progress and work on,
    # rather than stop and start again (on this same instance, as likely as not) for a reclaim that may never come.
    request_checkpoint(svc, stage, f"{signal} for {instance_id}", stop=warning)
    # After a warning the capacity is going: the policy chooses between waiting for Spot and On-Demand now.
    decision = choose_capacity(svc, run, stage, current=Action.SPOT, spot_available=not warning)
    if decision.action != Action.ON_DEMAND:
        return {"job_id": ref.job_id, "action": "checkpoint", "reason": decision.reason}
    placed = requeue_to_on_demand(svc, run, stage, ref.job_id, f"{signal} on {instance_id}: {decision.reason}")
    if placed is None:
        return {"job_id": ref.job_id, "action": "none", "reason": "already requeued"}
    return {"job_id": ref.job_id, "action": "requeued", "reason": decision.reason}


def _started_after(svc: Services, ref: JobRef, signalled_at: datetime) -> bool:
    """Whether the job's attempt started after the signal (kept signals are told to the second)."""
    attempt = svc.ledger.get_attempt(ref.run_id, ref.stage, ref.attempt)
    started_at = attempt.started_at if attempt is not None else None
    return started_at is not None and parse_time(started_at).replace(microsecond=0) > signalled_at
