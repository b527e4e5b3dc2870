"""Placing a stage's Batch work: ask the policy where, claim the attempt, submit, record.

Shared by the stage runner (first attempt), the Batch state-change handler (resubmission after a reclaim or an
application error), the Spot interruption handler and the SLA guard (requeue to On-Demand). A placement is
claimed in the ledger before the job is submitted, so two handlers acting on the same stage place it once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError
from spot_checkpoint.job import ENV_ATTEMPT, ENV_PARTS
from spot_checkpoint.store import CheckpointStore, part_progress

from spot_hpc.batch import Ec2Instance, JobRequest
from spot_hpc.clock import format_time, hours_between, parse_time, utc_now
from spot_hpc.events import STATUS_RANK, TERMINAL_STATUSES
from spot_hpc.ledger import (
    CANCEL_EARLIER_SUCCEEDED,
    CANCEL_REQUEUE,
    CANCEL_RUN_ENDED,
    Attempt,
    LedgerConflict,
    Run,
    Stage,
)
from spot_hpc.notifier import notify
from spot_hpc.pipeline import STAGE_NAMES, job_name, job_tags, stage_input_uri, stage_output_uri
from spot_hpc.policy import (
    DEFAULT_STEP_HOURS,
    Action,
    Decision,
    SpotStats,
    band_hours_for,
    decide,
    stage_latest_finish_in,
    stage_must_finish_in,
)
from spot_hpc.pricing import spot_price_hour
from spot_hpc.run_report import moved_to_on_demand
from spot_hpc.services import Services

logger = logging.getLogger(__name__)

CAPACITY_OF_ACTION = {Action.SPOT: "spot", Action.ON_DEMAND: "on-demand"}
ACTION_OF_CAPACITY = {"spot": Action.SPOT, "on-demand": Action.ON_DEMAND}


@dataclass(frozen=True)
class StageView:
    """What the policy is told about a stage now."""

    remaining_hours: float
    hours_left: float  # the stage's share of the time left (what the policy plans with)
    progress: float  # of the part furthest behind (the work left is its)
    latest_hours: float  # the latest it may finish for the run to make its deadline (`stage_latest_finish_in`)


def checkpoint_uri(bucket: str, run_id: str, stage: str) -> str:
    """Checkpoints are keyed by run and stage, never by job id: a resubmitted job has a new id."""
    return f"s3://{bucket}/checkpoints/{run_id}/{stage}/"


def part_fractions(svc: Services, stage: Stage) -> list[float]:
    """Fraction done of each part of the stage (a single job's, a multi-node job's nodes', an array's shards') by
    its newest complete checkpoint, a part with none at 0; [] when no part has one. A part that tells no number counts
    as none: a job's NaN would make the policy's work left NaN, which it cannot plan with."""
    if not stage.checkpoint_uri:
        return []
    try:
        fractions, parts_total = part_progress(svc.s3, stage.checkpoint_uri)
    except Exception:  # the checkpoint store is advisory here: a read failure must not stop a placement
        logger.warning("checkpoint progress unreadable", extra={"run_id": stage.run_id, "stage": stage.stage})
        return []
    if not all(math.isfinite(done) for done in fractions.values()):
        logger.warning("checkpoint progress not a number", extra={"run_id": stage.run_id, "stage": stage.stage})
    done = [fraction if math.isfinite(fraction) else 0.0 for fraction in fractions.values()]
    return done + [0.0] * (parts_total - len(done)) if done else []


def stage_progress(svc: Services, stage: Stage) -> float:
    """Fraction of the stage's work done according to its newest complete checkpoints (the mean of its parts'; 0 when
    there is none)."""
    done = part_fractions(svc, stage)
    return sum(done) / len(done) if done else 0.0


def stage_view(svc: Services, run: Run, stage: Stage, now: datetime | None = None) -> StageView:
    now = now or utc_now()
    # The parts run side by side, each for the stage's hours: the stage ends with the one furthest behind.
    done = min(part_fractions(svc, stage), default=0.0)
    # A stage still running has a job to run, whatever its checkpoints say: with no work left the policy would only
    # wait (on Spot, a stage that cannot have it, past its deadline), and no guard pass would move it.
    remaining_here = max(stage.compute_hours * (1.0 - done), min(stage.compute_hours, DEFAULT_STEP_HOURS))
    stages = svc.ledger.get_stages(run.run_id)
    # This stage and those after it share what is left of the run's deadline.
    work = [
        (remaining_here if s.stage == stage.stage else s.compute_hours, s.spot_allowed)
        for s in stages
        if s.order >= stage.order
    ]
    run_hours_left = max(hours_between(now, parse_time(run.deadline_at)), 0.0)
    change = svc.settings.changeover_hours
    return StageView(
        remaining_hours=remaining_here,
        hours_left=stage_must_finish_in(run_hours_left, work, change),
        progress=done,
        latest_hours=stage_latest_finish_in(run_hours_left, work, change),
    )


def node_price(svc: Services, capacity: str, stage: Stage, at: datetime | None = None) -> float | None:
    """USD per hour of the stage's capacity for all its nodes (Spot's as it was `at`, when given; now otherwise);
    None when it cannot be looked up (the run report says so, and tries again)."""
    settings = svc.settings
    if stage.multinode:
        instance_type = settings.hpc_instance_type
    else:
        instance_type = settings.spot_instance_type if capacity == "spot" else settings.on_demand_instance_type
    return instance_price(svc, instance_type, capacity, stage.nodes, at=at)


def instance_price(
    svc: Services,
    instance_type: str,
    capacity: str,
    nodes: int,
    availability_zone: str | None = None,
    at: datetime | None = None,
) -> float | None:
    """USD per hour of `nodes` instances of the type (Spot's in the zone, or the region's, as it was `at`); None when
    it cannot be looked up."""
    try:
        return svc.prices.usd_per_hour(
            instance_type,
            svc.settings.region,
            capacity,  # type: ignore[arg-type]
            nodes=nodes,
            availability_zone=availability_zone,
            at=at,
        )
    except Exception:  # a price is for reporting and weighing; never block a placement or a job's start on it
        logger.warning("no price for %s %s", capacity, instance_type, exc_info=True)
        return None


class HeldInstance(NamedTuple):
    """An instance an attempt got (None where it cannot be told), the seconds billed on it, and when the work started
    there (an array's shards start as capacity comes, hours apart when it is short)."""

    instance_id: str | None
    seconds: float
    started: datetime


def price_on_instances(svc: Services, attempt: Attempt, billed: Sequence[HeldInstance]) -> dict[str, Any]:
    """The attempt's price on the instances it got, as the ledger keeps it: each instance of its own type (the compute
    environment may pick any of its types; the placement priced the first) and, on Spot, in its zone as its work
    started there (the placement took the region's).

    `billed`: one for a job and one per shard for an array, whose shards are weighed by their seconds (a shard on an
    instance EC2 no longer describes, or of a type without a price, at the placement's price), each priced as of its
    own start. A price that cannot be looked up is not asked again for another shard of the same type and zone that
    started in the same hour (`spot_price_hour`): a lookup failing (throttled, say) is not repeated for each of an
    array's shards. {} when no instance can be priced, or a shard cannot be priced at all: the placement's price
    stands. The type and zone are named when every instance has the same."""
    return priced_on_instances(attempt, billed, instance_prices(svc, attempt, billed))


@dataclass(frozen=True)
class InstancePrices:
    """What each of the instances an attempt held costs an hour for one node (`usd_per_hour`, in their order), and
    the instances EC2 described whose own price was had (`got`)."""

    usd_per_hour: list[float]
    got: list[Ec2Instance]


def instance_prices(svc: Services, attempt: Attempt, billed: Sequence[HeldInstance]) -> InstancePrices | None:
    """Each of `billed`'s own price an hour for one node, or the placement's where it has none (`price_on_instances`
    says which); None when EC2 cannot be asked, or one of them has no price at all."""
    ids = {held.instance_id for held in billed if held.instance_id}
    try:
        described = svc.batch.describe_instances(ids)
    except (BotoCoreError, ClientError):  # the price is for reporting; never fail a job's start or end on it
        logger.warning("could not describe the instances a job got", extra={"instance_ids": sorted(ids)}, exc_info=True)
        return None
    placed = None if attempt.price_unknown else attempt.usd_per_hour / attempt.nodes
    prices: list[float] = []
    got: list[Ec2Instance] = []
    unpriced: set[tuple[str, str, datetime]] = set()  # (type, zone, hour) whose price could not be looked up
    for instance_id, _, at in billed:
        instance = described.get(instance_id) if instance_id else None
        own = None
        if instance is not None:
            zone = instance.availability_zone
            asked = (instance.instance_type, zone, spot_price_hour(at))
            if asked not in unpriced:
                own = instance_price(svc, instance.instance_type, attempt.capacity, 1, zone, at=at)
            if own is None:
                unpriced.add(asked)
            else:
                got.append(instance)
        price = own if own is not None else placed
        if price is None:
            return None
        prices.append(price)
    return InstancePrices(prices, got)


def priced_on_instances(
    attempt: Attempt, billed: Sequence[HeldInstance], prices: InstancePrices | None
) -> dict[str, Any]:
    """The ledger's price fields of an attempt from its instances' `prices` (see `price_on_instances`)."""
    seconds = sum(held.seconds for held in billed)
    if prices is None or not prices.got or seconds <= 0:
        return {}
    usd = sum(price * held.seconds for price, held in zip(prices.usd_per_hour, billed, strict=True))
    priced: dict[str, Any] = {"usd_per_hour": usd / seconds * attempt.nodes, "price_unknown": False}
    types, zones = {i.instance_type for i in prices.got}, {i.availability_zone for i in prices.got}
    if len(prices.got) == len(billed) and len(types) == 1:
        priced["instance_type"] = types.pop()
        if len(zones) == 1:
            priced["availability_zone"] = zones.pop()
    return priced


def spot_stats(stage: Stage, changeover_hours: float, advisor_bucket: int) -> SpotStats:
    """What the stage has learnt of Spot so far; a fresh life table has the stack's Spot Advisor interruption bucket
    as its prior and age bands fitting the SLA guard's schedule and the changeover."""
    if stage.spot_stats:
        return SpotStats.from_dict(stage.spot_stats)
    return SpotStats.with_prior(advisor_bucket, band_hours=band_hours_for(DEFAULT_STEP_HOURS, changeover_hours))


def spot_stats_now(
    stage: Stage, spot_available: bool, changeover_hours: float, advisor_bucket: int, now: datetime | None = None
) -> SpotStats:
    """The stage's Spot statistics for a decision now: without capacity, the wait still in progress counts as the
    gap the policy weighs (a long gap is filled with On-Demand). Not stored: `end_spot_wait` records the whole wait
    once it is over."""
    stats = spot_stats(stage, changeover_hours, advisor_bucket)
    if not spot_available and stage.spot_waiting_since:
        stats.observe(False, hours_between(parse_time(stage.spot_waiting_since), now or utc_now()))
    return stats


def start_spot_wait(svc: Services, stage: Stage, job_attempt: int | None = None) -> str | None:
    """A Spot job waits RUNNABLE for capacity: its wait starts now, unless it has already. Returns when it started.

    `job_attempt`, for a job (not an array, whose wait stands while any shard waits, however many run): the wait is
    dropped, learning nothing, when the job's start is recorded by then (None returned). The job's RUNNING, handled at
    the same moment, may have read the stage before this wait was written, and so ended none: the wait would go on
    while the job runs, until the guard's next pass ends it, and teach the policy a gap that never was. Each side
    writes (this the wait, that the attempt) before it reads the other's, strongly consistent, so one of the two sees
    the other: here, the attempt."""
    if stage.spot_waiting_since:
        return stage.spot_waiting_since
    since = format_time(utc_now())
    standing = svc.ledger.start_spot_wait(stage.run_id, stage.stage, since)
    if standing != since or job_attempt is None:
        # A wait another handler started since `stage` was read stands: it is that handler's to drop.
        return standing
    started = svc.ledger.get_attempt(stage.run_id, stage.stage, job_attempt)
    if started is not None and STATUS_RANK.get(started.status, -1) >= STATUS_RANK["RUNNING"]:
        svc.ledger.drop_spot_wait(stage.run_id, stage.stage, since)
        return None
    return since


def end_spot_wait(svc: Services, stage: Stage) -> None:
    """A wait for Spot capacity is over (capacity came, or the work went elsewhere): learn how long it lasted, once
    however often its end is told (the wait goes with the write that learns it)."""
    if not stage.spot_waiting_since:
        return

    def learn(stage: Stage) -> dict[str, Any] | None:
        if not stage.spot_waiting_since:
            return None
        stats = spot_stats(stage, svc.settings.changeover_hours, svc.settings.spot_interruption_bucket)
        stats.observe(False, hours_between(parse_time(stage.spot_waiting_since), utc_now()))
        return {"spot_stats": stats.to_dict(), "spot_waiting_since": None}

    svc.ledger.learn_spot(stage, learn)


def choose_capacity(
    svc: Services, run: Run, stage: Stage, current: Action, spot_available: bool, view: StageView | None = None
) -> Decision:
    view = view or stage_view(svc, run, stage)
    # Unknown prices: only their ratio matters to the policy, so assume Spot's typical 70% discount. A Spot price
    # known without the On-Demand one (the Price List API down) is set aside too: against a stand-in On-Demand
    # price of 1, its dollars would make no ratio.
    od_price = node_price(svc, "on-demand", stage)
    spot_price = node_price(svc, "spot", stage) if od_price else None
    od_price = od_price or 1.0
    spot_price = spot_price or 0.3 * od_price
    decision = decide(
        remaining_hours=view.remaining_hours,
        hours_left=view.hours_left,
        current=current,
        spot_available=spot_available,
        changeover_hours=svc.settings.changeover_hours,
        od_price=od_price,
        spot_price=spot_price,
        stats=spot_stats_now(
            stage, spot_available, svc.settings.changeover_hours, svc.settings.spot_interruption_bucket
        ),
        spot_allowed=stage.spot_allowed,
    )
    logger.info(
        "policy decision",
        extra={
            "run_id": run.run_id,
            "stage": stage.stage,
            "action": decision.action.value,
            "reason": decision.reason,
            "hours_left": view.hours_left,
            "remaining_hours": view.remaining_hours,
        },
    )
    return decision


def queue_for(svc: Services, stage: Stage, capacity: str) -> str:
    if stage.multinode:
        return svc.settings.hpc_job_queue
    return svc.settings.spot_job_queue if capacity == "spot" else svc.settings.on_demand_job_queue


def definition_for(svc: Services, stage: Stage) -> str:
    settings = svc.settings
    if stage.stage == "hpc":
        return settings.hpc_shard_job_definition if stage.spot_allowed else settings.hpc_job_definition
    return settings.preprocess_job_definition if stage.stage == "preprocess" else settings.postprocess_job_definition


def place_attempt(
    svc: Services, run: Run, stage: Stage, capacity: str, reason: str, **claim_sets: Any
) -> Attempt | None:
    """Claims the stage's next attempt and submits it on `capacity`; None when another handler already did.

    The claim records the capacity, so a submission lost in a crash is redone on the same one (`claim_sets`: more
    stage fields to change in the same conditional write)."""
    if stage.multinode:
        capacity = "on-demand"  # AWS Batch runs no multi-node parallel job on Spot
    try:
        claimed = svc.ledger.claim_attempt(
            run.run_id,
            stage.stage,
            stage.attempt,
            checkpoint_uri=checkpoint_uri(svc.settings.ingest_bucket, run.run_id, stage.stage),
            capacity=capacity,
            **claim_sets,
        )
    except LedgerConflict:
        logger.info("placement already claimed", extra={"run_id": run.run_id, "stage": stage.stage})
        return None
    return submit_claimed(svc, run, claimed, capacity, reason)


def job_environment(svc: Services, run: Run, stage: Stage) -> dict[str, str]:
    """What every job is told: who it is, where its checkpoints go, what it reads (the stage before it wrote) and
    where it writes; an array job's shards also learn how many they are (Batch tells a shard its index only)."""

    def output_of(name: str) -> str:
        return stage_output_uri(svc.settings.ingest_bucket, run.run_id, name)

    environment = {
        "RUN_ID": run.run_id,
        "STAGE": stage.stage,
        ENV_ATTEMPT: str(stage.attempt),
        "CHECKPOINT_URI": stage.checkpoint_uri or "",
        "INPUT_URI": stage_input_uri(stage.stage, f"s3://{run.bucket}/{run.key}", output_of),
        "OUTPUT_URI": output_of(stage.stage),
    }
    if stage.stage == STAGE_NAMES[0]:
        environment["INPUT_VERSION_ID"] = run.version_id  # the upload, exactly as it was when the run started
    if stage.array_size is not None:
        environment[ENV_PARTS] = str(stage.array_size)
    return environment


# An attempt may run this many times its stage's declared compute hours, plus an hour (instance start, checkpoint
# writes, a slower instance), before Batch ends it as hung. The job definitions' own timeouts are fixed; a run may
# declare longer stages, which they would end at every attempt, each spending the stage's retries.
ATTEMPT_TIMEOUT_FACTOR = 2.0
ATTEMPT_TIMEOUT_MARGIN_HOURS = 1.0


def attempt_timeout_seconds(compute_hours: float) -> int:
    """How long Batch lets one attempt of a stage of `compute_hours` run (a fresh attempt does the whole stage)."""
    return math.ceil((compute_hours * ATTEMPT_TIMEOUT_FACTOR + ATTEMPT_TIMEOUT_MARGIN_HOURS) * 3600)


def submit_claimed(svc: Services, run: Run, stage: Stage, capacity: str, reason: str) -> Attempt:
    """Submits the job of a claimed attempt (or adopts the one a crashed handler already submitted) and records it."""
    queue = queue_for(svc, stage, capacity)
    name = job_name(run.run_id, stage.stage, stage.attempt)
    existing = svc.batch.find_jobs_named(queue, name)
    if existing:
        job_id = existing[0]
    else:
        request = JobRequest(
            name=name,
            queue=queue,
            definition=definition_for(svc, stage),
            environment=job_environment(svc, run, stage),
            tags=job_tags(run.run_id, stage.stage, stage.attempt),
            parameters={"stage": stage.stage},
            num_nodes=stage.nodes if stage.multinode else None,
            array_size=stage.array_size,
            attempt_timeout_seconds=attempt_timeout_seconds(stage.compute_hours),
        )
        try:
            job_id = svc.batch.submit(request)
        except ClientError:
            logger.exception(
                "SubmitJob failed; the SLA guard will retry the claimed attempt",
                extra={"run_id": run.run_id, "stage": stage.stage},
            )
            raise
    return record_placed(svc, stage, job_id, queue, capacity, reason)


def record_placed(svc: Services, stage: Stage, job_id: str, queue: str, capacity: str, reason: str) -> Attempt:
    """Records the job of the stage's current attempt, priced, and whether it resumes from a checkpoint. The attempt
    comes back with its `cancel_reason` when the stage was found settled meanwhile (its job is then ended)."""
    done = stage_progress(svc, stage)
    price = node_price(svc, capacity, stage)
    attempt = Attempt(
        run_id=stage.run_id,
        stage=stage.stage,
        attempt=stage.attempt,
        job_id=job_id,
        queue=queue,
        capacity=capacity,
        nodes=stage.nodes,
        submitted_at=format_time(utc_now()),
        usd_per_hour=price or 0.0,
        price_unknown=price is None,
        resumed_from_checkpoint=done > 0,
        cancel_reason=None,
    )
    svc.ledger.record_attempt(attempt)
    settled = svc.ledger.get_stage(stage.run_id, stage.stage)
    if settled is not None and settled.attempt == stage.attempt and settled.status != "RUNNING":
        # Settled while its job was submitted (the attempt before succeeded after all, or the run ended): nothing
        # else comes back to this job, which would do the stage's work again.
        cause = CANCEL_EARLIER_SUCCEEDED if settled.status == "SUCCEEDED" else CANCEL_RUN_ENDED
        cancel_and_terminate(svc, attempt, cause, f"spot-hpc: stage {settled.status.lower()} as its attempt was placed")
        return svc.ledger.get_attempt(attempt.run_id, attempt.stage, attempt.attempt) or attempt
    end_spot_wait(svc, stage)
    logger.info(
        "placed",
        extra={
            "run_id": stage.run_id,
            "stage": stage.stage,
            "attempt": stage.attempt,
            "capacity": capacity,
            "job_id": job_id,
            "reason": reason,
        },
    )
    return attempt


def requeue_to_on_demand(svc: Services, run: Run, stage: Stage, job_id: str, reason: str) -> Attempt | None:
    """Replaces the stage's current Spot job by an On-Demand one; None when another handler already did, or the Spot
    job's own end was recorded first (its handler acts on it: settles the stage, or places the next attempt as the
    failure calls for; a requeue decided on an older view of the job, such as the SLA guard's DescribeJobs read at
    its pass's start, would otherwise take that placement from it, a retry unspent or a success not settled on).

    Each step may be repeated after a crash: the Spot attempt is marked first, so its FAILED event is read as our
    cancellation, not a reclaim (marking it again is a no-op); the claim of the next attempt lets one caller place
    it; the Spot job is terminated whoever placed it (terminating an ended job changes nothing).
    """
    if not svc.ledger.cancel_attempt(run.run_id, stage.stage, stage.attempt, CANCEL_REQUEUE, open_only=True):
        return None
    placed = place_attempt(svc, run, stage, "on-demand", reason)
    svc.batch.terminate(job_id, f"spot-hpc: requeued to On-Demand ({reason})")
    if placed is None:  # placed by an earlier call, which may have died before telling of it
        tell_requeue(svc, run, stage.stage, stage.attempt, reason)
    elif not placed.ended_as_placed:
        notify(svc, "requeued", run, stage.stage, reason, attempt=placed.attempt)
    return placed


def tell_requeue(svc: Services, run: Run, stage_name: str, replaced: int, reason: str) -> bool:
    """Tells of the move from Spot to On-Demand after attempt `replaced`, if there was one and it was never told; for
    a handler that comes back to a placement made before (its own event's earlier delivery, or another handler's),
    whose maker may have died between placing it and telling of it. The notice is the one the placement sends
    (`requeued`, for the On-Demand attempt), so it goes out once whoever sends it. False when there is nothing to
    tell, or it was told already."""
    spot = svc.ledger.get_attempt(run.run_id, stage_name, replaced)
    on_demand = svc.ledger.get_attempt(run.run_id, stage_name, replaced + 1)
    if spot is None or on_demand is None or not moved_to_on_demand(spot, on_demand):
        return False
    return notify(svc, "requeued", run, stage_name, reason, attempt=on_demand.attempt)


def cancel_and_terminate(svc: Services, attempt: Attempt, cause: str, reason: str) -> bool:
    """Marks the attempt cancelled for `cause` (CANCEL_*), so that its job's end is read as that cancellation, then
    terminates its job for `reason`. False, terminating nothing, when it was marked for another reason first: its end
    is acted on as that."""
    if not svc.ledger.cancel_attempt(attempt.run_id, attempt.stage, attempt.attempt, cause):
        return False
    if attempt.job_id:
        svc.batch.terminate(attempt.job_id, reason)
    return True


def stop_stage(svc: Services, stage: Stage, reason: str) -> None:
    """The stage's run ended without it (failed, aborted, timed out): the stage ends, its job is terminated, and it
    leaves the guard's watch. Safe to repeat and to resume after a crash: the stage is ended first (so the job's end
    is recorded, not acted on), and a job whose attempt is still open is terminated again."""
    current = svc.ledger.end_stage(stage.run_id, stage.stage, reason) or svc.ledger.get_stage(stage.run_id, stage.stage)
    if current is not None and current.job_id:
        attempt = svc.ledger.get_attempt(current.run_id, current.stage, current.attempt)
        if attempt is not None and attempt.status not in TERMINAL_STATUSES:
            # A requeue's mark, if the attempt has one, stays: either way its end is read as our cancellation.
            svc.ledger.cancel_attempt(current.run_id, current.stage, current.attempt, CANCEL_RUN_ENDED)
            svc.batch.terminate(current.job_id, f"spot-hpc: {reason}")
    if current is not None and current.attempt > 1:
        # The Spot job a requeue replaced, if the requeue's handler died before terminating it: once the stage ends
        # the SLA guard no longer watches it, and it would run (billed) until its attempt timeout.
        replaced = svc.ledger.get_attempt(current.run_id, current.stage, current.attempt - 1)
        if replaced and replaced.cancel_reason == CANCEL_REQUEUE and replaced.status not in TERMINAL_STATUSES:
            svc.batch.terminate(replaced.job_id, f"spot-hpc: {reason}")
    svc.ledger.mark_answered(stage.run_id, stage.stage)


def request_checkpoint(svc: Services, stage: Stage, reason: str, stop: bool = True) -> None:
    """Asks the stage's running jobs to checkpoint now and stop, or (`stop` False) to checkpoint and go on working
    (they poll for it; Batch forwards no Spot warning). The stage has one request: one to go on does not replace one
    to stop that the attempt may not have seen yet (`CheckpointStore.request_save`)."""
    if not stage.checkpoint_uri:
        return
    store = CheckpointStore(svc.s3, stage.checkpoint_uri)
    if stop:
        store.request_checkpoint(reason, attempt=stage.attempt)
    else:
        store.request_save(reason, attempt=stage.attempt)
