"""AWS bills none of the usage of a Spot instance that EC2 interrupts within its first hour ("Billing for interrupted
Spot Instances", EC2 User Guide): not the job it was taken from, nor any that ran on it before, since Batch runs jobs
one after another on an instance, of any run.

Such an instance is one EC2 warned of an interruption falling in its first hour (a warning kept for the instance, and
its launch time) and then describes as interrupted for Spot (its state's reason), not ended by its owner first: Batch
may terminate an idle instance before EC2 does, and AWS bills an instance its owner terminated. It is found at the
end of a job or shard that an interruption ended (`unbilled_instances`); where EC2 has not carried out the
interruption by then (the job stopped on the notice, exit 86 or 87), or the instance was warned while its jobs of
ours had all ended, the instance is awaited and the SLA guard asks EC2 again once the warning's two minutes are out
(`confirm_interruptions`). What is found is kept in the ledger (`INSTANCE#<id>` / `UNBILLED`), and the attempts the
instance index names lose their time on it (`unbill_shared_instances`). Where EC2 cannot tell, the instance stays
billed: a cost reported too high, never one hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from spot_hpc.batch import Ec2Instance
from spot_hpc.clock import parse_time, utc_now
from spot_hpc.ledger import Attempt, JobRef
from spot_hpc.services import Services

logger = logging.getLogger(__name__)
# EC2 carries out an interruption two minutes after its warning.
INTERRUPTION_LEAD = timedelta(minutes=2)
# AWS charges nothing for a Spot instance's usage when EC2 interrupts it within this long of its launch (Linux and
# Windows; "Billing for interrupted Spot Instances", EC2 User Guide).
UNBILLED_INTERRUPTION_WITHIN = timedelta(hours=1)
# An instance EC2 still describes as running this long after its warning was not interrupted then (EC2 carries out an
# interruption two minutes after warning of it): it is billed, and awaited no more.
AWAITED_FOR = timedelta(hours=1)


def unbilled_instances(svc: Services, stopped_on: Mapping[str, datetime], since: datetime) -> set[str]:
    """Those of the instances `stopped_on` names (each with when the job or shard an interruption ended there stopped)
    that EC2 interrupted within their first hour, so that AWS charges nothing for them. The interruption is the one the
    first warning kept for the instance announces, given since its launch (one dated before tells of no interruption
    of this instance's run: given by hand, or replayed), at `since` or later and no later than that stop (one given
    after came while the instance sat idle: the SLA guard looks at it, `confirm_interruptions`); the instance's launch
    time, which EC2 describes for about an hour after it terminated, puts it in that hour, and EC2's reason for the
    instance's end says EC2 took it. An instance EC2 still describes as running (its job stopped on the notice) is
    awaited (`await_interruption`), as is one EC2 cannot be asked of now (throttled), billed until the SLA guard asks
    again; one whose owner ended it first, or that EC2 no longer describes, counts as billed. Those found are kept
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
        # Billed for now, and awaited: the SLA guard asks again. Nothing else may await it (a warning handled before
        # any job of ours was known there awaits nothing).
        logger.warning("instance launch times unavailable: billed in full", extra={"instance_ids": sorted(warned)})
        for instance_id, warnings in warned.items():
            await_interruption(svc, instance_id, min(warnings))
        return set()
    unbilled = set()
    for instance_id, warnings in warned.items():
        instance = described.get(instance_id)
        warned_at = _first_hour_warning(warnings, instance) if instance else None
        if instance is None or warned_at is None:
            continue
        if instance.interrupted_by_spot:
            unbilled.add(instance_id)
        elif not instance.ended:
            await_interruption(svc, instance_id, warned_at)
    for instance_id in sorted(unbilled):
        svc.ledger.keep_unbilled_instance(instance_id)
    return unbilled


def await_interruption(svc: Services, instance_id: str, warned_at: datetime) -> None:
    """Has the SLA guard look at the instance once the interruption EC2 warned of at `warned_at` is due
    (`confirm_interruptions`)."""
    svc.ledger.await_interruption(instance_id, warned_at, look_at=warned_at + INTERRUPTION_LEAD)


def confirm_interruptions(svc: Services, out_of_time: Callable[[], bool] = lambda: False) -> int:
    """The SLA guard's look at the instances whose interruption is awaited and due (`await_interruption`), with one
    DescribeInstances per 200 of them: one EC2 describes as interrupted for Spot, warned within its first hour, is
    kept unbilled, and every ended attempt the instance index names loses its time there (one still running does at
    its end, `unbill_shared_instances`). One EC2 describes as running is looked at again at the next pass, for
    AWAITED_FOR after its warning; one ended otherwise (its owner first), warned after its first hour, or no longer
    described stays billed, and is awaited no more. Stops early when `out_of_time`, leaving the rest to the next pass.
    Returns how many instances were found unbilled."""
    now = utc_now()
    try:
        awaited = list(svc.ledger.awaited_interruptions(now))
        described = svc.batch.describe_instances(item.instance_id for item in awaited) if awaited else {}
    except (BotoCoreError, ClientError):  # throttled: the notices the pass sends next must not wait on it
        logger.warning("awaited interruptions left to the next pass: not read", exc_info=True)
        return 0
    found = 0
    for item in awaited:
        if out_of_time():
            break
        instance = described.get(item.instance_id)
        warned_at = parse_time(item.warned_at)
        if instance is not None and not instance.ended and now < warned_at + AWAITED_FOR:
            continue
        try:
            if instance is not None and instance.interrupted_by_spot and _first_hour_warning([warned_at], instance):
                # Kept before the instance's attempts are read: one ending meanwhile reads it (`unbilled_among`).
                svc.ledger.keep_unbilled_instance(item.instance_id)
                for ref in svc.ledger.jobs_on_instance(item.instance_id):
                    _unbill(svc, ref, {item.instance_id})
                found += 1
            svc.ledger.end_awaited_interruption(item.instance_id)
        except Exception:  # one instance's writes (throttled) must not stop the others: it is looked at again
            logger.exception("could not settle an awaited interruption", extra={"instance_id": item.instance_id})
    return found


def _first_hour_warning(warnings: list[datetime], instance: Ec2Instance) -> datetime | None:
    """The first of the instance's `warnings` given since its launch, when the interruption it announces (two minutes
    after) falls in the instance's first hour; None otherwise."""
    # Kept warnings are told to the second; a launch time may be finer.
    first = min((at for at in warnings if at >= instance.launched_at.replace(microsecond=0)), default=None)
    if first is not None and first + INTERRUPTION_LEAD < instance.launched_at + UNBILLED_INTERRUPTION_WITHIN:
        return first
    return None


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
