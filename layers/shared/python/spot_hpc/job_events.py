"""Batch Job State Change: keep the ledger, classify failures, resubmit reclaimed work, settle stages.

Events come at least once and in any order. A job's state only moves forward (STATUS_RANK); a terminal state is
acted on by whoever wins the conditional write on the attempt, so a duplicate does nothing twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from spot_checkpoint import EXIT_CHECKPOINTED, EXIT_S3_UNAVAILABLE, EXIT_STOPPED_WITHOUT_CHECKPOINT
from spot_checkpoint.csvfields import ascii_digits
from spot_checkpoint.store import CheckpointStore

from spot_hpc.clock import format_epoch_ms, format_time, from_epoch_ms, hours_between, parse_time, utc_now
from spot_hpc.cost import billed_seconds
from spot_hpc.events import (
    MAIN_NODE_INDEX,
    STATUS_RANK,
    TERMINAL_STATUSES,
    BatchJobDetail,
    BatchJobStateChangeEvent,
)
from spot_hpc.first_hour import unbill_shared_instances, unbilled_instances
from spot_hpc.intake import Rejected, parse_event, reject
from spot_hpc.interruptions import SIGNAL_KEPT_FOR, act_on_kept_signals
from spot_hpc.ledger import CANCEL_EARLIER_SUCCEEDED, Attempt, JobRef, LedgerConflict, Run, Stage
from spot_hpc.notifier import notify
from spot_hpc.pipeline import TAG_ATTEMPT, TAG_RUN, TAG_STAGE
from spot_hpc.placement import (
    ACTION_OF_CAPACITY,
    CAPACITY_OF_ACTION,
    HeldInstance,
    InstancePrices,
    cancel_and_terminate,
    choose_capacity,
    end_spot_wait,
    instance_prices,
    place_attempt,
    price_on_instances,
    priced_on_instances,
    record_placed,
    requeue_to_on_demand,
    spot_stats,
    start_spot_wait,
    tell_requeue,
)
from spot_hpc.policy import Action
from spot_hpc.run_report import FAILURE_WORDS, RECLAIM_CLASSES, FailureClass
from spot_hpc.services import Services

logger = logging.getLogger(__name__)

_HOST_TERMINATED = re.compile(r"^Host EC2 \(instance (i-[0-9a-f]+)\) terminated")
_TIMEOUT = re.compile(r"attempt duration exceed(?:s|ed) timeout", re.IGNORECASE)  # Batch: "...exceeded timeout"
# Starts S3 failed (each after the job runtime's 300 s of retries) that are placed again spending no retry. S3 failing
# every start past them spends the stage's retries, so the run fails saying so rather than placing it until the
# stage's timeout, each attempt billed.
S3_UNAVAILABLE_RESUBMITS = 3


def classify_failure(detail: BatchJobDetail, attempt: Attempt) -> str:
    """Why a job failed: what the control plane does next depends on nothing else."""
    reason = detail.status_reason or ""
    if attempt.cancel_reason:
        return FailureClass.CANCELLED_BY_CONTROL_PLANE
    if attempt.shard_failure:
        return attempt.shard_failure
    if _HOST_TERMINATED.match(reason):
        return FailureClass.SPOT_RECLAIM if attempt.capacity == "spot" else FailureClass.HOST_FAILURE
    # Before the exit code: Batch ends a timed-out attempt with a SIGTERM, on which the job checkpoints and exits 86
    # as on a Spot notice; read as an interruption, a job that never finishes would be resubmitted forever, for free.
    if _TIMEOUT.search(reason):
        return FailureClass.TIMEOUT
    if detail.exit_code == EXIT_S3_UNAVAILABLE:
        return FailureClass.S3_UNAVAILABLE
    if detail.exit_code in (EXIT_CHECKPOINTED, EXIT_STOPPED_WITHOUT_CHECKPOINT):
        return FailureClass.CHECKPOINTED_INTERRUPTION
    return FailureClass.APPLICATION_ERROR


def on_job_state_change(svc: Services, event: dict[str, Any], account_id: str) -> dict[str, Any]:
    try:
        parsed = parse_event(BatchJobStateChangeEvent, event, account_id)
    except Rejected as exc:
        return reject(svc, "batch-event", str(exc), event)
    return apply_job_state(svc, parsed.detail)


def apply_job_state(svc: Services, detail: BatchJobDetail) -> dict[str, Any]:
    """Applies one observed job state; also the guard's way to repair a stage whose event was lost."""
    if detail.array_parent_id:
        return _apply_shard_state(svc, detail, detail.array_parent_id)
    if detail.multinode_parent_id:
        return _apply_child_node_state(svc, detail, detail.multinode_parent_id)
    ref = svc.ledger.find_job(detail.job_id) or _adopt(svc, detail)
    if ref is None:
        logger.info("event for a job this control plane does not know", extra={"job_id": detail.job_id})
        return {"status": "ignored", "reason": "unknown job"}
    attempt = svc.ledger.get_attempt(ref.run_id, ref.stage, ref.attempt)
    if attempt is None:
        return {"status": "ignored", "reason": "attempt not recorded"}
    if detail.status in TERMINAL_STATUSES and attempt.status == detail.status:
        # A repeated terminal event: its first delivery may have died after recording it and before acting on it.
        return _act_on_terminal(svc, ref, attempt, detail, repeated=True)
    if STATUS_RANK[detail.status] <= STATUS_RANK.get(attempt.status, -1):
        if detail.status == attempt.status and attempt.capacity == "spot" and detail.status in SPOT_WAIT_STATUSES:
            # A repeated status: its first delivery may have died after recording it, before the stage's Spot wait
            # and the signals given before it.
            _track_spot_wait(svc, ref, detail.status)
            if detail.status == "RUNNING":
                act_on_kept_signals(svc, ref, attempt.instance_ids)
        if detail.status == attempt.status == "RUNNING" and not attempt.instance_type:
            _price_as_run(svc, attempt, attempt.instance_ids)  # the first delivery died before pricing it
        return {"status": "ignored", "reason": f"stale {detail.status} after {attempt.status}"}

    if detail.status in TERMINAL_STATUSES:
        return _apply_terminal(svc, ref, attempt, detail)
    sets: dict[str, Any] = {"status": detail.status}
    if detail.status == "RUNNING":
        sets["started_at"] = format_epoch_ms(detail.started_at) or format_time(utc_now())
        instance_ids = svc.batch.instance_ids(detail.container_instance_arns)
        sets["instance_ids"] = instance_ids
        for instance_id in instance_ids:
            svc.ledger.index_instance(instance_id, ref)
    try:
        svc.ledger.update_open_attempt(ref.run_id, ref.stage, ref.attempt, **sets)
    except LedgerConflict:
        return {"status": "ignored", "reason": "attempt already settled"}
    result: dict[str, Any] = {"status": "recorded", "job_status": detail.status}
    if attempt.capacity == "spot" and detail.status in SPOT_WAIT_STATUSES:
        _track_spot_wait(svc, ref, detail.status)
        if detail.status == "RUNNING":
            result["signals"] = act_on_kept_signals(svc, ref, sets["instance_ids"])
    if detail.status == "RUNNING":
        # After the signals: a warning kept for this instance is acted on first, within its two minutes.
        _price_as_run(svc, replace(attempt, started_at=sets["started_at"]), sets["instance_ids"])
    return result


def _price_as_run(svc: Services, attempt: Attempt, instance_ids: list[str]) -> None:
    """Prices a job that has started on the one instance it got (`placement.price_on_instances`)."""
    if len(instance_ids) != 1 or not attempt.started_at:
        return
    priced = price_on_instances(svc, attempt, [HeldInstance(instance_ids[0], 1.0, parse_time(attempt.started_at))])
    if priced:
        svc.ledger.update_attempt(attempt.run_id, attempt.stage, attempt.attempt, **priced)


def _apply_shard_state(svc: Services, detail: BatchJobDetail, parent_id: str) -> dict[str, Any]:
    """A shard (child) of a shards-mode array job. The parent never runs: AWS Batch shows it PENDING until every
    child has ended. So the shards tell when the stage waits for Spot, where it runs (instances, for interruption
    warnings) and why it failed; the parent's own end settles the stage."""
    found = _open_attempt_of(svc, parent_id)
    if isinstance(found, str):
        return {"status": "ignored", "reason": found}
    ref, attempt = found
    sets: dict[str, Any] = {}
    if detail.status == "RUNNING":
        instance_ids = svc.batch.instance_ids(detail.container_instance_arns)
        for instance_id in instance_ids:
            svc.ledger.index_instance(instance_id, ref)
            svc.ledger.add_attempt_instance(ref.run_id, ref.stage, ref.attempt, instance_id)
        if attempt.status != "RUNNING":
            sets.update(status="RUNNING", started_at=format_epoch_ms(detail.started_at) or format_time(utc_now()))
    # The shard's own end, not the array's as an earlier shard recorded it: a reclaim after an application error is
    # still a reclaim, which ends the array now and takes the place of that error (a reclaim first). The first
    # reclaim stays: the shards it ends checkpoint and stop after it (`_record_shard_failure`).
    failure = classify_failure(detail, replace(attempt, shard_failure=None)) if detail.status == "FAILED" else None
    if sets:
        try:
            svc.ledger.update_open_attempt(ref.run_id, ref.stage, ref.attempt, **sets)
        except LedgerConflict:
            return {"status": "ignored", "reason": "attempt already settled"}
    if failure:
        _record_shard_failure(svc, ref, failure)
    if failure in RECLAIM_CLASSES and not attempt.cancel_reason:
        # The array can no longer succeed: end it now, its running shards checkpointing on SIGTERM, so that the
        # stage is placed again at once rather than when its last shard finishes.
        svc.batch.terminate(parent_id, f"spot-hpc: shard {detail.job_id} ended by {failure}")
    result: dict[str, Any] = {"status": "recorded", "shard_status": detail.status, "failure_class": failure}
    if attempt.capacity == "spot" and detail.status == "RUNNABLE":
        # The array waits while any shard does: one shard starting does not end it (the SLA guard, which sees
        # every shard's status in the parent's summary, does).
        _track_spot_wait(svc, ref, detail.status, shard=True)
    if attempt.capacity == "spot" and detail.status == "RUNNING":
        result["signals"] = act_on_kept_signals(svc, ref, instance_ids)
    return result


def _apply_child_node_state(svc: Services, detail: BatchJobDetail, parent_id: str) -> dict[str, Any]:
    """A child node of a multi-node parallel job. Batch ends such a job with its main node alone, and the main node
    waits for every node's part: a child that failed (S3 unreachable at its start, its host lost, its own error)
    would leave the job running, billed on every node, until its attempt's timeout, which then spends a retry
    whatever the child's failure was. So the first child's failure is recorded as the attempt's (it decides what
    follows: exit 88 is placed again spending no retry), and the job is ended now, its nodes checkpointing."""
    if detail.status != "FAILED":
        return {"status": "ignored", "reason": f"a child node's {detail.status}: the job's own events tell it"}
    found = _open_attempt_of(svc, parent_id)
    if isinstance(found, str):
        return {"status": "ignored", "reason": found}
    ref, attempt = found
    main = svc.batch.describe([f"{parent_id}#{MAIN_NODE_INDEX}"]).get(f"{parent_id}#{MAIN_NODE_INDEX}")
    if main is None or main.get("status") in TERMINAL_STATUSES:
        # Batch stops the children once the main node has ended, which may be why this one failed: the job ends with
        # the main node, and its own end tells how.
        return {"status": "ignored", "reason": "the job's main node has ended"}
    failure = classify_failure(detail, replace(attempt, shard_failure=None))
    # Only where no node's failure is recorded, unlike a shard's: the job is ended on the first, and the nodes that
    # ending stops checkpoint (exit 86) or fail in their turn, which would otherwise take the place of the failure
    # that ended them (an own error, placed again as an interruption spending no retry, again and again).
    recorded = svc.ledger.record_shard_failure(ref.run_id, ref.stage, ref.attempt, failure)
    if not attempt.cancel_reason:  # a job the control plane ended already is ending
        # Again for a node whose failure stands: its first delivery may have died before ending the job.
        svc.batch.terminate(parent_id, f"spot-hpc: node {detail.job_id} ended by {failure}")
    if not recorded:
        return {"status": "ignored", "reason": "the job was ended for a failure recorded before"}
    return {"status": "recorded", "node_status": detail.status, "failure_class": failure}


def _open_attempt_of(svc: Services, parent_id: str) -> tuple[JobRef, Attempt] | str:
    """The open attempt of the job a shard or a node is part of; why there is none to act on otherwise."""
    ref = svc.ledger.find_job(parent_id)
    attempt = svc.ledger.get_attempt(ref.run_id, ref.stage, ref.attempt) if ref else None
    if ref is None or attempt is None:
        return "unknown job"
    if attempt.status in TERMINAL_STATUSES:
        return "attempt already settled"
    return ref, attempt


def _record_shard_failure(svc: Services, ref: JobRef, failure: str) -> None:
    """Records a shard's failure as its array's attempt's, where no failure is recorded or the one recorded ranks
    below it (`_shard_rank`): a condition of the write, not of a read, as another shard's end may be handled at the
    same moment."""
    over = {outranked for outranked in FailureClass if _shard_rank(outranked) < _shard_rank(failure)}
    svc.ledger.record_shard_failure(ref.run_id, ref.stage, ref.attempt, failure, over)


# The statuses that start (RUNNABLE) and end (RUNNING) a Spot job's wait for capacity.
SPOT_WAIT_STATUSES = ("RUNNABLE", "RUNNING")


def _track_spot_wait(svc: Services, ref: JobRef, status: str, shard: bool = False) -> None:
    """A Spot job waits RUNNABLE while there is no capacity: the wait, once over, teaches the stage's statistics. An
    array's (`shard`: a shard's status) waits while any shard does, however many run.

    Only the stage's current attempt's job tells of the stage's wait: a job it has replaced (a Spot job requeued to
    On-Demand, whose RUNNABLE is told late or again before its end) would start a wait on the stage's next attempt,
    which the policy would then learn as a gap in Spot capacity."""
    stage = svc.ledger.get_stage(ref.run_id, ref.stage)
    if stage is None or stage.attempt != ref.attempt:
        return
    if status == "RUNNABLE":
        start_spot_wait(svc, stage, None if shard else ref.attempt)
    elif status == "RUNNING":
        end_spot_wait(svc, stage)


def _adopt(svc: Services, detail: BatchJobDetail) -> JobRef | None:
    """A job submitted by a handler that crashed before recording it: its tags say whose it is."""
    if "#" in detail.job_id:  # a node of a multi-node job (`<job id>#<node>`) has its job's tags, not its id
        return None
    run_id, stage_name = detail.tags.get(TAG_RUN), detail.tags.get(TAG_STAGE)
    attempt_tag = detail.tags.get(TAG_ATTEMPT, "")
    if not (run_id and stage_name and ascii_digits(attempt_tag)):
        return None
    stage = svc.ledger.get_stage(run_id, stage_name)
    if stage is None or stage.attempt != int(attempt_tag) or stage.job_id:
        return None
    capacity = "spot" if detail.job_queue == svc.settings.spot_job_queue else "on-demand"
    record_placed(svc, stage, detail.job_id, detail.job_queue, capacity, "adopted from its Batch event")
    return svc.ledger.find_job(detail.job_id)


def _apply_terminal(svc: Services, ref: JobRef, attempt: Attempt, detail: BatchJobDetail) -> dict[str, Any]:
    failure = None if detail.status == "SUCCEEDED" else classify_failure(detail, attempt)
    # An array ends after all its shards: what they did is asked of them.
    shards = svc.batch.array_children(detail.job_id, "SUCCEEDED", "FAILED") if detail.is_array_parent else []
    if failure and detail.is_array_parent and not (attempt.shard_failure or attempt.cancel_reason):
        failure = _failed_shards_class(shards, attempt) or failure
    billing = _billing_sets(svc, attempt, detail, shards)
    _index_at_end(svc, ref, attempt, billing)
    try:
        attempt = svc.ledger.update_open_attempt(
            ref.run_id,
            ref.stage,
            ref.attempt,
            status=detail.status,
            status_reason=detail.status_reason or "",
            exit_code=detail.exit_code,
            failure_class=failure,
            stopped_at=format_epoch_ms(detail.stopped_at) or format_time(utc_now()),
            started_at=attempt.started_at or format_epoch_ms(detail.started_at),
            **billing,
        )
    except LedgerConflict:  # another delivery recorded it first: act on what it recorded
        recorded = svc.ledger.get_attempt(ref.run_id, ref.stage, ref.attempt)
        if recorded is None or recorded.status != detail.status:
            return {"status": "ignored", "reason": "attempt already settled"}
        return _act_on_terminal(svc, ref, recorded, detail, repeated=True)
    return _act_on_terminal(svc, ref, attempt, detail, repeated=False)


def _failed_shards_class(shards: list[dict[str, Any]], attempt: Attempt) -> str | None:
    """Why an array failed when no shard's end has told it yet (EventBridge keeps no order between a shard's event
    and its parent's, and the SLA guard reads the parent alone): asked of its failed shards, a reclaim first, as the
    shards' own events would have recorded it (`_apply_shard_state`). Otherwise a reclaimed shard would read as an
    application error and spend the stage's retries."""
    failures = [
        classify_failure(BatchJobDetail.model_validate(shard), attempt)
        for shard in shards
        if shard.get("status") == "FAILED"
    ]
    return max(failures, key=_shard_rank, default=None)  # the first of the highest rank


def _shard_rank(failure: str) -> int:
    """Which of its shards' failures an array's is: a reclaim (the array is placed again at once, spending no retry),
    then the application's own (it spends a retry), last S3 failing a shard's start (placed again, spending none),
    which must not hide another shard's own error."""
    if failure in RECLAIM_CLASSES:
        return 2
    return 0 if failure == FailureClass.S3_UNAVAILABLE else 1


def _billing_sets(
    svc: Services, attempt: Attempt, detail: BatchJobDetail, shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ended attempt's billing fields: an array's `instance_seconds` (billed), `run_seconds` (run, billed or not),
    what each instance billed its shards (`billed_on_instances`) and its price on the instances its shards got, each
    as of its own start; a multi-node job's price on the instances its nodes got; and whether EC2 interrupted the Spot
    instance of a single job within the instance's first hour (`interrupted_in_first_hour`: AWS charges nothing),
    with the instance its end names when its start was never told."""
    since = parse_time(attempt.submitted_at) - SIGNAL_KEPT_FOR
    if detail.is_array_parent:
        ran_on = _shards_on_instances(svc, shards)
        # An array that succeeded lost no shard to a reclaim (a reclaimed shard ends it): its instances are not asked.
        # One that failed asks of the instances its shards' ends name where an interruption ended them (whether or
        # not their starts were told), not of those where shards ended otherwise (`_ended_by_an_interruption`).
        asked = attempt.capacity == "spot" and detail.status == "FAILED"
        # Each with when the last shard an interruption ended there stopped: a warning given after came while it sat
        # idle.
        named: dict[str, datetime] = {}
        for shard, ids in ran_on:
            if _ended_by_an_interruption(BatchJobDetail.model_validate(shard)):
                shard_stopped = from_epoch_ms(shard["stoppedAt"])
                for instance_id in ids:
                    named[instance_id] = max(shard_stopped, named.get(instance_id, shard_stopped))
        unbilled = unbilled_instances(svc, named, since) if asked else set()
        ran = _shards_ran(ran_on, unbilled)
        billed = [shard for shard in ran if shard.billed]
        held = [HeldInstance(shard.instance_id, shard.seconds, shard.started) for shard in billed]
        prices = instance_prices(svc, attempt, held) if attempt.started_at and held else None
        sets: dict[str, Any] = {
            "instance_seconds": sum(shard.seconds for shard in billed),
            "run_seconds": sum(shard.seconds for shard in ran),
            **priced_on_instances(attempt, held, prices),
        }
        if attempt.capacity == "spot":  # On-Demand instances are not interrupted
            sets["billed_on_instances"] = _billed_on_instances(held, prices)
            sets["unbilled_instance_ids"] = sorted(unbilled)
        return sets
    if detail.multinode_nodes:
        return _price_on_nodes(svc, attempt, detail.job_id, detail.multinode_nodes)
    if attempt.capacity != "spot":
        return {}
    # The instances its start recorded; those its end names when that start was never told.
    instance_ids = set(attempt.instance_ids) or set(svc.batch.instance_ids(detail.container_instance_arns))
    sets = {}
    if instance_ids and not attempt.instance_ids:
        sets["instance_ids"] = sorted(instance_ids)
    interrupted = _ended_by_an_interruption(detail)
    # A warning given after the job stopped came while the instance sat idle.
    stopped_at = from_epoch_ms(detail.stopped_at) if detail.stopped_at else utc_now()
    stopped_on = dict.fromkeys(instance_ids, stopped_at)
    if instance_ids and interrupted and unbilled_instances(svc, stopped_on, since) == instance_ids:
        sets |= {"interrupted_in_first_hour": True, "unbilled_instance_ids": sorted(instance_ids)}
    return sets


def _index_at_end(svc: Services, ref: JobRef, attempt: Attempt, billing: dict[str, Any]) -> None:
    """Indexes an ending attempt on the instances its end's `billing` names that its start did not record (its start,
    or a shard's, lost or told after its end), so that an interruption of one learnt later finds it
    (`unbill_shared_instances`)."""
    named = {*billing.get("instance_ids", []), *billing.get("billed_on_instances", {})}
    for instance_id in sorted(named - set(attempt.instance_ids)):
        svc.ledger.index_instance(instance_id, ref)


def _billed_on_instances(held: list[HeldInstance], prices: InstancePrices | None) -> dict[str, dict[str, float]]:
    """What each instance billed an ended array's shards on it: their seconds and, where the shards were priced
    (`prices`), their price an hour for one node weighed by their seconds. A shard whose instance cannot be told is
    left out: no instance found unbilled can be matched to it; so is an instance that billed none (its shards' stops
    told at their starts): there is nothing to take out, and no price to weigh."""
    seconds: dict[str, float] = {}
    usd: dict[str, float] = {}
    for index, shard in enumerate(held):
        if shard.instance_id is None:
            continue
        seconds[shard.instance_id] = seconds.get(shard.instance_id, 0) + shard.seconds
        if prices is not None:
            usd[shard.instance_id] = usd.get(shard.instance_id, 0.0) + prices.usd_per_hour[index] * shard.seconds
    return {
        instance_id: {"seconds": spent, **({"usd_per_hour": usd[instance_id] / spent} if instance_id in usd else {})}
        for instance_id, spent in seconds.items()
        if spent > 0
    }


def _price_on_nodes(svc: Services, attempt: Attempt, job_id: str, num_nodes: int) -> dict[str, Any]:
    """An ended multi-node job's price on the instances its nodes got, each of its own type (`price_on_instances`):
    Batch tells a node's instance of the node (`<job id>#<index>`), not of the job, which names none and so is not
    priced as it starts. Every node is billed for the job's whole run, so each weighs the same. A node that never got
    an instance is left out; one whose instance ECS cannot tell is at the placement's price; {} (the placement's price
    stands) when Batch or ECS cannot be asked: never a failed settlement for a price."""
    if not attempt.started_at:
        return {}
    try:
        nodes = [BatchJobDetail.model_validate(node) for node in svc.batch.multinode_nodes(job_id, num_nodes)]
        on_instance = svc.batch.instances_of(arn for node in nodes for arn in node.container_instance_arns)
    except (BotoCoreError, ClientError):
        logger.warning("could not tell the instances of a multi-node job's nodes", exc_info=True)
        return {}
    started = parse_time(attempt.started_at)
    held = [
        HeldInstance(
            next((on_instance[arn] for arn in node.container_instance_arns if arn in on_instance), None),
            1.0,
            from_epoch_ms(node.started_at) if node.started_at else started,
        )
        for node in nodes
        if node.container_instance_arns
    ]
    return price_on_instances(svc, attempt, held) if held else {}


@dataclass(frozen=True)
class _ShardRun:
    """One shard of an ended array that ran, on an instance of its own from its start to its stop."""

    instance_id: str | None  # None where ECS cannot tell it
    started: datetime
    seconds: int  # as EC2 bills them: rounded up to the second, at least a minute
    billed: bool  # False on an instance EC2 interrupted within its first hour: AWS charges nothing for it


def _shards_on_instances(svc: Services, shards: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[str]]]:
    """An ended array's shards that started and stopped, each with the instances ECS tells its container instances
    are (none where it cannot tell)."""
    ran = [(shard, BatchJobDetail.model_validate(shard).container_instance_arns) for shard in shards]
    ran = [(shard, arns) for shard, arns in ran if shard.get("startedAt") and shard.get("stoppedAt")]
    try:
        on_instance = svc.batch.instances_of(arn for _, arns in ran for arn in arns)
    except (BotoCoreError, ClientError):  # billed in full, at the placement's price: never fail the settlement on it
        logger.warning("could not tell the instances of an array's shards", exc_info=True)
        on_instance = {}
    return [(shard, [on_instance[arn] for arn in arns if arn in on_instance]) for shard, arns in ran]


def _ended_by_an_interruption(detail: BatchJobDetail) -> bool:
    """Batch says the job (or shard) ended as its instance was terminated under it, or it stopped itself on a Spot
    notice or a checkpoint request (exit 86 or 87): on an instance EC2 warned, EC2 took the instance then, or within
    the warning's two minutes (EC2's reason for the instance's end says which, `first_hour`). A job that ended
    otherwise (succeeded, failed on its own) may have left the instance idle long before the warning: whether EC2
    took it, or Batch terminated it first, the SLA guard learns once the warning's two minutes are out."""
    stopped = detail.exit_code in (EXIT_CHECKPOINTED, EXIT_STOPPED_WITHOUT_CHECKPOINT)
    return detail.status == "FAILED" and (stopped or bool(_HOST_TERMINATED.match(detail.status_reason or "")))


def _shards_ran(ran_on: list[tuple[dict[str, Any], list[str]]], unbilled: set[str]) -> list[_ShardRun]:
    """What an ended array's shards ran (`_shards_on_instances`): not billed on an instance EC2 interrupted within
    its first hour (`unbilled`). A shard whose instance ECS cannot tell is billed."""
    runs: list[_ShardRun] = []
    for shard, instances in ran_on:
        started, stopped = from_epoch_ms(shard["startedAt"]), from_epoch_ms(shard["stoppedAt"])
        runs.append(
            _ShardRun(
                instance_id=instances[0] if instances else None,
                started=started,
                seconds=billed_seconds(0.0, hours_between(started, stopped)),
                billed=not any(instance in unbilled for instance in instances),
            )
        )
    return runs


def _act_on_terminal(
    svc: Services, ref: JobRef, attempt: Attempt, detail: BatchJobDetail, repeated: bool
) -> dict[str, Any]:
    """Settles or resubmits the stage after its attempt ended; safe to repeat, as every step is conditional (the
    stage settles once, the next attempt is claimed once, each notification is sent once). First, the attempt's time
    on instances EC2 interrupted within their first hour comes out of the bills that had it, before a report of the
    run is made of them."""
    unbill_shared_instances(svc, ref, attempt)
    failure = attempt.failure_class
    run = svc.ledger.get_run(ref.run_id)
    stage = svc.ledger.get_stage(ref.run_id, ref.stage)
    if run is None or stage is None:
        return {"status": "ignored", "reason": "run not in ledger"}
    stage = _learn_spot(svc, stage, attempt)
    if detail.status == "SUCCEEDED" and stage.attempt > ref.attempt and stage.status == "RUNNING":
        # A requeued Spot job that finished its work as it was replaced (its success came before the TerminateJob):
        # the stage is done. Waiting on the On-Demand attempt would redo the work, from nothing, since a job's success
        # cleans its checkpoints.
        return _settle_on_an_earlier_success(svc, run, stage, attempt)
    if stage.attempt != ref.attempt or stage.status != "RUNNING":
        if stage.attempt > ref.attempt:
            _tell_what_followed(svc, run, stage, attempt, detail)
        if repeated:
            return {"status": "ignored", "reason": "duplicate terminal event"}
        return {"status": "recorded", "reason": "superseded attempt", "failure_class": failure}

    if detail.status == "SUCCEEDED":
        return _settle(svc, run, stage, "SUCCEEDED", attempt.attempt)
    if attempt.cancel_reason == CANCEL_EARLIER_SUCCEEDED:
        # Ended because the attempt before it succeeded, whose handler died before settling the stage on it.
        return _settle(svc, run, stage, "SUCCEEDED", attempt.attempt)
    if failure == FailureClass.CANCELLED_BY_CONTROL_PLANE:
        # Cancelled for a requeue whose handler died before placing the On-Demand job: finish that requeue.
        placed = requeue_to_on_demand(svc, run, stage, attempt.job_id, "completing an interrupted requeue")
        return {"status": "resubmitted" if placed else "recorded", "failure_class": failure}
    if failure == FailureClass.S3_UNAVAILABLE and stage.s3_resubmits_used < S3_UNAVAILABLE_RESUBMITS:
        # S3's fault, not the work's nor its capacity's: placed again as before, spending no retry, and not told as
        # an interruption (the attempt's report says what happened). Past the free ones, it spends retries below.
        logger.warning("S3 failed a job's start: resubmitted", extra={"run_id": run.run_id, "stage": stage.stage})
        used = {"s3_resubmits_used": stage.s3_resubmits_used + 1}
        return _resubmit(svc, run, stage, failure, spot_available=attempt.capacity == "spot", spent=used)
    if failure in RECLAIM_CLASSES:
        result = _resubmit(svc, run, stage, failure, spot_available=False)
        title, reason = interruption_notice(attempt, failure, detail.status_reason)
        notify(svc, "interrupted", run, stage.stage, reason, attempt=attempt.attempt, title=title)
        return result
    # Application error, timeout, or S3 failing start after start: spends the retry budget.
    if stage.app_retries_used >= stage.retry_budget:
        return _settle(
            svc,
            run,
            stage,
            "FAILED",
            attempt.attempt,
            error=f"{failure}: {detail.status_reason or ''} "
            f"(exit code {detail.exit_code}) after {stage.app_retries_used} retries",
        )
    spent = {"app_retries_used": stage.app_retries_used + 1}
    return _resubmit(svc, run, stage, failure or "", spot_available=attempt.capacity == "spot", spent=spent)


def _tell_what_followed(svc: Services, run: Run, stage: Stage, attempt: Attempt, detail: BatchJobDetail) -> None:
    """The attempt was followed by another: tells of the move to On-Demand and of the reclaim, if the handler that
    placed the next attempt died before telling of them (this event's repeat, or the end of a requeue's cancelled
    Spot job, comes back here). Each notice goes out once whoever sends it."""
    tell_requeue(svc, run, stage.stage, attempt.attempt, "the Spot job was replaced by an On-Demand one")
    if attempt.failure_class in RECLAIM_CLASSES:
        title, reason = interruption_notice(attempt, attempt.failure_class, detail.status_reason)
        notify(svc, "interrupted", run, stage.stage, reason, attempt=attempt.attempt, title=title)


def interruption_notice(attempt: Attempt, failure: str, status_reason: str | None) -> tuple[str | None, str]:
    """The title (None: the kind's own, "Spot interruption") and reason of the notice that an attempt lost its
    instance: an On-Demand host that failed is told as such, not as a Spot interruption."""
    title = None if attempt.capacity == "spot" else "On-Demand instance lost"
    return title, f"{FAILURE_WORDS[failure]} ({status_reason or 'Batch gave no reason'})"


def _learn_spot(svc: Services, stage: Stage, attempt: Attempt) -> Stage:
    """Feeds what the ended attempt saw of Spot into the stage's online statistics, once however often its end is
    told (a first delivery may die after recording the end, before this); returns the stage as it is now."""
    if attempt.capacity != "spot" or not attempt.started_at or not attempt.stopped_at:
        return stage
    started, stopped = parse_time(attempt.started_at), parse_time(attempt.stopped_at)

    def learn(stage: Stage) -> dict[str, Any] | None:
        if stage.spot_learnt_attempt >= attempt.attempt:  # learnt already, or an attempt after it was
            return None
        stats = spot_stats(stage, svc.settings.changeover_hours, svc.settings.spot_interruption_bucket)
        sets: dict[str, Any] = {"spot_learnt_attempt": attempt.attempt}
        waiting_since = stage.spot_waiting_since
        if (
            waiting_since
            and stage.attempt == attempt.attempt
            and stage.array_size is None  # an array waits on while any shard does (`_track_spot_wait`)
            and parse_time(waiting_since) <= started
        ):
            # The job's start was not told before its end (EventBridge keeps no order, or the event was lost): its
            # wait ended at its start. Left open, the next placement would end it, its gap spanning the run too.
            stats.observe(False, hours_between(parse_time(waiting_since), started))
            sets["spot_waiting_since"] = None
        stats.observe(True, hours_between(started, stopped))
        if attempt.failure_class in RECLAIM_CLASSES:
            stats.observe(False, 0.0)
        return sets | {"spot_stats": stats.to_dict()}

    return svc.ledger.learn_spot(stage, learn)


def _resubmit(
    svc: Services, run: Run, stage: Stage, why: str, spot_available: bool, spent: dict[str, int] | None = None
) -> dict[str, Any]:
    """Places the stage's next attempt; `spent`: the stage's counters the placement uses up, written in the claim
    itself so that a repeated event cannot spend them twice."""
    current = ACTION_OF_CAPACITY.get(stage.capacity or "", Action.IDLE)
    decision = choose_capacity(
        svc, run, stage, current=Action.IDLE if not spot_available else current, spot_available=spot_available
    )
    # Waiting (IDLE) for Spot is expressed by queueing on Spot: the job waits RUNNABLE until capacity returns.
    capacity = CAPACITY_OF_ACTION.get(decision.action, "spot")
    placed = place_attempt(svc, run, stage, capacity, f"{why}: {decision.reason}", **(spent or {}))
    if placed and not placed.ended_as_placed and capacity == "on-demand" and stage.capacity == "spot":
        notify(svc, "requeued", run, stage.stage, decision.reason, attempt=placed.attempt)
    return {"status": "resubmitted" if placed else "ignored", "capacity": capacity, "reason": decision.reason}


def _settle_on_an_earlier_success(svc: Services, run: Run, stage: Stage, succeeded: Attempt) -> dict[str, Any]:
    """Settles the stage on an attempt that succeeded after another followed it: the one that followed is marked
    (so that its end is read as this cancellation), its job terminated, then the stage settled. A handler that dies
    in between leaves a mark that the later job's end settles the stage by (`_act_on_terminal`), and this event's
    retry does it all again, each step repeatable. A later attempt claimed and not yet recorded (its placement
    submitting it) is read again once the stage is settled: either this finds it recorded, or its placement finds
    the stage settled (`placement.record_placed`), and its job is ended."""
    later = svc.ledger.get_attempt(run.run_id, stage.stage, stage.attempt)
    if later is not None and not _end_later_attempt(svc, later, succeeded):
        # Cancelled first for another reason (the run ended): its own end is acted on as that.
        return {"status": "recorded", "reason": "superseded attempt"}
    logger.info(
        "an attempt succeeded as it was replaced: the stage settles on it",
        extra={"run_id": run.run_id, "stage": stage.stage, "attempt": succeeded.attempt},
    )
    settled = _settle(svc, run, stage, "SUCCEEDED", stage.attempt)
    if later is None and (placed := svc.ledger.get_attempt(run.run_id, stage.stage, stage.attempt)) is not None:
        _end_later_attempt(svc, placed, succeeded)
    return settled


def _end_later_attempt(svc: Services, later: Attempt, succeeded: Attempt) -> bool:
    """Marks the attempt that followed one which succeeded, then terminates its job, unless it ended already. False
    when it was marked for another reason first."""
    if later.status in TERMINAL_STATUSES:
        return True
    reason = f"spot-hpc: attempt {succeeded.attempt} finished the stage's work"
    return cancel_and_terminate(svc, later, CANCEL_EARLIER_SUCCEEDED, reason)


def _clean_checkpoints(svc: Services, run: Run, stage: Stage) -> None:
    """A succeeded stage's checkpoints are no longer needed."""
    if stage.checkpoint_uri:
        try:
            CheckpointStore(svc.s3, stage.checkpoint_uri).cleanup()
        except Exception:  # cleanup is housekeeping (the bucket lifecycle rule expires leftovers)
            logger.warning("checkpoint cleanup failed", extra={"run_id": run.run_id, "stage": stage.stage})


def _settle(svc: Services, run: Run, stage: Stage, status: str, attempt: int, error: str = "") -> dict[str, Any]:
    """Settles the stage, on `attempt` (the one it is on), once."""
    try:
        settled = svc.ledger.settle_stage(run.run_id, stage.stage, status, attempt, failure=error or None)
    except LedgerConflict:
        return {"status": "ignored", "reason": "stage already settled"}
    if status == "SUCCEEDED":
        _clean_checkpoints(svc, run, settled)
    answer_state_machine(svc, settled)
    logger.info("stage settled", extra={"run_id": run.run_id, "stage": stage.stage, "status": status})
    return {"status": "settled", "stage_status": status}


def answer_state_machine(svc: Services, stage: Stage) -> None:
    """Tells the waiting state machine how a settled stage ended, then takes it out of the active index.

    Safe to repeat: the SLA guard calls it again for a stage settled by a handler that died before answering.
    """
    if stage.task_token:
        output = (
            {"stage": stage.stage, "job_id": stage.job_id, "attempt": stage.attempt}
            if stage.status == "SUCCEEDED"
            else None
        )
        if not svc.pipeline.answer(stage.task_token, output, cause=stage.failure or "the stage failed"):
            logger.warning(
                "state machine no longer waits for this stage", extra={"run_id": stage.run_id, "stage": stage.stage}
            )
    svc.ledger.mark_answered(stage.run_id, stage.stage)
