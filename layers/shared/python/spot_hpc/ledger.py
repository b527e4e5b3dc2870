"""The ledger: one DynamoDB table holding runs, stages, attempts and the indexes the handlers look things up by.

Item layout (pk / sk):
  RUN#<run>        RUN                      the run: source object, deadline, status, execution
  RUN#<run>        STAGE#<stage>            a stage: status, task token, current attempt, retry budget, placement
  RUN#<run>        ATTEMPT#<stage>#<nnn>    one Batch job of a stage: queue, capacity, times, outcome, price
  JOB#<job id>     JOB                      job id -> run, stage, attempt (Batch events carry only the job id)
  INSTANCE#<i-..>  JOB#<job id>             instance -> jobs on it (Spot warnings carry only the instance id)
  INSTANCE#<i-..>  SIGNAL#<time>#<event>    a Spot signal for the instance, kept for a job whose start comes later
  INSTANCE#<i-..>  UNBILLED                 EC2 interrupted the instance within its first hour: AWS bills none of it
  INSTANCE#<i-..>  AWAITED_INTERRUPTION     EC2 warned of an interruption that may fall in the instance's first hour,
                                            not yet seen carried out
  REJECTION        <time>#<id>              an input the control plane refused, with the reason
  NOTIFIED#<key>   NOTIFIED                 one notification per event, however often the event repeats: a claim
                                            (a lease, taken over when its handler died), then sent
The sparse `active-stages` index that the SLA guard queries holds four kinds of items, each under a hash value of
its own: active stages (`active` = "1", `active_sk` = run#stage); notices claimed and not yet sent (`active` =
"notice", `active_sk` = the claim's lease end), so that the guard sends those whose claimer died
(`lapsed_notice_claims`); runs whose end has not been told yet (`active` = "run", `active_sk` = the run id), so
that the guard settles those whose execution ended without it (`open_runs`); and instances whose interruption is
awaited (`active` = "interruption", `active_sk` = when to look), so that the guard learns how EC2 ended them
(`awaited_interruptions`).

Every write that decides something (claiming the next attempt, settling a stage) is conditional, so duplicated and
reordered events, and two handlers racing, lead to one action.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, get_type_hints

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from spot_hpc.clock import format_time, parse_time, utc_now

ACTIVE_INDEX = "active-stages"
# An attempt's cancel_reason when the control plane replaced it by an On-Demand one.
CANCEL_REQUEUE = "requeue_to_on_demand"
CANCEL_RUN_ENDED = "run_ended"  # the run failed, was aborted or timed out while the attempt ran
# An attempt that followed one which succeeded after all (a requeued Spot job that finished as it was replaced).
CANCEL_EARLIER_SUCCEEDED = "earlier_attempt_succeeded"
# Attributes that go to the sparse index; removed when a stage settles.
_ACTIVE = "1"
# The index's hash value for runs whose end has not been told yet.
_OPEN_RUN = "run"
# The index's hash value for instances whose warned interruption is awaited (their range key is when to look).
_AWAITED_INTERRUPTION = "interruption"
# A notification claim is a lease that ends when its holder's invocation must have ended (plus a second for the
# clocks of two Lambda hosts), or after this when that is unknown: longer than any function's timeout (Lambda's
# longest is 15 minutes), so the claim of a handler still sending is never taken.
NOTIFICATION_LEASE = timedelta(minutes=15)
CLAIM_CLOCK_MARGIN = timedelta(seconds=1)
NOTICE_CLAIMED = "claimed"
NOTICE_SENT = "sent"
# The index's hash value for notices claimed and not yet sent (their range key is the claim's lease end), and the
# attributes that list such a claim there with the notice it carries.
_CLAIMED_NOTICE = "notice"
_NOTICE_LISTING = ("active", "active_sk", "notice_body")
# Writes of a stage's Spot statistics from a fresh read before `learn_spot` gives up: each write lost is another
# handler's won (a stage sees a few a job: its wait's end, its run's end), so losing this many in a row is rare.
SPOT_STATS_TRIES = 5
# Writes of an ended attempt's billing from a fresh read before `unbill_attempt` gives up: each write lost is another
# instance of the attempt found unbilled at the same moment, which is rare.
UNBILL_TRIES = 5
# BatchGetItem takes at most 100 keys a call; the keys a call leaves unprocessed (throttled) are asked again, so many
# times in all (the client's own retries back off on a throttled call as a whole).
BATCH_GET_KEYS = 100
UNPROCESSED_TRIES = 5
UNPROCESSED_BACKOFF_SECONDS = 0.05


class LedgerConflict(Exception):
    """A conditional write lost: somebody else already did this (a duplicate event, a racing handler). `current` is
    the item that refused the write, when the write asked DynamoDB for it."""

    def __init__(self, message: str, current: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.current = current


class LedgerContended(Exception):
    """A read-modify-write lost to other writers every time it tried: nothing was written. Retryable: the event is
    delivered again, and its retry reads what they wrote."""


class NotificationClaimHeld(Exception):
    """Another invocation holds the notice's claim and its lease has not lapsed: it may be sending the notice now, or
    have died before sending it (a crash before its deadline). Retryable: a retry from `lapses_at` on finds the
    notice sent, or takes the claim over and sends it. Its name is what the state machine's retrier matches."""

    def __init__(self, dedupe_key: str, lapses_at: datetime) -> None:
        super().__init__(f"notice {dedupe_key} is claimed by another invocation until {format_time(lapses_at)}")
        self.dedupe_key = dedupe_key
        self.lapses_at = lapses_at


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def _refusing_item(exc: ClientError) -> dict[str, Any] | None:
    """The item a conditional write was refused by, as DynamoDB returns it on ReturnValuesOnConditionCheckFailure."""
    raw = exc.response.get("Item")
    if not raw:
        return None
    deserializer = TypeDeserializer()
    return _from_dynamo({name: deserializer.deserialize(value) for name, value in raw.items()})


@cache
def _float_fields(cls: Any) -> frozenset[str]:
    return frozenset(name for name, hint in get_type_hints(cls).items() if hint is float)


def _record(cls: Any, item: Mapping[str, Any]) -> Any:
    """The record of an item, typed as its class says: DynamoDB keeps one kind of number, so a float field that holds
    a whole number (2.0 hours) reads back as an int and is made a float again here, once for every reader."""
    names = {f.name for f in fields(cls)}
    floats = _float_fields(cls)
    values = {k: v for k, v in _from_dynamo(dict(item)).items() if k in names}
    return cls(**{k: float(v) if k in floats and type(v) is int else v for k, v in values.items()})


@dataclass
class Run:
    run_id: str
    bucket: str
    key: str
    version_id: str
    deadline_at: str
    deadline_hours: float
    started_at: str
    stage_hours: dict[str, float]
    hpc_mode: str = "multinode"
    hpc_nodes: int = 2
    status: str = "RUNNING"
    execution_arn: str | None = None
    finished_at: str | None = None
    error: str | None = None
    # Where the run's options came from: "manifest", "metadata" or "defaults" (None: a run recorded before it was).
    options_from: str | None = None


@dataclass
class Stage:
    run_id: str
    stage: str
    order: int
    compute_hours: float
    spot_allowed: bool
    nodes: int
    retry_budget: int = 2
    status: str = "PENDING"
    attempt: int = 0
    job_id: str | None = None
    capacity: str | None = None
    task_token: str | None = None
    # Which attempt of the state machine's task gave `task_token`: when its state was entered (epoch ms) and its retry
    # count. A token from an earlier attempt is not written over it (`take_task_token`).
    task_entered_ms: int | None = None
    task_retry: int = 0
    app_retries_used: int = 0
    # Attempts placed again, spending no retry, because S3 failed their job's start (exit 88; `job_events`).
    s3_resubmits_used: int = 0
    checkpoint_uri: str | None = None
    # Set between claiming an attempt and recording its job: a crash in between leaves it for the guard.
    submitting_since: str | None = None
    spot_waiting_since: str | None = None
    spot_stats: dict[str, Any] = field(default_factory=dict)
    # The last attempt whose run on Spot `spot_stats` has learnt: a repeated end event learns it once.
    spot_learnt_attempt: int = 0
    # How often `spot_stats` was written: a write from a read that is no longer current is refused (`learn_spot`).
    spot_stats_version: int = 0
    settled_at: str | None = None
    # Why a stage failed for good, kept so the answer to the state machine can be sent again after a crash.
    failure: str | None = None
    # The stage's On-Demand price for all its nodes as its run was settled: the base its savings keep from then on.
    on_demand_usd_per_hour: float | None = None

    @property
    def multinode(self) -> bool:
        """The HPC stage as one multi-node parallel job (its shards mode is an array job and may use Spot)."""
        return self.stage == "hpc" and not self.spot_allowed

    @property
    def array_size(self) -> int | None:
        """Shards of the HPC stage's array job; None for a single job or a multi-node one."""
        return self.nodes if self.stage == "hpc" and self.spot_allowed else None


@dataclass
class Attempt:
    run_id: str
    stage: str
    attempt: int
    job_id: str
    queue: str
    capacity: str
    nodes: int
    submitted_at: str
    usd_per_hour: float = 0.0
    # The price could not be looked up when the job was placed: 0 until the run report prices the attempt again.
    price_unknown: bool = False
    status: str = "SUBMITTED"
    status_reason: str | None = None
    exit_code: int | None = None
    failure_class: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    instance_ids: list[str] = field(default_factory=list)
    resumed_from_checkpoint: bool = False
    cancel_reason: str | None = None
    # Why a shard of an array job failed (its parent's own end says only that a child failed).
    shard_failure: str | None = None
    # An ended array job's: the seconds EC2 billed its shards, each on its own instance from its start to its stop
    # (the parent's times span them all, and a shard that never started cost nothing).
    instance_seconds: int | None = None
    # An ended array job's: the seconds its shards ran, billed or not: `instance_seconds` and those of the shards on
    # instances EC2 interrupted within their first hour (On-Demand would have been paid for them). None in an item
    # written before it was kept: its `instance_seconds` stand for both.
    run_seconds: int | None = None
    # An ended Spot job's instance was interrupted by EC2 within its first hour, while the job ran or after it ended
    # (Batch runs jobs one after another on an instance): AWS charges nothing for it.
    interrupted_in_first_hour: bool = False
    # An ended Spot job's instances that EC2 interrupted within their first hour, found at its end or after it: its
    # time on them is not billed (an array's `instance_seconds` leave out its shards' there). Only ever grown.
    unbilled_instance_ids: list[str] = field(default_factory=list)
    # An ended array job's: what EC2 billed its shards on each instance they ran on (by id), `seconds` and their
    # `usd_per_hour` for one node (weighed by their seconds; none where the placement's price stands), so that the
    # time on an instance found unbilled after the array ended is taken out of its bill. An item written before it
    # was kept has none: its shards stay billed.
    billed_on_instances: dict[str, dict[str, float]] = field(default_factory=dict)
    # The instance the job got, once it runs (and was described): what `usd_per_hour` is then the price of.
    instance_type: str | None = None
    availability_zone: str | None = None

    @property
    def ended_as_placed(self) -> bool:
        """The attempt was ended before it ran, its stage settled without it (the attempt before succeeded after all,
        or the run ended; `record_placed`): it moved no work, and no move to it is told or counted."""
        return self.cancel_reason in (CANCEL_EARLIER_SUCCEEDED, CANCEL_RUN_ENDED) and not self.started_at


@dataclass(frozen=True)
class NoticeClaim:
    """A notice claimed and not sent, as the active-stages index holds it: `notice` is what its claimer stored to send
    (text the notifier wrote and reads; whatever the item holds, it is the notifier's to judge)."""

    dedupe_key: str
    claim_id: str
    notice: Any


@dataclass
class JobRef:
    job_id: str
    run_id: str
    stage: str
    attempt: int


@dataclass(frozen=True)
class InstanceSignal:
    """A Spot interruption warning (`warning`) or rebalance recommendation for an instance, kept until its job's
    start is told."""

    instance_id: str
    signal: str  # as the notices and checkpoint requests say it, e.g. "interruption warning"
    warning: bool
    signalled_at: str


@dataclass(frozen=True)
class AwaitedInterruption:
    """An instance EC2 warned it would interrupt (`warned_at`), which may fall in the instance's first hour."""

    instance_id: str
    warned_at: str


# The condition that an attempt has not ended (Batch's terminal statuses), with its values.
_NOT_ENDED = "#status <> :succeeded AND #status <> :failed"
_NOT_ENDED_VALUES = {"succeeded": "SUCCEEDED", "failed": "FAILED"}


def _awaited_interruption_key(instance_id: str) -> dict[str, str]:
    return {"pk": f"INSTANCE#{instance_id}", "sk": "AWAITED_INTERRUPTION"}


def _run_key(run_id: str) -> dict[str, str]:
    return {"pk": f"RUN#{run_id}", "sk": "RUN"}


def _stage_key(run_id: str, stage: str) -> dict[str, str]:
    return {"pk": f"RUN#{run_id}", "sk": f"STAGE#{stage}"}


def _attempt_key(run_id: str, stage: str, attempt: int) -> dict[str, str]:
    return {"pk": f"RUN#{run_id}", "sk": f"ATTEMPT#{stage}#{attempt:03d}"}


def _notification_key(dedupe_key: str) -> dict[str, str]:
    return {"pk": f"NOTIFIED#{dedupe_key}", "sk": "NOTIFIED"}


def _claim_lapses_at(claim: Mapping[str, Any]) -> datetime:
    """The first second at which a notification claim can be taken over: its lease's end is compared to the time in
    whole seconds, and must be past. A claim without `lease_until` keeps the 15 minutes it was taken for."""
    if "lease_until" in claim:
        lease_until = parse_time(str(claim["lease_until"]))
    else:
        lease_until = parse_time(str(claim["claimed_at"])) + NOTIFICATION_LEASE
    return lease_until + timedelta(seconds=1)


class Ledger:
    """Typed access to the ledger table. `table` is a boto3 DynamoDB Table resource (injectable)."""

    def __init__(self, table: Any, retention_days: int = 90) -> None:
        self._table = table
        self._retention = timedelta(days=retention_days)

    def _expires_at(self, now: datetime | None = None) -> int:
        return int(((now or utc_now()) + self._retention).timestamp())

    def _put(
        self, item: Mapping[str, Any], now: datetime | None = None, expires_at: int | None = None, **conditions: Any
    ) -> None:
        """Writes one item; every item expires after the retention period (or at `expires_at`). LedgerConflict when
        `conditions` (a ConditionExpression and its names and values) refuse the write."""
        expiry = expires_at if expires_at is not None else self._expires_at(now)
        try:
            self._table.put_item(Item=_to_dynamo({**item, "expires_at": expiry}), **conditions)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                message = f"{item['pk']}/{item['sk']}: {conditions['ConditionExpression']}"
                raise LedgerConflict(message, _refusing_item(exc)) from exc
            raise

    def _put_new(self, key: dict[str, str], body: Mapping[str, Any]) -> None:
        self._put({**key, **body}, ConditionExpression="attribute_not_exists(pk)")

    def _update(
        self,
        key: dict[str, str],
        sets: Mapping[str, Any],
        removes: tuple[str, ...] = (),
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        # None means "no value": DynamoDB stores absence, not null.
        removes = (*removes, *(n for n, v in sets.items() if v is None))
        sets = {n: v for n, v in sets.items() if v is not None}
        referenced = re.findall(r"#(\w+)", condition or "")
        names = {f"#{n}": n for n in [*sets, *removes, *referenced, "expires_at"]}
        values = {f":{n}": v for n, v in sets.items()}
        # An update creates the item when it is missing (an item's end told after the item expired, say): it expires
        # as a put one does, never kept for good. An item that has its expiry keeps it.
        values[":expires_at"] = self._expires_at()
        assignments = [f"#{n} = :{n}" for n in sets] + ["#expires_at = if_not_exists(#expires_at, :expires_at)"]
        expression = "SET " + ", ".join(assignments)
        if removes:
            expression += " REMOVE " + ", ".join(f"#{n}" for n in removes)
        kwargs: dict[str, Any] = {
            "Key": key,
            "UpdateExpression": expression.strip(),
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_NEW",
        }
        all_values = {**values, **{f":{k}": v for k, v in (condition_values or {}).items()}}
        kwargs["ExpressionAttributeValues"] = _to_dynamo(all_values)
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            return _from_dynamo(self._table.update_item(**kwargs)["Attributes"])  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LedgerConflict(f"{key['pk']}/{key['sk']}: {condition}") from exc
            raise

    # ------------------------------------------------------------------ runs
    def create_run(self, run: Run, stages: list[Stage]) -> None:
        """Writes the run's stages, then the run (its conditional put is the exactly-once gate): a run in the ledger has
        all its stages, though its handler failed part way (a write throttled, a timeout), whose retry finds the run
        and only starts it. A stage written already (by that failed handler, or a delivery racing this one) is left
        as it is. The run is open until its end has been told (`close_run`)."""
        for stage in stages:
            with contextlib.suppress(LedgerConflict):
                self._put_new(_stage_key(run.run_id, stage.stage), asdict(stage))
        self._put_new(_run_key(run.run_id), {**asdict(run), "active": _OPEN_RUN, "active_sk": run.run_id})

    def get_run(self, run_id: str) -> Run | None:
        item = self._table.get_item(Key=_run_key(run_id), ConsistentRead=True).get("Item")
        return _record(Run, item) if item else None

    def update_run(self, run_id: str, **sets: Any) -> None:
        self._update(_run_key(run_id), sets)

    def finish_run(
        self, run_id: str, status: str, error: str | None = None, finished_at: datetime | None = None
    ) -> bool:
        """Settles a run once, as finished at `finished_at` (now, unless said); False when it was already settled."""
        sets: dict[str, Any] = {"status": status, "finished_at": format_time(finished_at or utc_now())}
        if error:
            sets["error"] = error
        try:
            self._update(
                _run_key(run_id), sets, condition="#status = :running", condition_values={"running": "RUNNING"}
            )
            return True
        except LedgerConflict:
            return False

    def close_run(self, run_id: str) -> None:
        """The run's end has been told (or its notice claimed, which the guard sends if its claimer dies): it leaves
        the open runs."""
        self._update(_run_key(run_id), {}, removes=("active", "active_sk"))

    def open_runs(self) -> Iterator[Run]:
        """Runs whose end has not been told yet (one query of the sparse index, however many runs the table holds)."""
        for item in self._query(
            {
                "IndexName": ACTIVE_INDEX,
                "KeyConditionExpression": "active = :run",
                "ExpressionAttributeValues": {":run": _OPEN_RUN},
            }
        ):
            yield _record(Run, item)

    def list_runs(self) -> list[Run]:
        """Every run (reporting only: a scan, paginated; the handlers never call it)."""
        runs: list[Run] = []
        kwargs: dict[str, Any] = {"FilterExpression": "sk = :run", "ExpressionAttributeValues": {":run": "RUN"}}
        while True:
            page = self._table.scan(**kwargs)
            runs.extend(_record(Run, item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(runs, key=lambda r: r.started_at)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def record_rejection(self, source: str, reason: str, detail: Mapping[str, Any]) -> None:
        now = utc_now()
        # Two refusals from one source within a second must not overwrite each other: the event id (or a fresh id)
        # keeps them apart, and a redelivery of the same event in the same second stays one record.
        unique = str(detail.get("event_id") or "") or uuid.uuid4().hex
        self._put(
            {
                "pk": "REJECTION",
                # The source by its digest: an S3 key alone may take the 1,024 bytes a sort key has.
                "sk": f"{format_time(now)}#{hashlib.sha256(source.encode()).hexdigest()[:16]}#{unique}",
                "source": source,
                "reason": reason,
                "detail": dict(detail),
                "rejected_at": format_time(now),
            },
            now,
        )

    def list_rejections(self) -> list[dict[str, Any]]:
        items = self._query({"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": "REJECTION"}})
        return [_from_dynamo(item) for item in items]

    # ------------------------------------------------------------------ stages
    def get_stage(self, run_id: str, stage: str) -> Stage | None:
        item = self._table.get_item(Key=_stage_key(run_id, stage), ConsistentRead=True).get("Item")
        return _record(Stage, item) if item else None

    def get_stages(self, run_id: str) -> list[Stage]:
        """The run's stages in pipeline order (one query reading only stage items)."""
        items = self._query(
            {
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :stage)",
                "ExpressionAttributeValues": {":pk": f"RUN#{run_id}", ":stage": "STAGE#"},
                "ConsistentRead": True,
            }
        )
        return sorted((_record(Stage, i) for i in items), key=lambda s: s.order)

    def get_run_items(self, run_id: str) -> tuple[list[Stage], list[Attempt]]:
        items = list(
            self._query(
                {
                    "KeyConditionExpression": "pk = :pk",
                    "ExpressionAttributeValues": {":pk": f"RUN#{run_id}"},
                    "ConsistentRead": True,
                }
            )
        )
        stages = [_record(Stage, i) for i in items if i["sk"].startswith("STAGE#")]
        attempts = [_record(Attempt, i) for i in items if i["sk"].startswith("ATTEMPT#")]
        return sorted(stages, key=lambda s: s.order), attempts

    def update_stage(self, run_id: str, stage: str, removes: tuple[str, ...] = (), **sets: Any) -> Stage:
        return _record(Stage, self._update(_stage_key(run_id, stage), sets, removes))  # type: ignore[no-any-return]

    def take_task_token(
        self, run_id: str, stage: str, token: str, entered_ms: int | None = None, retry: int = 0
    ) -> Stage | None:
        """Keeps the state machine's task token for the stage, unless a later attempt of its task state gave one:
        after a `Lambda.ServiceException` the state machine may retry the runner while the invocation before still
        runs, and that one may write last. Attempts are ordered by when their state was entered (a redrive enters it
        anew) then by retry count. None when a later attempt's token is kept; a token given with no order (from an
        execution started before it was sent) is kept as it comes."""
        if entered_ms is None:
            return self.update_stage(run_id, stage, task_token=token)
        try:
            return _record(  # type: ignore[no-any-return]
                Stage,
                self._update(
                    _stage_key(run_id, stage),
                    {"task_token": token, "task_entered_ms": entered_ms, "task_retry": retry},
                    condition="attribute_not_exists(#task_entered_ms) OR #task_entered_ms < :task_entered_ms"
                    " OR (#task_entered_ms = :task_entered_ms AND #task_retry <= :task_retry)",
                ),
            )
        except LedgerConflict:
            return None

    def start_spot_wait(self, run_id: str, stage: str, since: str) -> str | None:
        """Starts the stage's wait for Spot at `since`, unless it waits already: a handler that read the stage before
        another started its wait (the SLA guard reads its stages once, at its pass's start; an array's shards are
        told at once) would otherwise start it again, later, and the wait would be learnt shorter than it was, and
        taken for a want of capacity later. Returns the wait that stands (`since` when it is this one); None when
        the stage is gone, or its wait ended as this was refused."""
        try:
            self._update(
                _stage_key(run_id, stage),
                {"spot_waiting_since": since},
                condition="attribute_exists(#pk) AND attribute_not_exists(#spot_waiting_since)",
            )
        except LedgerConflict:
            current = self.get_stage(run_id, stage)
            return current.spot_waiting_since if current is not None else None
        return since

    def drop_spot_wait(self, run_id: str, stage: str, since: str) -> None:
        """Removes the stage's wait for Spot that started at `since`, learning nothing from it (it never was one: its
        job was running when it was written). A wait ended, or started anew, since is left as it is."""
        with contextlib.suppress(LedgerConflict):
            self._update(
                _stage_key(run_id, stage),
                {},
                removes=("spot_waiting_since",),
                condition="#spot_waiting_since = :since",
                condition_values={"since": since},
            )

    def keep_on_demand_base(self, run_id: str, stage: str, usd_per_hour: float) -> None:
        """Keeps the stage's On-Demand price as its settled run's savings base; the first one kept stays."""
        with contextlib.suppress(LedgerConflict):  # kept already (a repeated settlement), or the stage is gone
            self._update(
                _stage_key(run_id, stage),
                {"on_demand_usd_per_hour": usd_per_hour},
                condition="attribute_exists(#pk) AND attribute_not_exists(#on_demand_usd_per_hour)",
            )

    def claim_attempt(self, run_id: str, stage: str, expected_attempt: int, **sets: Any) -> Stage:
        """Moves a stage from `expected_attempt` to the next; exactly one caller wins (others: LedgerConflict)."""
        now = format_time(utc_now())
        return _record(
            Stage,
            self._update(  # type: ignore[no-any-return]
                _stage_key(run_id, stage),
                {
                    **sets,
                    "attempt": expected_attempt + 1,
                    "status": "RUNNING",
                    "submitting_since": now,
                    "active": _ACTIVE,
                    "active_sk": f"{run_id}#{stage}",
                },
                removes=("job_id",),
                condition="#attempt = :expected AND #status IN (:pending, :running)",
                condition_values={"expected": expected_attempt, "pending": "PENDING", "running": "RUNNING"},
            ),
        )

    def settle_stage(
        self, run_id: str, stage: str, status: str, attempt: int | None, failure: str | None = None
    ) -> Stage:
        """Marks a running stage SUCCEEDED or FAILED once, for the attempt that settled it (None: whatever attempt it
        is on). LedgerConflict when it is not running, or on another attempt.

        The stage stays in the active index until the state machine has been told (`mark_answered`), so a crash
        in between leaves it where the SLA guard looks.
        """
        condition = "#status = :running"
        condition_values: dict[str, Any] = {"running": "RUNNING"}
        if attempt is not None:
            condition += " AND #attempt = :attempt"
            condition_values["attempt"] = attempt
        return _record(
            Stage,
            self._update(  # type: ignore[no-any-return]
                _stage_key(run_id, stage),
                {"status": status, "settled_at": format_time(utc_now()), "failure": failure},
                removes=("submitting_since", "spot_waiting_since"),
                condition=condition,
                condition_values=condition_values,
            ),
        )

    def learn_spot(self, stage: Stage, learn: Callable[[Stage], Mapping[str, Any] | None]) -> Stage:
        """Writes what `learn` makes of the stage as read: the attributes to set, its new `spot_stats` among them (None
        removes one), or None when there is nothing to learn (learnt already). Returns the stage as it is then.

        The statistics are read, added to and written back whole, and handlers race to do it (a job's start and its
        end told at once): the write is refused when they were written since the read (`spot_stats_version`), which
        would otherwise drop what that other write learnt. The stage is then read again and learnt from anew, up to
        SPOT_STATS_TRIES times in all; LedgerContended after that."""
        for tries in range(1, SPOT_STATS_TRIES + 1):
            sets = learn(stage)
            if sets is None:
                return stage
            try:
                return _record(  # type: ignore[no-any-return]
                    Stage,
                    self._update(
                        _stage_key(stage.run_id, stage.stage),
                        {**sets, "spot_stats_version": stage.spot_stats_version + 1},
                        condition="attribute_exists(#pk) AND "
                        "(attribute_not_exists(#spot_stats_version) OR #spot_stats_version = :read)",
                        condition_values={"read": stage.spot_stats_version},
                    ),
                )
            except LedgerConflict:
                if tries == SPOT_STATS_TRIES:
                    break
                current = self.get_stage(stage.run_id, stage.stage)
                if current is None:  # the stage is gone: nothing to learn for
                    return stage
                stage = current
        raise LedgerContended(
            f"{stage.run_id}/{stage.stage}: Spot statistics written by others at each of {SPOT_STATS_TRIES} tries"
        )

    def end_stage(self, run_id: str, stage: str, failure: str) -> Stage | None:
        """Ends a running stage because its run ended without it (failed, aborted, timed out): FAILED with `failure`.
        None when the stage was not running (it had ended, on its own or by an earlier call)."""
        try:
            return self.settle_stage(run_id, stage, "FAILED", None, failure)
        except LedgerConflict:
            return None

    def mark_answered(self, run_id: str, stage: str) -> None:
        """The state machine knows how the stage ended: it leaves the active index."""
        self._update(_stage_key(run_id, stage), {}, removes=("active", "active_sk"))

    def active_stages(self) -> Iterator[Stage]:
        for item in self._query(
            {
                "IndexName": ACTIVE_INDEX,
                "KeyConditionExpression": "active = :one",
                "ExpressionAttributeValues": {":one": _ACTIVE},
            }
        ):
            yield _record(Stage, item)

    # ------------------------------------------------------------------ attempts and jobs
    def record_attempt(self, attempt: Attempt) -> None:
        """The attempt, its job index and the stage's pointer to it (idempotent: same job id, same items).

        An attempt already recorded with the same job is left as it is: placing it again (the SLA guard finishing a
        placement whose handler died after SubmitJob) must not undo what the job's events recorded since."""
        with contextlib.suppress(LedgerConflict):  # recorded with this job already
            self._put(
                {**_attempt_key(attempt.run_id, attempt.stage, attempt.attempt), **asdict(attempt)},
                ConditionExpression="attribute_not_exists(pk) OR #job_id <> :job_id",
                ExpressionAttributeNames={"#job_id": "job_id"},
                ExpressionAttributeValues={":job_id": attempt.job_id},
            )
        self._put(
            {
                "pk": f"JOB#{attempt.job_id}",
                "sk": "JOB",
                "job_id": attempt.job_id,
                "run_id": attempt.run_id,
                "stage": attempt.stage,
                "attempt": attempt.attempt,
            }
        )
        self._update(
            _stage_key(attempt.run_id, attempt.stage),
            {"job_id": attempt.job_id, "capacity": attempt.capacity},
            removes=("submitting_since",),
            condition="#attempt = :attempt",
            condition_values={"attempt": attempt.attempt},
        )

    def get_attempt(self, run_id: str, stage: str, attempt: int) -> Attempt | None:
        item = self._table.get_item(Key=_attempt_key(run_id, stage, attempt), ConsistentRead=True).get("Item")
        return _record(Attempt, item) if item else None

    def update_attempt(
        self,
        run_id: str,
        stage: str,
        attempt: int,
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
        **sets: Any,
    ) -> Attempt:
        return _record(
            Attempt,
            self._update(  # type: ignore[no-any-return]
                _attempt_key(run_id, stage, attempt), sets, condition=condition, condition_values=condition_values
            ),
        )

    def cancel_attempt(self, run_id: str, stage: str, attempt: int, reason: str, open_only: bool = False) -> bool:
        """Marks an attempt cancelled by the control plane for `reason` (CANCEL_*), before its job is terminated, so
        that the job's end is read as that cancellation. True when it is so marked (now or by an earlier call); False
        when it was marked for another reason first, or (`open_only`) is not marked and its end is recorded already:
        that end is its job's own, acted on by whoever recorded it."""
        condition = "attribute_not_exists(cancel_reason) OR #cancel_reason = :cancel_reason"
        values: dict[str, Any] = {}
        if open_only:
            condition = f"#cancel_reason = :cancel_reason OR (attribute_not_exists(cancel_reason) AND {_NOT_ENDED})"
            values = dict(_NOT_ENDED_VALUES)
        try:
            self.update_attempt(
                run_id, stage, attempt, condition=condition, condition_values=values, cancel_reason=reason
            )
        except LedgerConflict:
            return False
        return True

    def unbill_attempt(
        self, run_id: str, stage: str, attempt: int, unbill: Callable[[Attempt], Mapping[str, Any] | None]
    ) -> Attempt | None:
        """Writes what `unbill` makes of an ended attempt as read: its billing once its time on instances EC2
        interrupted within their first hour is not billed (the attributes to set, `unbilled_instance_ids` grown among
        them), or None when there is nothing to take out (taken out already). Returns the attempt written; None when
        nothing was, or it is not in the ledger, or has not ended (its own end reads what was found).

        The billing is read, changed and written back, and handlers race to do it (two instances of one array found
        unbilled at once): the write is refused when `unbilled_instance_ids` grew since the read, which would
        otherwise undo the other's. The attempt is then read again, up to UNBILL_TRIES times in all; LedgerContended
        after that."""
        for _ in range(UNBILL_TRIES):
            read = self.get_attempt(run_id, stage, attempt)
            if read is None or read.status not in ("SUCCEEDED", "FAILED"):
                return None
            sets = unbill(read)
            if sets is None:
                return None
            # The list only grows: the same size is the same list (an item written before it was kept has none).
            unchanged = "size(#unbilled_instance_ids) = :unbilled_read"
            if not read.unbilled_instance_ids:
                unchanged = f"(attribute_not_exists(#unbilled_instance_ids) OR {unchanged})"
            try:
                return self.update_attempt(
                    run_id,
                    stage,
                    attempt,
                    condition=f"#status IN (:succeeded, :failed) AND {unchanged}",
                    condition_values={
                        "succeeded": "SUCCEEDED",
                        "failed": "FAILED",
                        "unbilled_read": len(read.unbilled_instance_ids),
                    },
                    **sets,
                )
            except LedgerConflict:
                continue
        raise LedgerContended(f"{run_id}/{stage}/{attempt}: billing written by others at each of {UNBILL_TRIES} tries")

    def update_open_attempt(self, run_id: str, stage: str, attempt: int, **sets: Any) -> Attempt:
        """Updates an attempt that has not ended yet; LedgerConflict once it has (a late or repeated event)."""
        return self.update_attempt(
            run_id,
            stage,
            attempt,
            condition=_NOT_ENDED,
            condition_values=_NOT_ENDED_VALUES,
            **sets,
        )

    def record_shard_failure(
        self, run_id: str, stage: str, attempt: int, failure: str, over: Iterable[str] = ()
    ) -> bool:
        """Records why a shard of an open array attempt failed, where no shard's failure is recorded yet or the one
        recorded is among `over` (those this failure takes the place of), in one conditional write: shards' ends
        handled at once never overwrite a failure they should not. False when the write was refused (another
        failure stands, or the attempt has ended)."""
        replaceable = sorted(set(over))
        values: dict[str, Any] = {**_NOT_ENDED_VALUES}
        values |= {f"over{index}": name for index, name in enumerate(replaceable)}
        unset = "attribute_not_exists(#shard_failure)"
        if replaceable:
            unset += f" OR #shard_failure IN ({', '.join(f':over{index}' for index in range(len(replaceable)))})"
        try:
            self.update_attempt(
                run_id,
                stage,
                attempt,
                condition=f"{_NOT_ENDED} AND ({unset})",
                condition_values=values,
                shard_failure=failure,
            )
        except LedgerConflict:
            return False
        return True

    def add_attempt_instance(self, run_id: str, stage: str, attempt: int, instance_id: str) -> None:
        """Adds an instance to those the attempt ran on, in one write that reads nothing first: the shards of an array
        start together, each told by its own invocation, and a list read and written back would keep only the last
        writer's instance. An instance already listed (a repeated event) is left as it is."""
        try:
            self._table.update_item(
                Key=_attempt_key(run_id, stage, attempt),
                UpdateExpression="SET #ids = list_append(if_not_exists(#ids, :none), :id)",
                ConditionExpression="attribute_exists(pk) AND NOT contains(#ids, :instance)",
                ExpressionAttributeNames={"#ids": "instance_ids"},
                ExpressionAttributeValues={":none": [], ":id": [instance_id], ":instance": instance_id},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def find_job(self, job_id: str) -> JobRef | None:
        """The job's run, stage and attempt, read strongly consistent: a job's first events come seconds after it was
        recorded, and a job adopted from its own event is looked up right after recording it."""
        item = self._table.get_item(Key={"pk": f"JOB#{job_id}", "sk": "JOB"}, ConsistentRead=True).get("Item")
        return _record(JobRef, item) if item else None

    def index_instance(self, instance_id: str, ref: JobRef) -> None:
        self._put({"pk": f"INSTANCE#{instance_id}", "sk": f"JOB#{ref.job_id}", **asdict(ref)})

    # The instance's jobs and signals are read strongly consistent: a signal handler writes the signal then reads
    # the jobs, a job's start handler writes the job then reads the signals, so that one of the two sees the other.
    def jobs_on_instance(self, instance_id: str) -> list[JobRef]:
        items = self._query(
            {
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :jobs)",
                "ExpressionAttributeValues": {":pk": f"INSTANCE#{instance_id}", ":jobs": "JOB#"},
                "ConsistentRead": True,
            }
        )
        return [_record(JobRef, item) for item in items]

    def keep_unbilled_instance(self, instance_id: str) -> None:
        """Keeps that EC2 interrupted the instance within its first hour (AWS bills none of its usage), for the
        attempts that ran on it: those whose end is told later read it at their end (`unbilled_among`). Kept as long
        as the instance's jobs are indexed; a repeated write keeps one record."""
        self._put({"pk": f"INSTANCE#{instance_id}", "sk": "UNBILLED", "instance_id": instance_id})

    def unbilled_among(self, instance_ids: Iterable[str]) -> set[str]:
        """Those of the instances kept as interrupted within their first hour, read strongly consistent: an attempt's
        end is written, then this read, while the handler that learns of the interruption keeps it, then reads the
        instance's attempts, so that one of the two sees the other.

        An array's end asks this of up to a thousand instances: BatchGetItem, 100 keys a call. Keys DynamoDB leaves
        unprocessed (throttled) are asked again, at most UNPROCESSED_TRIES times in all, then LedgerContended: the
        event's redelivery asks again."""
        keys = [{"pk": f"INSTANCE#{instance_id}", "sk": "UNBILLED"} for instance_id in sorted(set(instance_ids))]
        found: set[str] = set()
        for start in range(0, len(keys), BATCH_GET_KEYS):
            request = {self._table.name: {"Keys": keys[start : start + BATCH_GET_KEYS], "ConsistentRead": True}}
            for tried in range(UNPROCESSED_TRIES):
                if tried:
                    time.sleep(UNPROCESSED_BACKOFF_SECONDS * 2 ** (tried - 1))  # as AWS asks of unprocessed keys
                answer = self._table.meta.client.batch_get_item(RequestItems=request)
                # A call whose every key was left unprocessed may name no table in its Responses.
                answered = answer.get("Responses", {}).get(self._table.name, [])
                found.update(item["pk"].removeprefix("INSTANCE#") for item in answered)
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise LedgerContended(f"unbilled instances: keys left unprocessed at each of {UNPROCESSED_TRIES} tries")
        return found

    def await_interruption(self, instance_id: str, warned_at: datetime, look_at: datetime) -> None:
        """Keeps that EC2 warned of the instance's interruption at `warned_at`, for the SLA guard to learn from
        `look_at` on whether EC2 carried it out (`awaited_interruptions`). The first warning kept stands: a repeated
        or later one changes nothing."""
        body = {
            "instance_id": instance_id,
            "warned_at": format_time(warned_at),
            "active": _AWAITED_INTERRUPTION,
            "active_sk": format_time(look_at),
        }
        with contextlib.suppress(LedgerConflict):
            self._put_new(_awaited_interruption_key(instance_id), body)

    def awaited_interruptions(self, now: datetime) -> Iterator[AwaitedInterruption]:
        """The instances whose awaited interruption is due to be looked at by `now`, from the sparse index (paged)."""
        query: dict[str, Any] = {
            "IndexName": ACTIVE_INDEX,
            "KeyConditionExpression": "#active = :awaited AND #active_sk <= :now",
            "ExpressionAttributeNames": {"#active": "active", "#active_sk": "active_sk"},
            "ExpressionAttributeValues": {":awaited": _AWAITED_INTERRUPTION, ":now": format_time(now)},
        }
        for item in self._query(query):
            yield _record(AwaitedInterruption, item)

    def end_awaited_interruption(self, instance_id: str) -> None:
        """How EC2 ended the instance is known (or can no longer be): it is awaited no more."""
        self._table.delete_item(Key=_awaited_interruption_key(instance_id))

    def keep_instance_signal(self, signal: InstanceSignal, event_id: str, kept_for: timedelta) -> None:
        """Keeps a Spot signal for an instance, for a job whose start is told later (EventBridge keeps no order
        between EC2's events and Batch's), for `kept_for` and a day (DynamoDB's expiry is lazy). A repeated event
        keeps one record."""
        sk = f"SIGNAL#{signal.signalled_at}#{event_id or uuid.uuid4().hex}"
        expires_at = int((parse_time(signal.signalled_at) + kept_for + timedelta(days=1)).timestamp())
        self._put({"pk": f"INSTANCE#{signal.instance_id}", "sk": sk, **asdict(signal)}, expires_at=expires_at)

    def instance_signals(self, instance_id: str, since: datetime) -> list[InstanceSignal]:
        """The signals kept for an instance that were given at `since` or later."""
        items = self._query(
            {
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :since AND :last",
                "ExpressionAttributeValues": {
                    ":pk": f"INSTANCE#{instance_id}",
                    ":since": f"SIGNAL#{format_time(since)}",
                    ":last": "SIGNAL#\uffff",
                },
            }
        )
        return [_record(InstanceSignal, item) for item in items]

    # ------------------------------------------------------------------ notifications
    # NOTIFIED#<key> holds `notice` = "claimed" (with `claimed_at`, the claimer's `claim_id` and `lease_until`) while a
    # handler sends the notification, then "sent". A record without `notice` was written before claims were leases:
    # it reads as sent. A claim without `lease_until` was written before leases followed the holder's invocation.
    # A claim given the notice it sends (`notice_body`) is in the active-stages index until it is sent or given back,
    # so that the SLA guard sends it when its claimer died and no retry came (claims written before that carry none
    # and stay out of the index).
    def claim_notification(
        self, dedupe_key: str, holder_ends_at: datetime | None = None, notice: str | None = None
    ) -> str | None:
        """A claim id when the caller is to send the notification; None when it was sent. NotificationClaimHeld when
        another invocation holds a claim on it whose lease has not ended: that one may still send it, or may have
        died before sending, which the caller cannot tell; it is to retry from the lease's end on.

        The lease ends when the claiming invocation must have ended, `holder_ends_at` (its Lambda deadline), or after
        `NOTIFICATION_LEASE` when that is not given. A claim past its lease was left by a handler that died before
        sending: it is taken over, so that the retry sends the notice (a retry after a timeout at once, one after a
        crash from the crashed invocation's deadline on).

        `notice` (what is to be sent, as the notifier writes it) is kept with the claim, and the claim listed in the
        active-stages index by its lease's end, for `lapsed_notice_claims`."""
        now = utc_now()
        claim_id = uuid.uuid4().hex
        lease_until = now + NOTIFICATION_LEASE
        if holder_ends_at is not None:
            lease_until = min(lease_until, holder_ends_at + CLAIM_CLOCK_MARGIN)
        # Rounded up to the second format_time keeps: a lease never ends before its holder.
        lease_text = format_time(lease_until + timedelta(microseconds=999_999))
        item = {
            **_notification_key(dedupe_key),
            "notice": NOTICE_CLAIMED,
            "claimed_at": format_time(now),
            "claim_id": claim_id,
            "lease_until": lease_text,
        }
        if notice is not None:
            item |= {"notice_body": notice, "active": _CLAIMED_NOTICE, "active_sk": lease_text}
        try:
            self._put(
                item,
                now,
                # The own claim id: the SDK sends a request again when its answer was lost (the write may be done).
                # Times are compared as text: format_time writes one fixed-width UTC form.
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #claim_id = :claim_id OR (#notice = :claimed AND ("
                    "#lease_until < :now OR (attribute_not_exists(#lease_until) AND #claimed_at < :stale)))"
                ),
                ExpressionAttributeNames={
                    "#claim_id": "claim_id",
                    "#notice": "notice",
                    "#claimed_at": "claimed_at",
                    "#lease_until": "lease_until",
                },
                ExpressionAttributeValues={
                    ":claim_id": claim_id,
                    ":claimed": NOTICE_CLAIMED,
                    ":now": format_time(now),
                    ":stale": format_time(now - NOTIFICATION_LEASE),
                },
                # The record that refused the claim says which it is: sent, or claimed under a lease (no second read).
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except LedgerConflict as conflict:
            record = conflict.current or {}
            if record.get("notice", NOTICE_SENT) != NOTICE_CLAIMED:
                return None
            raise NotificationClaimHeld(dedupe_key, _claim_lapses_at(record)) from None
        return claim_id

    def mark_notification_sent(self, dedupe_key: str, claim_id: str) -> bool:
        """Settles a claimed notification as sent; False when the claim is no longer the caller's (taken over). The
        record stays, for dedupe, without the notice it carried and out of the index."""
        try:
            self._update(
                _notification_key(dedupe_key),
                {"notice": NOTICE_SENT, "notified_at": format_time(utc_now())},
                removes=_NOTICE_LISTING,
                condition="#claim_id = :claim_id",
                condition_values={"claim_id": claim_id},
            )
        except LedgerConflict:
            return False
        return True

    def release_notification(self, dedupe_key: str, claim_id: str) -> None:
        """Gives back a claim whose notification could not be sent, so that a retry sends it at once (a claim taken
        over meanwhile is left alone). The record goes, and with it its place in the index."""
        try:
            self._table.delete_item(
                Key=_notification_key(dedupe_key),
                ConditionExpression="#claim_id = :claim_id",
                ExpressionAttributeNames={"#claim_id": "claim_id"},
                ExpressionAttributeValues={":claim_id": claim_id},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def lapse_notification(self, dedupe_key: str, claim_id: str) -> bool:
        """Gives back a claim whose notice could not be sent, keeping the notice: its lease ends now, so that a retry
        takes it over at once, or a later pass of the SLA guard (`lapsed_notice_claims`). False when the claim is no
        longer the caller's."""
        lapsed = format_time(utc_now() - timedelta(seconds=1))
        try:
            self._update(
                _notification_key(dedupe_key),
                {"lease_until": lapsed, "active_sk": lapsed},
                condition="#claim_id = :claim_id AND #notice = :claimed AND attribute_exists(#notice_body)",
                condition_values={"claim_id": claim_id, "claimed": NOTICE_CLAIMED},
            )
        except LedgerConflict:
            return False
        return True

    def unlist_notification(self, dedupe_key: str, claim_id: str) -> bool:
        """Takes a lapsed claim whose stored notice can never be sent out of the index, dropping that notice; the
        claim stays lapsed, for a retry of its event to take over. False when the claim is no longer that one
        (taken over, sent) or its lease has not ended (the index lags the table)."""
        try:
            self._update(
                _notification_key(dedupe_key),
                {},
                removes=_NOTICE_LISTING,
                condition="#claim_id = :claim_id AND #notice = :claimed AND #lease_until < :now",
                condition_values={"claim_id": claim_id, "claimed": NOTICE_CLAIMED, "now": format_time(utc_now())},
            )
        except LedgerConflict:
            return False
        return True

    def lapsed_notice_claims(self, limit: int | None = None) -> Iterator[NoticeClaim]:
        """The claimed notices whose lease has ended, with what their claimers stored to send, from the sparse index
        (paged; eventually consistent: a claim listed may have been taken over or sent since, which a take-over
        through `claim_notification` finds). `limit` is a page's size."""
        query: dict[str, Any] = {
            "IndexName": ACTIVE_INDEX,
            "KeyConditionExpression": "#active = :notice AND #active_sk < :now",
            "ExpressionAttributeNames": {"#active": "active", "#active_sk": "active_sk"},
            "ExpressionAttributeValues": {":notice": _CLAIMED_NOTICE, ":now": format_time(utc_now())},
        }
        if limit is not None:
            query["Limit"] = limit
        for item in self._query(query):
            yield NoticeClaim(
                dedupe_key=str(item["pk"]).removeprefix("NOTIFIED#"),
                claim_id=str(item.get("claim_id", "")),
                notice=_from_dynamo(item.get("notice_body")),
            )

    def notification_sent(self, dedupe_key: str) -> bool:
        item = self._table.get_item(Key=_notification_key(dedupe_key), ConsistentRead=True).get("Item")
        return item is not None and item.get("notice", NOTICE_SENT) == NOTICE_SENT

    def record_notifications(self, run_id: str, entries: list[dict[str, str]]) -> None:
        """What was told, per channel, for the run report."""
        now = format_time(utc_now())
        for entry in entries:
            # The entry's digest keeps two notices of one kind told in the same second apart (e.g. two stages'
            # notices sent late in one pass); the same entry written again stays one.
            digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode("utf-8")).hexdigest()[:12]
            sk = f"NOTE#{now}#{entry.get('kind')}#{entry.get('channel')}#{digest}"
            self._put({"pk": f"RUN#{run_id}", "sk": sk, **entry})

    def run_notifications(self, run_id: str) -> list[dict[str, str]]:
        items = self._query(
            {
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :note)",
                "ExpressionAttributeValues": {":pk": f"RUN#{run_id}", ":note": "NOTE#"},
            }
        )
        return [{k: v for k, v in _from_dynamo(i).items() if k in ("channel", "kind", "text", "status")} for i in items]

    def _query(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        while True:
            page = self._table.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs = {**kwargs, "ExclusiveStartKey": page["LastEvaluatedKey"]}
