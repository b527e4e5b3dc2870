"""Notices of work a handler did and died before telling of: the event's retry (or the next event about the same job)
comes back to that work, finds it done, and tells of it, once."""

from __future__ import annotations

import boto3
import pytest
from offline_runs import (
    HANDLER_OF_SOURCE,
    QUICK_STAGE_HOURS,
    QUICK_STAGES,
    RuntimeExitError,
    dead_lettered,
    retry_dead_lettered,
    trace_file,
    upload_quick_run,
)
from spot_hpc import ingest, job_events, placement

from spotctl.offline.demo import control_plane_services
from spotctl.offline.runtime import OfflineControlPlane

pytestmark = pytest.mark.integration
REGION = "us-east-1"


def _capacity_for(tmp_path, ten_minute_ticks: int):
    """A trace with capacity for one node for the first `ten_minute_ticks` ticks, then none for days."""
    return trace_file(tmp_path, "short-capacity", [1] * ten_minute_ticks + [0] * 500)


def _die_before_telling(monkeypatch, kind: str) -> list[str]:
    """Every handler that tells of `kind` dies the first time, after the work and before the notice's claim."""
    died: list[str] = []
    for module in (ingest, placement, job_events):
        real_notify = module.notify

        def notify_or_die(svc, notice_kind, *args, _real=real_notify, **kwargs):
            if notice_kind == kind and not died:
                died.append(notice_kind)
                raise RuntimeExitError("Runtime exited before telling")
            return _real(svc, notice_kind, *args, **kwargs)

        monkeypatch.setattr(module, "notify", notify_or_die)
    return died


def _upload_tight_run(plane: OfflineControlPlane) -> None:
    """Three half-hour stages due in 2.5 hours."""
    upload_quick_run(plane, 2.5)


def _notices(plane: OfflineControlPlane, kind: str, stage: str) -> list[str]:
    """The texts of the `kind` notices told of `stage` (of the run: "") on SNS, which takes every notice."""
    svc = control_plane_services(plane)
    run = svc.ledger.list_runs()[-1]
    return [
        n["text"]
        for n in svc.ledger.run_notifications(run.run_id)
        if n["kind"] == kind and n["channel"] == "sns" and (not stage or f"stage {stage} |" in n["text"])
    ]


def test_a_requeue_whose_warning_handler_died_before_telling_is_told_once(monkeypatch, tmp_path):
    # GIVEN Spot capacity for half an hour, a run with little slack, and the interruption handler dying right after
    # moving preprocess to On-Demand on the warning, before telling of it
    died = _die_before_telling(monkeypatch, "requeued")
    with OfflineControlPlane(trace=_capacity_for(tmp_path, 3), stage_hours=QUICK_STAGES) as plane:
        _upload_tight_run(plane)
        status = plane.run_until_settled(max_hours=4)
        # WHEN Lambda retries the warning (the Spot job's end, which the requeue brought about, came back too)
        warning, retried, errored = retry_dead_lettered(plane)
        requeued = _notices(plane, "requeued", "preprocess")
    # THEN the move was told once, and the retry found nothing more to do
    assert died == ["requeued"] and warning["detail-type"] == "EC2 Spot Instance Interruption Warning"
    assert status == "SUCCEEDED" and not errored and retried["jobs"][0]["reason"] == "job no longer current"
    assert len(requeued) == 1 and "| attempt 2 |" in requeued[0], requeued


def test_a_reclaim_whose_batch_handler_died_before_telling_is_told_by_the_events_retry(monkeypatch, tmp_path):
    # GIVEN Spot capacity for 20 minutes, and the Batch handler dying right after placing the reclaimed preprocess's
    # next attempt, before telling of the reclaim
    died = _die_before_telling(monkeypatch, "interrupted")
    with OfflineControlPlane(trace=_capacity_for(tmp_path, 2), stage_hours=QUICK_STAGES) as plane:
        _upload_tight_run(plane)
        status = plane.run_until_settled(max_hours=4)
        told_before_the_retry = _notices(plane, "interrupted", "preprocess")
        # WHEN Lambda retries the job's FAILED event
        failed, retried, errored = retry_dead_lettered(plane)
        interrupted = _notices(plane, "interrupted", "preprocess")
        requeued = _notices(plane, "requeued", "preprocess")
    # THEN the retry, finding the next attempt placed, told of the reclaim: once
    assert died == ["interrupted"] and failed["detail"]["status"] == "FAILED" and told_before_the_retry == []
    assert status == "SUCCEEDED" and not errored and retried["status"] == "ignored", retried
    assert len(interrupted) == 1 and "| attempt 1 |" in interrupted[0], interrupted
    # AND told no move to On-Demand that was not one (the reclaimed attempt's successor waited on Spot)
    assert not any("| attempt 2 |" in text for text in requeued), requeued


def test_a_requeue_whose_guard_pass_died_before_telling_is_told_when_the_spot_job_ends(monkeypatch, tmp_path):
    # GIVEN Spot capacity for 20 minutes, so that the reclaimed preprocess waits for Spot that does not come, and the
    # SLA guard dying right after moving it to On-Demand, before telling of it (a guard pass is not retried)
    died = _die_before_telling(monkeypatch, "requeued")
    with OfflineControlPlane(trace=_capacity_for(tmp_path, 2), stage_hours=QUICK_STAGES) as plane:
        _upload_tight_run(plane)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=4)
        requeued = _notices(plane, "requeued", "preprocess")
        failed_events = dead_lettered(plane)
    # THEN no event was retried (the guard's pass is not), yet the end of the Spot job the guard replaced brought the
    # Batch handler back to the move, which it told
    assert died == ["requeued"] and status == "SUCCEEDED" and failed_events == []
    assert len(requeued) == 1 and "| attempt 3 |" in requeued[0], requeued


def test_a_start_whose_handler_died_before_telling_is_told_by_the_uploads_retry(monkeypatch, tmp_path):
    # GIVEN the upload handler dying right after starting the run's execution, before telling of it
    died = _die_before_telling(monkeypatch, "started")
    with OfflineControlPlane(trace=_capacity_for(tmp_path, 30), stage_hours=QUICK_STAGES) as plane:
        _upload_tight_run(plane)
        told_before_the_retry = len(_notices(plane, "started", ""))
        # WHEN Lambda retries the upload's event
        upload, retried, errored = retry_dead_lettered(plane)
        again, errored_again = plane.invoke(HANDLER_OF_SOURCE[upload["source"]], upload)
        status = plane.run_until_settled(max_hours=4)
        started = _notices(plane, "started", "")
        executions = plane.executions()
    # THEN the retry, finding the run started, told of it; a later duplicate found it told; one run, one execution
    assert died == ["started"] and told_before_the_retry == 0
    assert (retried["status"], errored, again["status"], errored_again) == ("duplicate", False, "duplicate", False)
    assert len(started) == 1 and len(executions) == 1 and status == "SUCCEEDED"


def test_a_move_to_on_demand_whose_submission_died_is_told_by_the_guard_that_submits_it(monkeypatch, tmp_path):
    from datetime import timedelta

    from sample_events import load_event
    from spot_hpc.batch import BatchGateway

    with OfflineControlPlane(trace=_capacity_for(tmp_path, 30), stage_hours=QUICK_STAGES) as plane:
        # GIVEN preprocess running on Spot, and a handler that claimed its next attempt on On-Demand (after a
        # reclaim, say) and died before SubmitJob: nothing records the move, and the Spot job's end is behind it
        _upload_tight_run(plane)
        svc = control_plane_services(plane)
        for _ in range(100):
            run = svc.ledger.list_runs()[-1]
            stage = svc.ledger.get_stage(run.run_id, "preprocess")
            if stage is not None and stage.job_id and stage.capacity == "spot":
                break
            plane.step()
        with monkeypatch.context() as patched:

            def die(self, request):
                raise RuntimeExitError("Runtime exited before SubmitJob")

            patched.setattr(BatchGateway, "submit", die)
            with pytest.raises(RuntimeExitError):
                placement.place_attempt(svc, run, stage, "on-demand", "the Spot job was reclaimed")
        told_before = _notices(plane, "requeued", "preprocess")
        # WHEN the SLA guard's pass finds the claimed attempt without a job, past its grace
        plane.clock.advance(timedelta(minutes=4))
        result, errored = plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        requeued = _notices(plane, "requeued", "preprocess")
    # THEN it submits the attempt on On-Demand and tells of the move, which no one else would have
    assert told_before == [] and not errored
    assert {"run_id": run.run_id, "stage": "preprocess", "action": "resubmitted lost submission"} in result["actions"]
    assert len(requeued) == 1 and "| attempt 2 |" in requeued[0], requeued


def test_an_upload_whose_start_notice_another_delivery_holds_starts_the_run_without_failing(tmp_path):
    from datetime import timedelta

    from sample_events import load_event
    from spot_hpc.clock import format_time, utc_now
    from spot_hpc.pipeline import run_id_for
    from spot_hpc.slack import notification_dedupe_key

    with OfflineControlPlane(trace=_capacity_for(tmp_path, 30), stage_hours=QUICK_STAGES) as plane:
        # GIVEN an uploaded CSV whose event a second delivery handles at the same time, holding the start notice
        key = "incoming/concurrent.csv"
        version = boto3.client("s3", region_name=REGION).put_object(
            Bucket=plane.bucket,
            Key=key,
            Body=b"a\n1\n",
            Metadata={"deadline-hours": "2.5", "stage-hours": QUICK_STAGE_HOURS},
        )["VersionId"]
        event = load_event("s3_object_created")
        event["time"] = format_time(plane.clock.now())
        event["detail"]["bucket"]["name"] = plane.bucket
        event["detail"]["object"].update({"key": key, "version-id": version})
        run_id = run_id_for(key, version, event["detail"]["object"]["sequencer"])
        svc = control_plane_services(plane)
        svc.ledger.claim_notification(
            notification_dedupe_key(run_id, None, "started"), utc_now() + timedelta(minutes=1)
        )
        # WHEN this delivery is handled
        result, errored = plane.invoke("StartPipelineFunction", event)
        executions = plane.executions()
    # THEN it starts the run and leaves the notice to the holder (or to the SLA guard, should the holder die),
    # rather than failing, to be retried for a notice alone
    assert not errored and result["status"] == "started" and result["run_id"] == run_id
    assert [e["name"] for e in executions] == [run_id]
