"""Spot signals for an instance no job is known to run on yet are kept, and acted on when the job's start is told
(EventBridge keeps no order between EC2's events and Batch's)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError
from sample_events import load_event
from spot_checkpoint.store import CheckpointStore
from spot_hpc.clock import format_time, utc_now
from spot_hpc.events import BatchJobDetail
from spot_hpc.interruptions import SIGNAL_KEPT_FOR, act_on_kept_signals, on_spot_signal
from spot_hpc.job_events import apply_job_state
from spot_hpc.ledger import Attempt, InstanceSignal, JobRef, Ledger, Run, Stage

ACCOUNT = "123456789012"
INSTANCE = "i-0aaaaaaaaaaaaaaa1"


def _signal(at, signal: str = "interruption warning") -> InstanceSignal:
    return InstanceSignal("i-1", signal, warning=signal == "interruption warning", signalled_at=format_time(at))


def test_kept_signals_are_apart_from_the_jobs_on_the_instance(ledger: Ledger, utc_clock):
    # GIVEN a job on an instance, a warning and a rebalance recommendation for it, and one for another instance
    ref = JobRef("job-1", "r1", "preprocess", 1)
    ledger.index_instance("i-1", ref)
    ledger.keep_instance_signal(_signal(utc_clock.now - timedelta(minutes=3)), "e1", SIGNAL_KEPT_FOR)
    ledger.keep_instance_signal(_signal(utc_clock.now, "rebalance recommendation"), "e2", SIGNAL_KEPT_FOR)
    ledger.keep_instance_signal(
        InstanceSignal("i-2", "interruption warning", True, format_time(utc_clock.now)), "e3", SIGNAL_KEPT_FOR
    )
    # WHEN the instance's jobs and its signals of the last two minutes are read
    jobs = ledger.jobs_on_instance("i-1")
    recent = ledger.instance_signals("i-1", since=utc_clock.now - timedelta(minutes=2))
    # THEN each read gets its own kind, the signals from `since` on only
    assert jobs == [ref]
    assert recent == [_signal(utc_clock.now, "rebalance recommendation")]


def test_a_repeated_signal_is_kept_once(ledger: Ledger, utc_clock):
    # GIVEN one warning event delivered twice (EventBridge delivers at least once)
    for _ in range(2):
        ledger.keep_instance_signal(_signal(utc_clock.now), "e1", SIGNAL_KEPT_FOR)
    # WHEN the instance's signals are read
    kept = ledger.instance_signals("i-1", since=utc_clock.now - SIGNAL_KEPT_FOR)
    # THEN there is one
    assert kept == [_signal(utc_clock.now)]


def test_a_signal_older_than_the_window_is_not_acted_on_when_a_job_starts(ledger: Ledger, utc_clock):
    # GIVEN a warning kept longer ago than a start event may come late, and one kept a minute ago
    ledger.keep_instance_signal(_signal(utc_clock.now - SIGNAL_KEPT_FOR - timedelta(minutes=1)), "old", SIGNAL_KEPT_FOR)
    ledger.keep_instance_signal(_signal(utc_clock.now - timedelta(minutes=1)), "new", SIGNAL_KEPT_FOR)
    # WHEN a job's start on the instance is recorded (its run is not in this ledger: the answer says so)
    ref = JobRef("job-1", "r1", "preprocess", 1)
    acted = act_on_kept_signals(SimpleNamespace(ledger=ledger), ref, ["i-1"])  # type: ignore[arg-type]
    # THEN only the recent warning is acted on
    assert acted == [{"job_id": "job-1", "action": "none", "reason": "job no longer current"}]


def _warning(time: str) -> dict:
    event = load_event("spot_interruption_warning", **{"instance-id": INSTANCE})
    event["time"] = time
    return event


def test_a_warning_for_an_instance_that_ran_an_earlier_job_is_kept_for_the_job_starting_there(ledger, utc_clock):
    # GIVEN an instance that ran an earlier job of ours (Batch reuses instances), whose new job's RUNNING is not
    # told yet
    ledger.index_instance(INSTANCE, JobRef("job-old", "run-old", "preprocess", 1))
    svc = SimpleNamespace(ledger=ledger)
    # WHEN the interruption warning comes first
    answer = on_spot_signal(svc, _warning(format_time(utc_clock.now)), ACCOUNT)  # type: ignore[arg-type]
    # THEN it finds the old job no longer current, and is kept for the new job's start all the same
    assert [job["reason"] for job in answer["jobs"]] == ["job no longer current"]
    assert [kept.signal for kept in ledger.instance_signals(INSTANCE, utc_clock.now - SIGNAL_KEPT_FOR)] == [
        "interruption warning"
    ]


def test_a_warning_racing_its_jobs_start_is_seen_by_one_of_the_two_handlers(ledger, utc_clock, monkeypatch):
    # GIVEN the job's RUNNING recorded (its instance indexed, then the kept signals read) while the warning's handler
    # runs, right before it reads the instance's jobs
    svc = SimpleNamespace(ledger=ledger)
    ref = JobRef("job-new", "run-new", "preprocess", 1)
    running_saw: list[dict] = []
    real_jobs_on_instance = Ledger.jobs_on_instance

    def running_recorded_meanwhile(self: Ledger, instance_id: str) -> list[JobRef]:
        ledger.index_instance(instance_id, ref)
        running_saw.extend(act_on_kept_signals(svc, ref, [instance_id]))  # type: ignore[arg-type]
        return real_jobs_on_instance(self, instance_id)

    monkeypatch.setattr(Ledger, "jobs_on_instance", running_recorded_meanwhile)
    # WHEN the warning is handled
    answer = on_spot_signal(svc, _warning(format_time(utc_clock.now)), ACCOUNT)  # type: ignore[arg-type]
    # THEN both saw the job and the warning together (the signal is kept before the jobs are read): neither lost it
    assert answer["status"] == "handled" and len(running_saw) == 1


@pytest.mark.parametrize("time", ["2026-01-05T06:00:00", "2026-01-05T07:00:00+01:00"])
def test_a_warning_whose_time_has_no_zone_or_another_one_is_kept_at_that_time_in_utc(ledger, utc_clock, time):
    # GIVEN a warning given by hand with a time without a zone (EventBridge always says "Z"), or with an offset
    utc_clock.now = utc_clock.now.replace(hour=6, minute=1)
    # WHEN it is handled
    answer = on_spot_signal(SimpleNamespace(ledger=ledger), _warning(time), ACCOUNT)  # type: ignore[arg-type]
    # THEN it is kept at 06:00 UTC, not a crash on comparing it with the clock
    kept = ledger.instance_signals(INSTANCE, utc_clock.now - SIGNAL_KEPT_FOR)
    assert answer["status"] == "ignored" and [k.signalled_at for k in kept] == ["2026-01-05T06:00:00Z"]


class QueryRecordingTable:
    """A table that answers every query with no items and keeps what was asked (fakes over mocks)."""

    def __init__(self) -> None:
        self.queries: list[dict] = []

    def query(self, **request: object) -> dict:
        self.queries.append(request)
        return {"Items": []}


def test_an_instances_jobs_and_signals_are_read_strongly_consistent(utc_clock):
    # GIVEN a ledger on a table that records its queries
    table = QueryRecordingTable()
    ledger = Ledger(table)
    # WHEN the instance's jobs and its signals are read (each handler writes its side first, then reads the other's)
    ledger.jobs_on_instance(INSTANCE)
    ledger.instance_signals(INSTANCE, utc_clock.now - SIGNAL_KEPT_FOR)
    # THEN both reads are strongly consistent: an eventually consistent one could miss the other handler's write
    assert [query.get("ConsistentRead") for query in table.queries] == [True, True]


def test_an_attempts_instances_are_added_without_losing_a_concurrent_one_or_listing_one_twice(ledger: Ledger):
    # GIVEN an array's attempt recorded with no instance yet
    started = "2026-01-05T00:00:00Z"
    ledger.create_run(
        Run("r1", "ingest", "incoming/a.csv", "v1", started, 6.0, started, {}), [Stage("r1", "hpc", 1, 2.0, True, 3)]
    )
    ledger.claim_attempt("r1", "hpc", 0)
    ledger.record_attempt(Attempt("r1", "hpc", 1, "array-1", "spot-queue", "spot", 3, started))
    # WHEN three shards' starts add their instances, one start told twice
    for instance_id in ("i-1", "i-2", "i-2", "i-3"):
        ledger.add_attempt_instance("r1", "hpc", 1, instance_id)
    # AND an instance is added to an attempt that was never recorded
    ledger.add_attempt_instance("r1", "hpc", 2, "i-4")
    # THEN the attempt lists each instance once, in the order they started, and no attempt is made up
    recorded = ledger.get_attempt("r1", "hpc", 1)
    assert recorded is not None and recorded.instance_ids == ["i-1", "i-2", "i-3"]
    assert ledger.get_attempt("r1", "hpc", 2) is None


# ---------------------------------------------------------------------- a job's start acting on the kept signals
RUN_ID = "run-1"


class ContainerInstances:
    """ECS and EC2 as the Batch handler asks them: each container instance ARN names its EC2 instance, which EC2
    describes no further (its price stays the placement's)."""

    def instance_ids(self, arns: list[str]) -> list[str]:
        return [arn.rsplit("/", 1)[-1] for arn in arns]

    def describe_instances(self, instance_ids: object) -> dict:
        return {}


class FlatPrices:
    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **_: object) -> float:
        return (0.3 if capacity == "spot" else 1.0) * nodes


def _signal_services(ledger: Ledger) -> SimpleNamespace:
    """What the Spot signal and Batch handlers use here: the ledger and the checkpoint bucket on moto, and a run whose
    four-hour preprocess has a roomy deadline (a signal has its job checkpoint, on Spot)."""
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ingest")
    settings = SimpleNamespace(
        region="us-east-1",
        changeover_hours=0.25,
        spot_interruption_bucket=4,
        spot_job_queue="spot-queue",
        spot_instance_type="c6i.4xlarge",
        on_demand_instance_type="c6i.4xlarge",
    )
    _create_run(ledger, RUN_ID)
    return SimpleNamespace(settings=settings, ledger=ledger, s3=s3, batch=ContainerInstances(), prices=FlatPrices())


def _create_run(ledger: Ledger, run_id: str) -> None:
    """A run of a four-hour preprocess, started now, due in 40 hours."""
    now = format_time(utc_now())
    deadline = format_time(utc_now() + timedelta(hours=40))
    ledger.create_run(
        Run(run_id, "ingest", f"incoming/{run_id}.csv", "v1", deadline, 40.0, now, {}),
        [Stage(run_id, "preprocess", 0, 4.0, True, 1)],
    )


def _checkpoints(run_id: str) -> str:
    return f"s3://ingest/checkpoints/{run_id}/preprocess/"


def _placed_on_spot(svc: SimpleNamespace, attempt: int, job_id: str, run_id: str = RUN_ID) -> None:
    svc.ledger.claim_attempt(run_id, "preprocess", attempt - 1, checkpoint_uri=_checkpoints(run_id), capacity="spot")
    svc.ledger.record_attempt(
        Attempt(run_id, "preprocess", attempt, job_id, "spot-queue", "spot", 1, format_time(utc_now()), 0.3)
    )


def _running(svc: SimpleNamespace, job_id: str, started, instance_id: str = INSTANCE) -> dict:
    """The job's RUNNING on the instance, told now."""
    arn = f"arn:aws:ecs:us-east-1:{ACCOUNT}:container-instance/spot-hpc/{instance_id}"
    detail = {
        "jobId": job_id,
        "jobName": job_id,
        "jobQueue": "spot-queue",
        "status": "RUNNING",
        "startedAt": int(started.timestamp() * 1000),
        "container": {"containerInstanceArn": arn},
    }
    return apply_job_state(svc, BatchJobDetail.model_validate(detail))  # type: ignore[arg-type]


def _requested_for_attempt(svc: SimpleNamespace) -> int | None:
    """The attempt the stage's checkpoint request is for; None when none was made."""
    request = CheckpointStore(svc.s3, _checkpoints(RUN_ID)).pending_request()
    return None if request is None else request.attempt


def _job_a_running_half_an_hour(ledger: Ledger, utc_clock) -> SimpleNamespace:
    """Run run-1's preprocess, Spot job "job-a" of attempt 1, running on the instance for the last half hour."""
    svc = _signal_services(ledger)
    _placed_on_spot(svc, 1, "job-a")
    _running(svc, "job-a", utc_clock.now)
    utc_clock.advance(minutes=30)
    return svc


def _signal_event(name: str, at) -> dict:
    event = load_event(name, **{"instance-id": INSTANCE})
    event["time"] = format_time(at)
    return event


def test_a_rebalance_recommendation_is_not_acted_on_again_for_a_job_that_started_after_it(ledger, utc_clock):
    # GIVEN a Spot job on an instance EC2 recommends rebalancing, which the recommendation has checkpoint; the job
    # then ends (reclaimed after all, or its own error) and its next attempt, placed on Spot again, is started by
    # Batch on the same instance (still up) a minute later
    svc = _job_a_running_half_an_hour(ledger, utc_clock)
    answer = on_spot_signal(svc, _signal_event("rebalance_recommendation", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    asked_first = _requested_for_attempt(svc)
    _placed_on_spot(svc, 2, "job-b")
    utc_clock.advance(minutes=1)
    # WHEN the next attempt's start is told
    started = _running(svc, "job-b", utc_clock.now)
    # THEN the recommendation, acted on for the job it was given for, is not acted on for the one that started after
    # it, which has no progress of its own to save yet
    assert [job["action"] for job in answer["jobs"]] == ["checkpoint"] and asked_first == 1
    assert started["signals"] == []
    assert _requested_for_attempt(svc) == 1


@pytest.mark.parametrize("name", ["rebalance_recommendation", "spot_interruption_warning"])
def test_a_signal_given_while_a_job_ran_is_acted_on_when_its_start_is_told_late(ledger, utc_clock, name):
    # GIVEN a Spot job that started on an instance, whose RUNNING is not told yet, and EC2's signal for the instance
    # a minute into its run
    svc = _signal_services(ledger)
    _placed_on_spot(svc, 1, "job-a")
    started_at = utc_clock.now
    utc_clock.advance(minutes=1)
    told_first = on_spot_signal(svc, _signal_event(name, utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    # WHEN its start is told after the signal
    utc_clock.advance(minutes=1)
    started = _running(svc, "job-a", started_at)
    # THEN the signal is acted on: the job is asked to checkpoint
    assert told_first["status"] == "ignored"
    assert [signal["action"] for signal in started["signals"]] == ["checkpoint"]
    assert _requested_for_attempt(svc) == 1


def test_an_interruption_warning_given_before_a_job_started_on_the_instance_is_acted_on(ledger, utc_clock):
    # GIVEN EC2's interruption warning for an instance, and a Spot job Batch started there within its two minutes
    svc = _signal_services(ledger)
    _placed_on_spot(svc, 1, "job-a")
    on_spot_signal(svc, _signal_event("spot_interruption_warning", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    utc_clock.advance(seconds=30)
    # WHEN its start is told
    started = _running(svc, "job-a", utc_clock.now)
    # THEN the warning is acted on: the instance goes with the job on it
    assert [signal["action"] for signal in started["signals"]] == ["checkpoint"]
    assert _requested_for_attempt(svc) == 1


class SlowDownOn:
    """S3 refusing puts under one prefix (SlowDown past the client's retries), the rest passed to moto."""

    def __init__(self, s3: object, prefix: str) -> None:
        self._s3 = s3
        self._prefix = prefix

    def __getattr__(self, name: str) -> object:
        return getattr(self._s3, name)

    def put_object(self, **request: object) -> dict:
        if str(request["Key"]).startswith(self._prefix):
            raise ClientError(
                {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "PutObject"
            )
        return self._s3.put_object(**request)  # type: ignore[attr-defined, no-any-return]


def test_a_warning_acts_on_every_job_on_its_instance_and_awaits_it_when_one_jobs_checkpoint_request_fails(
    ledger, utc_clock
):
    # GIVEN two Spot jobs of two runs that Batch placed on one instance, and S3 refusing the first run's checkpoint
    # request (its prefix throttled past the client's retries)
    svc = _signal_services(ledger)
    _create_run(ledger, "run-2")
    _placed_on_spot(svc, 1, "job-b", run_id="run-2")
    _placed_on_spot(svc, 1, "job-a")
    _running(svc, "job-a", utc_clock.now)
    _running(svc, "job-b", utc_clock.now)
    svc.s3 = SlowDownOn(svc.s3, f"checkpoints/{RUN_ID}/")
    utc_clock.advance(minutes=20)
    # WHEN EC2's interruption warning for the instance is handled
    with pytest.raises(ClientError):
        on_spot_signal(svc, _signal_event("spot_interruption_warning", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    # THEN the other run's job is asked to checkpoint all the same, and the instance's interruption is awaited (its
    # first hour may be unbilled); the handler still fails, so that the event's retry asks the first job again
    assert CheckpointStore(svc.s3, _checkpoints("run-2")).pending_request() is not None
    assert [item.instance_id for item in ledger.awaited_interruptions(utc_clock.now + timedelta(minutes=2))] == [
        INSTANCE
    ]


def test_a_rebalance_recommendations_retry_leaves_a_job_that_started_on_the_instance_after_it(ledger, utc_clock):
    # GIVEN a rebalance recommendation that had the Spot job on its instance checkpoint, and failed after (another
    # job there could not be acted on); the job then ended and its next attempt started on the same instance
    svc = _job_a_running_half_an_hour(ledger, utc_clock)
    recommendation = _signal_event("rebalance_recommendation", utc_clock.now)
    on_spot_signal(svc, recommendation, ACCOUNT)  # type: ignore[arg-type]
    _placed_on_spot(svc, 2, "job-b")
    utc_clock.advance(minutes=1)
    _running(svc, "job-b", utc_clock.now)
    # WHEN Lambda retries the recommendation a minute later
    utc_clock.advance(minutes=1)
    retried = on_spot_signal(svc, recommendation, ACCOUNT)  # type: ignore[arg-type]
    # THEN the job that started after it is not asked to checkpoint
    assert {job["job_id"]: job["action"] for job in retried["jobs"]} == {"job-a": "none", "job-b": "none"}
    assert _requested_for_attempt(svc) == 1


def test_a_rebalance_recommendation_asks_its_jobs_to_checkpoint_and_go_on(ledger, utc_clock):
    # GIVEN a Spot job running on an instance, with a roomy deadline
    svc = _job_a_running_half_an_hour(ledger, utc_clock)
    # WHEN EC2 recommends rebalancing the instance (at risk, not yet going)
    answer = on_spot_signal(svc, _signal_event("rebalance_recommendation", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    # THEN the job is asked to save its progress and work on, not to stop: a stop would be read as a reclaim, told as
    # a Spot interruption and learnt as one, and its next attempt would start as likely as not on the same instance
    request = CheckpointStore(svc.s3, _checkpoints(RUN_ID)).pending_request()
    assert [job["action"] for job in answer["jobs"]] == ["checkpoint"]
    assert request is not None and (request.attempt, request.stop) == (1, False)


def test_a_rebalance_recommendation_after_a_warning_leaves_the_warnings_request_to_stop(ledger, utc_clock):
    # GIVEN a Spot job whose instance EC2 warned of its interruption: the job is asked to checkpoint and stop
    svc = _job_a_running_half_an_hour(ledger, utc_clock)
    on_spot_signal(svc, _signal_event("spot_interruption_warning", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    warned = CheckpointStore(svc.s3, _checkpoints(RUN_ID)).pending_request()
    # WHEN a rebalance recommendation for the instance is handled after it (EventBridge keeps no order)
    utc_clock.advance(seconds=10)
    on_spot_signal(svc, _signal_event("rebalance_recommendation", utc_clock.now), ACCOUNT)  # type: ignore[arg-type]
    # THEN the request to stop stands: one to go on would have replaced it before the job saw it
    request = CheckpointStore(svc.s3, _checkpoints(RUN_ID)).pending_request()
    assert warned is not None and warned.stop and request == warned
