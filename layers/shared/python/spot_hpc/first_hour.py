"""AWS bills none of the usage of a Spot instance that EC2 interrupts within its first hour ("Billing for interrupted
Spot Instances", EC2 User Guide): not the job it was taken from, nor any that ran on it before, since Batch runs jobs
one after another on an instance, of any run.

Such an instance is found at the end of a job or shard that an interruption ended (`job_events`), from an interruption
warning kept for the instance, given no later than that end, and the instance's launch time (`unbilled_instances`). What
is found is kept in the ledger (`INSTANCE#<id>` / `UNBILLED`), and the attempts the instance index names lose their time
on it (`unbill_shared_instances`). A warning alone is not taken for the interruption: Batch may terminate an idle
instance before EC2 does, and AWS bills an instance its owner terminated, so one warned while idle, our jobs on it
having ended before (even on a checkpoint request, exit 86 or 87), stays billed (reported too high, never hidden).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_hpc.clock import parse_time
from spot_hpc.ledger import Attempt, JobRef
from spot_hpc.services import Services

logger = logging.getLogger(__name__)
# EC2 carries out an interruption two minutes after its warning.
INTERRUPTION_LEAD = timedelta(minutes=2)
# AWS charges nothing for a Spot instance's usage when EC2 interrupts it within this long of its launch (Linux and
# Windows; "Billing for interrupted Spot Instances", EC2 User Guide).
UNBILLED_INTERRUPTION_WITHIN = timedelta(hours=1)


def unbilled_instances(svc: Services, stopped_on: Mapping[str, datetime], since: datetime) -> set[str]:
    """Those of the instances `stopped_on` names (each with when the job or shard an interruption ended there stopped)
    that EC2 interrupted within their first hour, so that AWS charges nothing for them. The interruption is the one the
    first warning kept for the instance announces, given since its launch (one dated before tells of no interruption
    of this instance's run: given by hand, or replayed), at `since` or later and no later than that stop (one given
    after came while the instance sat idle, and Batch may have terminated it first); the instance's launch time, which
    EC2 describes for about an hour after it terminated, puts it in that hour. Where the launch time cannot be had the
    instance counts as billed: a cost reported too high, never one hidden. Those found are kept
    (`Ledger.keep_unbilled_instance`) for the attempts that ran on them before, whose time there is not billed
    either."""
    warned: dict[str, list[datetime]] = {}
    for instance_id, stopped in stopped_on.items():
        kept = svc.ledger.instance_signals(instance_id, since)
        if warnings := [at for at in (parse_time(s.signalled_at) for s in kept if s.warning) if at <= stopped]:
            warned[instance_id] = warnings
    if not warned:
        return set()
    try:
        described = svc.batch.describe_instances(warned)
    except (BotoCoreError, ClientError):
        logger.warning("instance launch times unavailable: billed in full", extra={"instance_ids": sorted(warned)})
        return set()
    unbilled = set()
    for instance_id, warnings in warned.items():
        if instance_id not in described:
            continue
        launched_at = described[instance_id].launched_at
        # Kept warnings are told to the second; a launch time may be finer.
        since_launch = [at for at in warnings if at >= launched_at.replace(microsecond=0)]
        if since_launch and min(since_launch) + INTERRUPTION_LEAD < launched_at + UNBILLED_INTERRUPTION_WITHIN:
            unbilled.add(instance_id)
    for instance_id in sorted(unbilled):
        svc.ledger.keep_unbilled_instance(instance_id)
    return unbilled


def unbill_shared_instances(svc: Services, ref: JobRef, attempt: Attempt) -> None:
    """AWS bills none of the usage of a Spot instance EC2 interrupted within its first hour: not the attempt it was
    taken from, nor any that ran on it before (Batch runs jobs one after another on an instance, of any run).

    Called after each telling of an attempt's end, once it is recorded: the instances the attempt ran on that were
    found so (by its own end, `unbilled_instances`, or by another attempt's) come out of its bill, and out of those of
    the other attempts the instance index names (across runs), that have ended; one that has not takes them out at
    its own end, here (its end is written before this reads what was found; the end that finds an instance keeps it
    before this reads the instance's attempts). Safe to repeat: time taken out is not taken out again. Each attempt's
    bill is written once for all the instances it shares with this one: an array's item holds what each of up to a
    thousand instances billed it, and a write of it costs its whole size."""
    if attempt.capacity != "spot":
        return
    found = svc.ledger.unbilled_among({*attempt.instance_ids, *attempt.billed_on_instances})
    if not found:
        return
    _unbill(svc, ref, found)
    others: dict[str, tuple[JobRef, set[str]]] = {}  # by job id
    for instance_id in sorted(found):
        for other in svc.ledger.jobs_on_instance(instance_id):
            if other.job_id != ref.job_id:
                others.setdefault(other.job_id, (other, set()))[1].add(instance_id)
    for other, instance_ids in others.values():
        _unbill(svc, other, instance_ids)


def _unbill(svc: Services, ref: JobRef, instance_ids: set[str]) -> None:
    """Takes the attempt's time on `instance_ids` (found unbilled) out of its bill, if it ended, on Spot."""

    def unbill(attempt: Attempt) -> dict[str, Any] | None:
        new = instance_ids & _billed_instances(attempt) if attempt.capacity == "spot" else set()
        return _unbilled_sets(attempt, new) if new else None

    if svc.ledger.unbill_attempt(ref.run_id, ref.stage, ref.attempt, unbill):
        logger.info(
            "an attempt's time on an instance EC2 interrupted within its first hour is not billed",
            extra={"run_id": ref.run_id, "stage": ref.stage, "attempt": ref.attempt, "instances": sorted(instance_ids)},
        )


def _billed_instances(attempt: Attempt) -> set[str]:
    """The instances an ended attempt is still billed on: an array's shards' (where they were told), a job's own. An
    array recorded before its shards' instance time was kept (`instance_seconds`) is billed over its span as a job of
    its nodes, on instances its list may not all name: none it is billed on can be told apart."""
    if attempt.instance_seconds is not None:
        billed = set(attempt.billed_on_instances)
    elif attempt.nodes > 1:
        billed = set()
    else:
        billed = set() if attempt.interrupted_in_first_hour else set(attempt.instance_ids)
    return billed - set(attempt.unbilled_instance_ids)


def _unbilled_sets(attempt: Attempt, unbilled: set[str]) -> dict[str, Any]:
    """An ended attempt's billing fields once its time on `unbilled` (instances it is billed on) is not billed: a job
    costs nothing once none of its instances is billed; an array loses its shards' seconds there, and its price is
    that of the shards still billed (the same unless they were priced apart)."""
    sets: dict[str, Any] = {"unbilled_instance_ids": sorted({*attempt.unbilled_instance_ids, *unbilled})}
    if attempt.instance_seconds is None:
        if set(attempt.instance_ids) <= set(sets["unbilled_instance_ids"]):
            sets["interrupted_in_first_hour"] = True
        return sets
    shares = [attempt.billed_on_instances[instance_id] for instance_id in sorted(unbilled)]
    seconds = attempt.instance_seconds - sum(int(share["seconds"]) for share in shares)
    sets["instance_seconds"] = seconds
    if seconds > 0 and any("usd_per_hour" in share for share in shares):
        per_node = attempt.usd_per_hour / attempt.nodes
        usd = per_node * attempt.instance_seconds - sum(
            share.get("usd_per_hour", per_node) * share["seconds"] for share in shares
        )
        sets["usd_per_hour"] = usd / seconds * attempt.nodes
    return sets
