"""A stage's Spot statistics are read, added to and written back whole, by handlers that race (EventBridge delivers
at least once and in any order, and Lambdas run at once): what each learnt stays learnt."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import pytest
from spot_hpc.clock import format_time
from spot_hpc.events import BatchJobDetail
from spot_hpc.job_events import _learn_spot, _track_spot_wait, apply_job_state
from spot_hpc.ledger import CANCEL_REQUEUE, SPOT_STATS_TRIES, Attempt, JobRef, Ledger, LedgerContended, Run, Stage
from spot_hpc.placement import end_spot_wait, start_spot_wait
from spot_hpc.policy import SpotStats
from spot_hpc.run_report import FailureClass

WAIT_HOURS = 1.0  # the Spot job waited RUNNABLE this long for capacity ...
RUN_HOURS = 2.0  # ... then ran this long before EC2 took its instance back


def _services(ledger: Ledger) -> SimpleNamespace:
    return SimpleNamespace(ledger=ledger, settings=SimpleNamespace(changeover_hours=0.25, spot_interruption_bucket=4))


def _waiting_stage(ledger: Ledger, utc_clock) -> Stage:
    """A stage whose Spot job waited for capacity until now (`utc_clock`), as a handler reads it."""
    waited_from = utc_clock.now - timedelta(hours=WAIT_HOURS)
    run = Run("r1", "b", "incoming/a.csv", "v1", format_time(waited_from + timedelta(hours=12)), 12.0, "", {})
    stage = Stage("r1", "preprocess", 0, 4.0, True, 1, attempt=1, capacity="spot")
    stage.spot_waiting_since = format_time(waited_from)
    ledger.create_run(run, [stage])
    read = ledger.get_stage("r1", "preprocess")
    assert read is not None
    return read


def _reclaimed(utc_clock) -> Attempt:
    """The stage's Spot attempt: started now (which ended the wait), reclaimed after RUN_HOURS."""
    return Attempt(
        "r1",
        "preprocess",
        1,
        "job-1",
        "spot-queue",
        "spot",
        1,
        format_time(utc_clock.now - timedelta(minutes=70)),
        status="FAILED",
        failure_class=FailureClass.SPOT_RECLAIM,
        started_at=format_time(utc_clock.now),
        stopped_at=format_time(utc_clock.now + timedelta(hours=RUN_HOURS)),
    )


def _learnt(ledger: Ledger) -> SpotStats:
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None
    return SpotStats.from_dict(stage.spot_stats)


@pytest.mark.parametrize("first", ["start", "end"])
def test_a_jobs_start_and_end_handled_at_once_are_both_learnt(ledger: Ledger, utc_clock, first: str):
    # GIVEN a Spot job's start (which ends the stage's wait for capacity) and its end (a reclaim) handled at once,
    # each handler having read the stage before the other wrote it
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    start = lambda: end_spot_wait(svc, read)  # noqa: E731
    end = lambda: _learn_spot(svc, read, _reclaimed(utc_clock))  # noqa: E731
    # WHEN both write what they learnt, `first` first
    for handled in (start, end) if first == "start" else (end, start):
        handled()
    # THEN the statistics hold both the wait and the run, and the wait is over
    learnt = _learnt(ledger)
    assert (learnt.down_hours, learnt.up_hours, learnt.interruptions) == pytest.approx((WAIT_HOURS, RUN_HOURS, 1))
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and stage.spot_waiting_since is None and stage.spot_learnt_attempt == 1


@pytest.mark.parametrize("repeated", ["start", "end"])
def test_an_event_handled_twice_at_once_is_learnt_once(ledger: Ledger, utc_clock, repeated: str):
    # GIVEN a Spot job's start (or its end) delivered twice, both deliveries handled at once from one read
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    attempt = _reclaimed(utc_clock)
    # WHEN both deliveries write what they learnt
    for _ in range(2):
        if repeated == "start":
            end_spot_wait(svc, read)
        else:
            _learn_spot(svc, read, attempt)
    # THEN it was learnt once (the end, its start not told, with the wait up to the start)
    learnt = _learnt(ledger)
    expected = (WAIT_HOURS, 0.0, 0) if repeated == "start" else (WAIT_HOURS, RUN_HOURS, 1)
    assert (learnt.down_hours, learnt.up_hours, learnt.interruptions) == pytest.approx(expected)


def test_a_write_that_loses_to_other_writers_at_every_try_fails_and_its_retry_learns(
    ledger: Ledger, utc_clock, monkeypatch: pytest.MonkeyPatch
):
    # GIVEN a Spot job's start handled while other handlers write the stage's Spot statistics between each of its
    # reads and its write (each of them learning nothing new here)
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    real_read = Ledger.get_stage
    reads: list[int] = []

    def written_by_another(stage: Stage) -> None:
        Ledger.learn_spot(ledger, stage, lambda current: {"spot_stats": current.spot_stats})

    def read_then_written_by_another(self, run_id, stage):
        found = real_read(self, run_id, stage)
        reads.append(found.spot_stats_version)
        written_by_another(found)
        return found

    written_by_another(read)  # since the start's handler read the stage
    # WHEN it writes what it learnt
    with monkeypatch.context() as patched, pytest.raises(LedgerContended, match=f"{SPOT_STATS_TRIES} tries"):
        patched.setattr(Ledger, "get_stage", read_then_written_by_another)
        end_spot_wait(svc, read)
    # THEN it failed (the event is to be delivered again) after reading the stage afresh for each try but the first,
    # and wrote nothing: the stage still waits, and has learnt nothing
    assert len(reads) == SPOT_STATS_TRIES - 1
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and stage.spot_waiting_since == read.spot_waiting_since
    assert _learnt(ledger).down_hours == 0.0
    # AND the event's retry, the others done, learns the wait: once, however often it is delivered
    end_spot_wait(svc, stage)
    end_spot_wait(svc, stage)
    assert _learnt(ledger).down_hours == pytest.approx(WAIT_HOURS)


def _runnable_stage(ledger: Ledger, utc_clock, job_status: str, waiting_since: str | None = None) -> JobRef:
    """A stage whose Spot attempt's job the ledger has as `job_status`; waiting for capacity since `waiting_since`."""
    run = Run("r1", "b", "incoming/a.csv", "v1", format_time(utc_clock.now + timedelta(hours=12)), 12.0, "", {})
    stage = Stage("r1", "preprocess", 0, 4.0, True, 1, attempt=1, capacity="spot", job_id="job-1")
    stage.spot_waiting_since = waiting_since
    ledger.create_run(run, [stage])
    submitted = format_time(utc_clock.now - timedelta(minutes=5))
    ledger.record_attempt(
        Attempt("r1", "preprocess", 1, "job-1", "spot-queue", "spot", 1, submitted, status=job_status)
    )
    return JobRef("job-1", "r1", "preprocess", 1)


@pytest.mark.parametrize(("job_status", "waits"), [("RUNNABLE", True), ("RUNNING", False), ("SUCCEEDED", False)])
def test_a_wait_started_as_the_job_starts_running_is_dropped_unlearnt(ledger: Ledger, utc_clock, job_status, waits):
    # GIVEN a Spot job's RUNNABLE handled at the same moment as its RUNNING (or its end): the RUNNING's handler has
    # recorded the attempt (`job_status`) and read the stage before the RUNNABLE's wrote its wait, so ended none
    svc = _services(ledger)
    ref = _runnable_stage(ledger, utc_clock, job_status)
    # WHEN the RUNNABLE's handler starts the stage's wait for capacity
    _track_spot_wait(svc, ref, "RUNNABLE")
    # THEN the wait stands only while the job still waits: one started as the job runs is dropped, and teaches the
    # policy no gap (before, it went on until the guard's next pass ended it, and was learnt)
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and (stage.spot_waiting_since is not None) is waits
    assert _learnt(ledger).down_hours == 0.0


def test_a_wait_that_began_before_is_left_for_the_running_to_learn(ledger: Ledger, utc_clock):
    # GIVEN a stage whose Spot job has waited an hour, and whose RUNNING the ledger has recorded, its handler about to
    # end the wait, when a repeated RUNNABLE is handled
    svc = _services(ledger)
    waited_from = format_time(utc_clock.now - timedelta(hours=WAIT_HOURS))
    ref = _runnable_stage(ledger, utc_clock, "RUNNING", waiting_since=waited_from)
    # WHEN the RUNNABLE's handler, then the RUNNING's, track the wait
    _track_spot_wait(svc, ref, "RUNNABLE")
    _track_spot_wait(svc, ref, "RUNNING")
    # THEN the wait the stage had is learnt, whole, and is over
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and stage.spot_waiting_since is None
    assert _learnt(ledger).down_hours == pytest.approx(WAIT_HOURS)


def test_an_array_waits_while_a_shard_does_though_others_run(ledger: Ledger, utc_clock):
    # GIVEN a Spot array whose attempt runs (a shard started), when another shard's RUNNABLE is handled
    svc = _services(ledger)
    ref = _runnable_stage(ledger, utc_clock, "RUNNING")
    # WHEN its handler tracks the wait, for that shard
    _track_spot_wait(svc, ref, "RUNNABLE", shard=True)
    # THEN the stage waits for Spot: the array cannot finish without that shard
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and stage.spot_waiting_since is not None


@pytest.mark.parametrize("recorded", ["SUBMITTED", "RUNNABLE"], ids=["told late", "told again"])
def test_a_runnable_of_a_spot_job_requeued_to_on_demand_starts_no_wait(ledger: Ledger, utc_clock, recorded: str):
    # GIVEN a Spot job waiting for capacity (recorded `recorded`) that the SLA guard replaced by an On-Demand one, its
    # wait learnt and its end not told yet
    svc = _services(ledger)
    ref = _runnable_stage(ledger, utc_clock, recorded)
    ledger.cancel_attempt("r1", "preprocess", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("r1", "preprocess", 1, capacity="on-demand")
    placed = format_time(utc_clock.now)
    ledger.record_attempt(Attempt("r1", "preprocess", 2, "job-2", "od-queue", "on-demand", 1, placed))
    # WHEN the Spot job's RUNNABLE is handled then (EventBridge tells it late, or again), and the On-Demand job's wait
    # for its instance ends an hour later (the stage's next placement ends any wait it has)
    detail = {"jobId": ref.job_id, "jobName": "j", "jobQueue": "spot-queue", "status": "RUNNABLE"}
    apply_job_state(svc, BatchJobDetail.model_validate(detail))
    utc_clock.advance(hours=1)
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None
    end_spot_wait(svc, stage)
    # THEN the stage, on On-Demand, never waited for Spot: the policy learnt no gap of the hour
    after = ledger.get_stage("r1", "preprocess")
    assert stage.spot_waiting_since is None and after is not None and after.spot_waiting_since is None
    assert _learnt(ledger).down_hours == 0.0


def test_a_jobs_end_told_before_its_start_ends_the_wait_at_its_start(ledger: Ledger, utc_clock):
    # GIVEN a Spot job that waited WAIT_HOURS for capacity, then ran RUN_HOURS until EC2 took its instance back, whose
    # RUNNING was not told before its end (EventBridge keeps no order): the stage's wait is still open at its end
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    utc_clock.advance(hours=RUN_HOURS)
    reclaimed = _reclaimed(utc_clock)
    reclaimed.started_at = format_time(utc_clock.now - timedelta(hours=RUN_HOURS))
    reclaimed.stopped_at = format_time(utc_clock.now)
    # WHEN its end is learnt, and the next attempt's placement then ends whatever wait the stage still has
    learnt_from = _learn_spot(svc, read, reclaimed)
    end_spot_wait(svc, learnt_from)
    # THEN the wait was learnt as it was, up to the job's start, not as a gap that ran on over the job's run
    learnt = _learnt(ledger)
    assert (learnt.down_hours, learnt.up_hours, learnt.interruptions) == pytest.approx((WAIT_HOURS, RUN_HOURS, 1))
    assert learnt_from.spot_waiting_since is None


def test_a_jobs_end_leaves_a_wait_of_the_attempt_after_it(ledger: Ledger, utc_clock):
    # GIVEN a stage whose next attempt waits for Spot, and the end of the attempt before it told late, whose start
    # Batch's clock puts after the wait's (the wait is stamped by the handler's clock)
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    ledger.update_stage("r1", "preprocess", attempt=2)
    read.attempt = 2
    earlier = _reclaimed(utc_clock)
    # WHEN the earlier attempt's end is learnt
    learnt_from = _learn_spot(svc, read, earlier)
    # THEN the next attempt's wait stands, to be learnt when it ends
    assert learnt_from.spot_waiting_since == read.spot_waiting_since
    assert _learnt(ledger).down_hours == 0.0


@pytest.mark.parametrize(
    ("failure", "interruptions"), [(FailureClass.SPOT_RECLAIM, 1), (FailureClass.S3_UNAVAILABLE, 0)]
)
def test_only_a_reclaim_is_learnt_as_capacity_ending(ledger: Ledger, utc_clock, failure, interruptions):
    # GIVEN a Spot job that ran RUN_HOURS after its wait, and ended reclaimed, or stopped as S3 failed (exit 88)
    svc = _services(ledger)
    read = _waiting_stage(ledger, utc_clock)
    end_spot_wait(svc, read)
    ended = replace(_reclaimed(utc_clock), failure_class=failure)
    # WHEN its end is learnt
    _learn_spot(svc, ledger.get_stage("r1", "preprocess"), ended)
    # THEN its run is learnt as capacity either way, and its end as Spot taking capacity back only for a reclaim
    learnt = _learnt(ledger)
    assert (learnt.up_hours, learnt.interruptions) == pytest.approx((RUN_HOURS, interruptions))


@pytest.mark.parametrize("shard", [False, True], ids=["job", "array"])
def test_a_wait_started_since_the_stage_was_read_is_not_started_again(ledger: Ledger, utc_clock, shard: bool):
    # GIVEN a stage without a wait for Spot as an SLA guard pass read it at its start, Batch then saying its job (or a
    # shard of its array) waits RUNNABLE; a RUNNABLE's handler started the stage's wait as the pass began
    svc = _services(ledger)
    _runnable_stage(ledger, utc_clock, "RUNNABLE")
    read_by_the_pass = ledger.get_stage("r1", "preprocess")
    assert read_by_the_pass is not None and read_by_the_pass.spot_waiting_since is None
    job_attempt = None if shard else 1
    started = start_spot_wait(svc, read_by_the_pass, job_attempt)
    # WHEN the pass comes to the stage two minutes later and starts its wait from what it read
    utc_clock.advance(minutes=2)
    seen_by_the_pass = start_spot_wait(svc, read_by_the_pass, job_attempt)
    # THEN the wait started first stands, and is the one the pass judges: a wait started again would be two minutes
    # shorter, to be learnt so and to be taken for a want of capacity two minutes later
    stage = ledger.get_stage("r1", "preprocess")
    assert started == format_time(utc_clock.now - timedelta(minutes=2))
    assert stage is not None and stage.spot_waiting_since == started
    assert seen_by_the_pass == started
