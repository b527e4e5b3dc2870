"""Faults end to end, each on a control plane of its own: a rebalance recommendation, no Spot capacity, a lost
event, a crash between two AWS calls, Batch throttling."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from offline_runs import (
    QUICK_STAGES,
    RuntimeExitError,
    retry_dead_lettered,
    steady_trace,
    submit_probe,
    trace_file,
    upload_quick_run,
)
from sample_events import load_event
from spot_checkpoint import EXIT_S3_UNAVAILABLE
from spot_checkpoint.store import CheckpointStore
from spot_hpc import runner
from spot_hpc.batch import BatchGateway
from spot_hpc.clock import format_time, hours_between, parse_time, utc_now
from spot_hpc.cost import check_run_report_costs
from spot_hpc.events import TERMINAL_STATUSES, BatchJobDetail
from spot_hpc.guard import run_guard
from spot_hpc.job_events import S3_UNAVAILABLE_RESUBMITS
from spot_hpc.ledger import Ledger
from spot_hpc.outcome import run_report
from spot_hpc.pipeline import STAGE_NAMES
from spot_hpc.placement import requeue_to_on_demand, submit_claimed
from spot_hpc.pricing import DataFilePriceBook
from spot_hpc.run_report import RECLAIM_CLASSES
from spot_hpc.stepfunctions import PipelineStateMachine
from template_grants import refused_calls

from spotctl.offline.demo import control_plane_services
from spotctl.offline.runtime import OfflineControlPlane
from spotctl.offline.stack import REPO_ROOT

pytestmark = pytest.mark.integration
REGION = "us-east-1"
SPOT_FROM_THE_START = 75.0  # hour of the default trace with Spot capacity for the first 45 minutes


# ------------------------------------------------------------------ Spot signals and the SLA guard
def _run_until(plane: OfflineControlPlane, predicate, max_steps: int = 600) -> None:
    for _ in range(max_steps):
        if predicate():
            return
        plane.step()
    raise AssertionError("condition not reached")


def _attempts(plane: OfflineControlPlane, stage: str):
    svc = control_plane_services(plane)
    run = svc.ledger.list_runs()[-1]
    return run, [a for a in svc.ledger.get_run_items(run.run_id)[1] if a.stage == stage]


def _refused_calls(plane: OfflineControlPlane) -> dict[str, list[str]]:
    """The AWS calls the handlers made that their roles in the translated template would not allow."""
    return refused_calls(plane.stack.translated, plane.aws_calls.actions)


LONG_PREPROCESS = {"preprocess": 4, "hpc": 1, "postprocess": 1}


def _preprocess_running_on_spot(plane: OfflineControlPlane, key: str):
    """A run whose 4-hour preprocess has a roomy 40-hour deadline, once its job runs on Spot: (run, its attempts)."""
    plane.upload(key, b"a\n1\n", {"deadline-hours": "40", "stage-hours": "preprocess=4"})
    _run_until(plane, lambda: any(a.status == "RUNNING" for a in _attempts(plane, "preprocess")[1]))
    return _attempts(plane, "preprocess")


def test_rebalance_recommendation_asks_the_running_job_to_checkpoint_and_go_on():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot with a roomy deadline
        run, attempts = _preprocess_running_on_spot(plane, "incoming/long.csv")
        instance_id = attempts[-1].instance_ids[0]
        checkpoints = f"checkpoints/{run.run_id}/preprocess/"
        # WHEN EC2 recommends rebalancing that instance
        result, _ = plane.invoke(
            "SpotInterruptionFunction", load_event("rebalance_recommendation", **{"instance-id": instance_id})
        )
        s3 = boto3.client("s3", region_name=REGION)
        request = json.loads(s3.get_object(Bucket=plane.bucket, Key=f"{checkpoints}request.json")["Body"].read())
        store = CheckpointStore(s3, f"s3://{plane.bucket}/{checkpoints}")
        saved_before = store.latest()
        for _ in range(3):
            plane.step()
        saved = store.latest()
        _, after = _attempts(plane, "preprocess")
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages]
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
        # THEN the job is asked to checkpoint and go on working, and stays on Spot (the deadline is not at risk)
        assert result["status"] == "handled" and [j["action"] for j in result["jobs"]] == ["checkpoint"]
        assert "rebalance recommendation" in request["reason"] and request["stop"] is False
        # AND it saved its progress, recording the request, and works on as the same attempt: no stop, no reclaim
        assert saved is not None and saved.request_id == request["request_id"]
        assert saved_before is None or saved_before.seq < saved.seq
        assert len(after) == len(attempts) and (after[-1].attempt, after[-1].status) == (
            attempts[-1].attempt,
            "RUNNING",
        )
        # AND nothing tells or learns it as an interruption
        assert not any(text.startswith("Spot interruption") for text in sent)
        assert stage is not None and stage.spot_stats.get("interruptions", 0) == 0


def test_an_interruption_warning_told_before_its_jobs_start_is_acted_on_once_the_start_is():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess starting on Spot, and EventBridge holding back its RUNNING event (it keeps no order
        # between EC2's events and Batch's)
        deliver = plane.bus.put
        held_back: list[dict] = []

        def hold_back_running(event):
            if event["source"] == "aws.batch" and event["detail"]["status"] == "RUNNING" and not held_back:
                held_back.append(event)
                return []
            return deliver(event)

        plane.bus.put = hold_back_running  # type: ignore[method-assign]
        plane.upload("incoming/early.csv", b"a\n1\n", {"deadline-hours": "40", "stage-hours": "preprocess=4"})
        _run_until(plane, lambda: bool(held_back))
        started = BatchJobDetail.model_validate(held_back[0]["detail"])
        [instance_id] = control_plane_services(plane).batch.instance_ids(started.container_instance_arns)
        # WHEN EC2's interruption warning for its instance is told first, then the job's start
        warning = load_event("spot_interruption_warning", **{"instance-id": instance_id})
        warning["time"] = format_time(plane.clock.now())
        told_first, _ = plane.invoke("SpotInterruptionFunction", warning)
        start, errored = plane.invoke("BatchStateChangeFunction", held_back[0])
        run, _ = _attempts(plane, "preprocess")
        key = f"checkpoints/{run.run_id}/preprocess/request.json"
        request = boto3.client("s3", region_name=REGION).get_object(Bucket=plane.bucket, Key=key)
        refused = _refused_calls(plane)
    # THEN the warning was kept, and acted on once the start was recorded: the job is asked to checkpoint, as a
    # warning told in order would have had it
    assert told_first["status"] == "ignored" and not errored
    assert [signal["action"] for signal in start["signals"]] == ["checkpoint"]
    assert "interruption warning" in json.loads(request["Body"].read())["reason"]
    assert refused == {}


def _quick_run(tmp_path, spot_nodes: int, deadline_hours: float, max_hours: float):
    """The three half-hour stages under `deadline_hours`, on a trace with Spot capacity for `spot_nodes` nodes
    throughout, run until they settle: (the pipeline's status, preprocess's attempts, the run report)."""
    with OfflineControlPlane(trace=steady_trace(tmp_path, spot_nodes), stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, deadline_hours)
        status = plane.run_until_settled(max_hours=max_hours)
        run, preprocess = _attempts(plane, "preprocess")
        return status, preprocess, run_report(control_plane_services(plane), run)


def test_stuck_runnable_on_spot_moves_to_on_demand_and_meets_the_deadline(tmp_path):
    # GIVEN a trace with no Spot capacity at all, and a deadline with little slack
    # WHEN the run goes its course
    status, preprocess, report = _quick_run(tmp_path, spot_nodes=0, deadline_hours=2.5, max_hours=6)
    # THEN the Spot attempt never ran, the SLA guard requeued it to On-Demand, and the deadline was met
    assert status == "SUCCEEDED" and report["deadline_met"] is True and report["requeues_to_on_demand"] >= 1
    assert preprocess[0].capacity == "spot" and preprocess[0].started_at is None
    assert preprocess[0].cancel_reason == "requeue_to_on_demand"
    assert preprocess[-1].capacity == "on-demand" and preprocess[-1].status == "SUCCEEDED"


def _die_once_writing_the_spot_wait(monkeypatch, change: str) -> list[str]:
    """The first write that `change`s ("starts" or "ends") a stage's Spot wait dies with its Lambda, after the job's
    status was recorded."""
    real_start_spot_wait, real_learn_spot = Ledger.start_spot_wait, Ledger.learn_spot
    died: list[str] = []

    def die_once(stage: str) -> None:
        if not died:
            died.append(stage)
            raise RuntimeExitError(f"Runtime exited before the Spot wait {change}")

    def start_or_die(self, run_id, stage, since):
        if change == "starts":
            die_once(stage)
        return real_start_spot_wait(self, run_id, stage, since)

    def learn_or_die(self, stage, learn):
        # The wait ends with the write that learns it: the stage's wait removed with its new statistics.
        if change == "ends" and "spot_waiting_since" in (learn(stage) or {}):
            die_once(stage.stage)
        return real_learn_spot(self, stage, learn)

    monkeypatch.setattr(Ledger, "start_spot_wait", start_or_die)
    monkeypatch.setattr(Ledger, "learn_spot", learn_or_die)
    return died


@pytest.mark.parametrize("retried", [True, False], ids=["event retried", "event lost"])
def test_a_spot_job_whose_wait_was_not_recorded_is_still_moved_to_on_demand(monkeypatch, tmp_path, retried):
    # GIVEN no Spot capacity at all, a tight deadline, and the Batch handler dying after recording the Spot job
    # RUNNABLE and before starting the stage's Spot wait
    died = _die_once_writing_the_spot_wait(monkeypatch, "starts")
    with OfflineControlPlane(trace=steady_trace(tmp_path, 0), stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 2.5)
        _run_until(plane, lambda: bool(died))
        # WHEN Lambda retries the event (or its retries are lost too), and the run goes its course
        retry = retry_dead_lettered(plane) if retried else None
        run, _ = _attempts(plane, "preprocess")
        waiting_after_retry = (
            control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess").spot_waiting_since
        )
        status = plane.run_until_settled(max_hours=6)
        run, preprocess = _attempts(plane, "preprocess")
        report = run_report(control_plane_services(plane), run)
    # THEN the stage was seen waiting for Spot (by the retry, or by the SLA guard from Batch) and moved to On-Demand
    # in time
    assert died == ["preprocess"] and (retry is None or (retry[2] is False and waiting_after_retry))
    assert status == "SUCCEEDED" and report["deadline_met"] is True
    assert preprocess[0].cancel_reason == "requeue_to_on_demand" and preprocess[-1].capacity == "on-demand"


def test_a_spot_job_running_whose_wait_was_not_ended_is_not_taken_for_waiting(monkeypatch, tmp_path):
    # GIVEN Spot capacity after ten minutes without, a 2-hour preprocess in a pipeline due in 8 hours, and the
    # Batch handler dying after recording the Spot job RUNNING and before ending its wait; the event is not retried
    died = _die_once_writing_the_spot_wait(monkeypatch, "ends")
    trace = trace_file(tmp_path, "late-capacity", [0] + [1] * 500)
    with OfflineControlPlane(trace=trace, stage_hours={**QUICK_STAGES, "preprocess": 2}) as plane:
        plane.upload("incoming/late.csv", b"a\n1\n", {"deadline-hours": "8", "stage-hours": "preprocess=2"})
        _run_until(plane, lambda: bool(died))
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=6)
        run, preprocess = _attempts(plane, "preprocess")
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
    # THEN the SLA guard ended the wait (it was learnt) and left the running Spot job alone, which finished the stage
    assert died == ["preprocess"] and status == "SUCCEEDED"
    assert [(a.capacity, a.status) for a in preprocess] == [("spot", "SUCCEEDED")]
    assert stage.spot_waiting_since is None and stage.spot_stats["recoveries"] == 1


def test_a_spot_waits_end_that_lost_every_write_to_other_handlers_fails_and_its_retry_learns_it(monkeypatch, tmp_path):
    # GIVEN Spot capacity after ten minutes without, and the Batch handler that is told the Spot job started losing
    # each of its writes of the stage's Spot statistics to another handler's, which came between its read and write
    real_learn_spot = Ledger.learn_spot
    contended: list[str] = []

    def learn_against_other_writers(self, stage, learn):
        if contended or "spot_waiting_since" not in (learn(stage) or {}):
            return real_learn_spot(self, stage, learn)
        contended.append(stage.stage)
        real_read = self.get_stage

        def written_by_another(read):
            real_learn_spot(self, read, lambda current: {"spot_stats": current.spot_stats})
            return read

        written_by_another(stage)
        with monkeypatch.context() as patched:
            patched.setattr(self, "get_stage", lambda run_id, name: written_by_another(real_read(run_id, name)))
            return real_learn_spot(self, stage, learn)

    monkeypatch.setattr(Ledger, "learn_spot", learn_against_other_writers)
    trace = trace_file(tmp_path, "late-capacity", [0] + [1] * 500)
    with OfflineControlPlane(trace=trace, stage_hours={**QUICK_STAGES, "preprocess": 2}) as plane:
        plane.upload("incoming/contended.csv", b"a\n1\n", {"deadline-hours": "8", "stage-hours": "preprocess=2"})
        _run_until(plane, lambda: bool(contended))
        run, _ = _attempts(plane, "preprocess")
        ledger = control_plane_services(plane).ledger
        failed = ledger.get_stage(run.run_id, "preprocess")
        # WHEN Lambda retries the event
        event, _, errored = retry_dead_lettered(plane)
        stage = ledger.get_stage(run.run_id, "preprocess")
        waited = hours_between(parse_time(failed.spot_waiting_since), plane.clock.now())
    # THEN the first delivery failed with nothing of its own written (the stage still waited, its statistics only
    # the other handlers'), and the retry learnt the wait, once
    assert contended == ["preprocess"] and event["detail"]["status"] == "RUNNING"
    assert failed.spot_waiting_since and failed.spot_stats.get("down_hours", 0.0) == 0.0
    assert errored is False and stage.spot_waiting_since is None
    assert stage.spot_stats_version == failed.spot_stats_version + 1
    assert waited > 0 and stage.spot_stats["down_hours"] == pytest.approx(waited)


def test_a_guard_pass_that_read_batch_before_a_job_started_does_not_start_its_wait(monkeypatch):
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot, its start recorded by its RUNNING event
        run, attempts = _preprocess_running_on_spot(plane, "incoming/started.csv")
        # WHEN an SLA guard pass reads Batch as it was before the start (a pass describes every job once, at its
        # start, and can last minutes)
        real_describe = BatchGateway.describe

        def described_before_the_start(self, job_ids):
            return {job_id: {**job, "status": "RUNNABLE"} for job_id, job in real_describe(self, job_ids).items()}

        monkeypatch.setattr(BatchGateway, "describe", described_before_the_start)
        plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
    # THEN the ledger's record of the start stands: no wait for Spot is started (it would be learnt as a gap)
    assert attempts[-1].status == "RUNNING" and stage is not None and stage.spot_waiting_since is None


def test_a_guard_pass_whose_wait_a_jobs_start_raced_drops_it_unlearnt(monkeypatch):
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot, its start recorded by its RUNNING event, whose handler read the stage
        # before the guard pass below wrote a wait (so ended none)
        run, attempts = _preprocess_running_on_spot(plane, "incoming/raced.csv")
        learnt = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess").spot_stats
        # AND an SLA guard pass that read Batch and the attempt as they were before the start (a pass reads them once,
        # at its start, and can last minutes)
        real_describe, real_get_attempt = BatchGateway.describe, Ledger.get_attempt
        reads: list[str] = []

        def described_before_the_start(self, job_ids):
            return {job_id: {**job, "status": "RUNNABLE"} for job_id, job in real_describe(self, job_ids).items()}

        def read_before_the_start_at_first(self, run_id, stage, attempt):
            read = real_get_attempt(self, run_id, stage, attempt)
            reads.append(read.status if read else "")
            return replace(read, status="RUNNABLE", started_at=None) if read and len(reads) == 1 else read

        monkeypatch.setattr(BatchGateway, "describe", described_before_the_start)
        monkeypatch.setattr(Ledger, "get_attempt", read_before_the_start_at_first)
        # WHEN the pass runs
        plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        monkeypatch.undo()
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
    # THEN the wait it started is dropped once it reads the attempt again, and teaches the policy no gap (before, it
    # went on while the job ran until the next pass ended it, and was learnt)
    assert attempts[-1].status == "RUNNING" and stage is not None and stage.spot_waiting_since is None
    assert stage.spot_stats == learnt
    # AND the pass read the attempt twice: at its start (as before the job's start), and once it wrote the wait
    assert reads[:2] == ["RUNNING", "RUNNING"]


def test_a_guard_pass_that_read_a_long_wait_before_the_job_started_leaves_the_started_job_on_spot(monkeypatch):
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot, its start recorded by its RUNNING event, with slack enough to stay there
        # and too little to wait for capacity that does not come
        plane.upload("incoming/started-late.csv", b"a\n1\n", {"deadline-hours": "9.5", "stage-hours": "preprocess=4"})
        _run_until(plane, lambda: any(a.status == "RUNNING" for a in _attempts(plane, "preprocess")[1]))
        # WHEN an SLA guard pass reads Batch and the stage as they were before the start, after half an hour's wait
        # for Spot (a pass reads them once, at its start, and can last minutes)
        real_describe, real_active_stages = BatchGateway.describe, Ledger.active_stages
        waiting_since = format_time(utc_now() - timedelta(minutes=30))

        def described_before_the_start(self, job_ids):
            return {job_id: {**job, "status": "RUNNABLE"} for job_id, job in real_describe(self, job_ids).items()}

        def read_before_the_start(self):
            for stage in real_active_stages(self):
                yield replace(stage, spot_waiting_since=waiting_since) if stage.stage == "preprocess" else stage

        monkeypatch.setattr(BatchGateway, "describe", described_before_the_start)
        monkeypatch.setattr(Ledger, "active_stages", read_before_the_start)
        plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        monkeypatch.undo()
        _, after = _attempts(plane, "preprocess")
    # THEN the job that got its capacity is not taken for one without: it runs on, on Spot, neither cancelled nor
    # replaced (before, it was terminated and requeued to On-Demand as if still waiting)
    assert [(a.attempt, a.capacity, a.status, a.cancel_reason) for a in after] == [(1, "spot", "RUNNING", None)]


def test_lost_batch_events_are_reconciled_by_the_guard():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        # GIVEN every Batch job event is lost on its way to the control plane
        deliver = plane.bus.put
        dropped: list[str] = []

        def lose_batch_events(event):
            if event["source"] == "aws.batch":
                dropped.append(event["detail"]["status"])
                return []
            return deliver(event)

        plane.bus.put = lose_batch_events  # type: ignore[method-assign]
        plane.upload("incoming/lost.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        batch_handler = plane.stack.functions[plane.stack.physical_id("BatchStateChangeFunction")]
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the SLA guard alone learnt every outcome from DescribeJobs, and no stage waited forever
    assert "SUCCEEDED" in dropped and batch_handler.invocations == 0
    assert status == "SUCCEEDED"
    assert preprocess[-1].status == "SUCCEEDED"


def test_crash_between_submit_job_and_the_ledger_write_submits_once(monkeypatch):
    # GIVEN a stage runner that dies right after Batch accepted its first job (before recording it)
    submitted: list[str] = []
    real_submit = BatchGateway.submit

    def submit_then_crash(self, request):
        job_id = real_submit(self, request)
        submitted.append(request.name)
        if len(submitted) == 1:
            raise TimeoutError("Lambda timed out after SubmitJob")
        return job_id

    monkeypatch.setattr(BatchGateway, "submit", submit_then_crash)
    tokens: list[str] = []
    real_run_stage = runner.run_stage

    def recording_tokens(svc, event):
        tokens.append(event["task_token"])
        return real_run_stage(svc, event)

    monkeypatch.setattr(runner, "run_stage", recording_tokens)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/crash.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course (the state machine retries the runner, the guard repairs the stage)
        status = plane.run_until_settled(max_hours=12)
        names = [job.name for job in plane.batch.jobs.values()]
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the pipeline succeeded and the first preprocess attempt exists exactly once in Batch
    assert status == "SUCCEEDED"
    first = [n for n in names if n.endswith("-preprocess-a1")]
    assert len(first) == 1 and submitted.count(first[0]) == 1
    # and, as in AWS, the retried runner got a task token of its own
    assert len(tokens) >= 4 and len(set(tokens)) == len(tokens)
    # and the orphaned job, once found, is recorded like any placed one: priced, so the run's cost counts it
    assert preprocess[0].job_id and all(a.usd_per_hour > 0 for a in preprocess)


def test_a_placement_finished_late_keeps_what_the_jobs_events_recorded(monkeypatch):
    # GIVEN a stage runner that dies right after SubmitJob (before recording the job), the stage as read then, and
    # the job's RUNNING event adopting the job from its tags
    real_submit = BatchGateway.submit
    crashed: list[str] = []

    def submit_then_crash(self, request):
        job_id = real_submit(self, request)
        if not crashed:
            crashed.append(job_id)
            raise TimeoutError("Lambda timed out after SubmitJob")
        return job_id

    monkeypatch.setattr(BatchGateway, "submit", submit_then_crash)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/late.csv", b"a\n1\n", {"deadline-hours": "12"})
        _run_until(plane, lambda: bool(crashed))
        svc = control_plane_services(plane)
        run = svc.ledger.list_runs()[-1]
        stale = svc.ledger.get_stage(run.run_id, "preprocess")
        _run_until(plane, lambda: any(a.status == "RUNNING" for a in _attempts(plane, "preprocess")[1]))
        (running,) = _attempts(plane, "preprocess")[1]

        # WHEN an SLA guard pass that read the stage before the adoption finishes its placement now
        placed = submit_claimed(svc, run, stale, "spot", "placement repaired by the SLA guard")
        (kept,) = _attempts(plane, "preprocess")[1]

    # THEN it adopts the same job, and the attempt keeps the status, start and instance the event recorded
    assert stale.job_id is None and running.job_id == crashed[0] and placed.job_id == crashed[0]
    assert (kept.status, kept.started_at, kept.instance_ids) == ("RUNNING", running.started_at, running.instance_ids)
    assert kept.started_at and kept.instance_ids


def test_an_upload_whose_run_was_recorded_and_not_started_starts_on_the_retry_after_the_file_is_gone(monkeypatch):
    # GIVEN the upload's handler dying after recording the run and before starting its execution, and the uploaded
    # version deleted before Lambda retries the event
    real_start = PipelineStateMachine.start
    died: list[str] = []

    def start_or_die(self, run_id, stage_timeout_seconds):
        if not died:
            died.append(run_id)
            raise RuntimeExitError("Runtime exited before StartExecution")
        return real_start(self, run_id, stage_timeout_seconds)

    monkeypatch.setattr(PipelineStateMachine, "start", start_or_die)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 12)
        _run_until(plane, lambda: bool(died))
        s3 = boto3.client("s3", region_name=REGION)
        for version in s3.list_object_versions(Bucket=plane.bucket, Prefix="incoming/")["Versions"]:
            s3.delete_object(Bucket=plane.bucket, Key=version["Key"], VersionId=version["VersionId"])
        # WHEN Lambda retries the event
        _, result, errored = retry_dead_lettered(plane)
        run = control_plane_services(plane).ledger.get_run(died[0])

    # THEN the retry found the run the first delivery recorded and started it, without reading the file again
    assert errored is False and result["status"] == "duplicate" and result["run_id"] == died[0]
    assert run is not None and run.execution_arn == result["execution_arn"]


def test_a_stage_longer_than_its_job_definitions_timeout_gets_an_attempt_timeout_of_its_own(monkeypatch):
    from spotctl.offline.batch_emulator import BatchEmulator

    # GIVEN a run declaring a 20-hour preprocess, longer than its job definition's 12-hour timeout
    submitted: list[dict] = []
    real_submit = BatchEmulator.submit

    def recording(self, backend, kwargs):
        submitted.append(kwargs)
        return real_submit(self, backend, kwargs)

    monkeypatch.setattr(BatchEmulator, "submit", recording)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/long.csv", b"a\n1\n", {"deadline-hours": "60", "stage-hours": "preprocess=20"})
        # WHEN its first job is submitted
        while not submitted:
            plane.step()
        definition = boto3.client("batch", region_name=REGION).describe_job_definitions(
            jobDefinitions=[submitted[0]["jobDefinition"]]
        )["jobDefinitions"][0]
    # THEN SubmitJob gives the attempt twice its compute and an hour, over the definition's 12 hours (which would end
    # every attempt as a timeout, spending the stage's retries)
    assert definition["timeout"]["attemptDurationSeconds"] == 12 * 3600
    assert submitted[0]["timeout"] == {"attemptDurationSeconds": (20 * 2 + 1) * 3600}


def test_an_attempt_batch_ends_at_its_timeout_spends_a_retry_and_the_next_resumes_from_its_checkpoint(tmp_path):
    # GIVEN Spot capacity throughout, and a run declaring a half-hour preprocess whose work takes three hours: Batch
    # ends each attempt after twice the declared compute and an hour (two hours)
    stage_hours = {**QUICK_STAGES, "preprocess": 3.0}
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=stage_hours) as plane:
        upload_quick_run(plane, 12)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=8)
        run, preprocess = _attempts(plane, "preprocess")
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
    # THEN the first attempt ended as a timeout, which spent one of the stage's retries and was told as no
    # interruption; the second resumed from the checkpoint the first wrote on Batch's SIGTERM, and the run succeeded
    assert [(a.status, a.failure_class, a.status_reason) for a in preprocess] == [
        ("FAILED", "timeout", "Job attempt duration exceeded timeout"),
        ("SUCCEEDED", None, "Essential container in task exited"),
    ]
    assert hours_between(parse_time(preprocess[0].started_at), parse_time(preprocess[0].stopped_at)) == 2.0
    assert hours_between(parse_time(preprocess[1].started_at), parse_time(preprocess[1].stopped_at)) < 1.5
    assert stage is not None and stage.app_retries_used == 1
    assert status == "SUCCEEDED"


def test_batch_throttling_is_retried_without_a_second_job(monkeypatch):
    from moto.core.exceptions import JsonRESTError

    from spotctl.offline.batch_emulator import BatchEmulator

    # GIVEN AWS Batch answers the first SubmitJob with TooManyRequestsException (HTTP 429)
    class Throttled(JsonRESTError):
        code = 429

    real_submit = BatchEmulator.submit
    throttled: list[int] = []

    def throttle_once(self, backend, kwargs):
        if not throttled:
            throttled.append(1)
            raise Throttled("TooManyRequestsException", "Too Many Requests")
        return real_submit(self, backend, kwargs)

    monkeypatch.setattr(BatchEmulator, "submit", throttle_once)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/throttled.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        names = [job.name for job in plane.batch.jobs.values()]
    # THEN the submission's retry of a refused call absorbed the throttle: one job per attempt, and the pipeline
    # succeeded
    assert throttled == [1] and status == "SUCCEEDED"
    assert len(names) == len(set(names))
    # (not a second attempt after a failed first one: preprocess ran as attempt 1 only)
    assert [n.rsplit("-", 1)[1] for n in names if "-preprocess-" in n] == ["a1"]


def test_crash_between_settling_a_stage_and_answering_the_state_machine_is_repaired(monkeypatch):
    from spot_hpc import job_events

    # GIVEN the Batch handler dies right after recording that preprocess succeeded, before telling Step Functions
    real_answer = job_events.answer_state_machine
    crashes: list[str] = []

    def crash_once(svc, stage):
        if not crashes:
            crashes.append(stage.stage)
            raise TimeoutError("Lambda timed out before SendTaskSuccess")
        real_answer(svc, stage)

    monkeypatch.setattr(job_events, "answer_state_machine", crash_once)
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/unanswered.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        failed_deliveries = [d for d in plane.bus.deliveries if d.status == "error"]
    # THEN the crash reached the dead-letter queue, the guard answered for the settled stage, and the run finished
    assert crashes == ["preprocess"] and len(failed_deliveries) == 1
    assert status == "SUCCEEDED"


def _settling_a_stage_dies_once(monkeypatch, error: Exception) -> list[str]:
    """The first handler to settle a stage dies there with `error`; returns the stages it died settling."""
    real_settle = Ledger.settle_stage
    died: list[str] = []

    def die_once(self, run_id, stage, status, attempt, failure=None):
        if not died:
            died.append(stage)
            raise error
        return real_settle(self, run_id, stage, status, attempt, failure)

    monkeypatch.setattr(Ledger, "settle_stage", die_once)
    return died


def test_crash_between_recording_an_attempt_end_and_settling_the_stage_is_repaired(monkeypatch):
    # GIVEN the Batch handler dies right after recording that preprocess's job succeeded, before settling the stage
    crashes = _settling_a_stage_dies_once(monkeypatch, TimeoutError("Lambda timed out before settling the stage"))
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/unsettled.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course (the event's retry finds the attempt already ended)
        status = plane.run_until_settled(max_hours=12)
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the stage was settled on that attempt anyway, and the run finished
    assert crashes == ["preprocess"] and status == "SUCCEEDED"
    assert [(a.attempt, a.status) for a in preprocess] == [(1, "SUCCEEDED")]


def _die_once_after_recording(monkeypatch, status: str) -> list[str]:
    """The Batch handler dies once, right after recording an attempt's `status`: the stages it died on."""
    real_update = Ledger.update_open_attempt
    died: list[str] = []

    def record_then_die(self, run_id, stage, attempt, **sets):
        recorded = real_update(self, run_id, stage, attempt, **sets)
        if sets.get("status") == status and not died:
            died.append(stage)
            raise RuntimeExitError(f"Runtime exited after recording the job's {status}")
        return recorded

    monkeypatch.setattr(Ledger, "update_open_attempt", record_then_die)
    return died


def test_a_reclaim_whose_handler_died_after_recording_it_is_learnt_once(monkeypatch, tmp_path):
    # GIVEN Spot capacity for 20 minutes, then none for 10, and the Batch handler dying right after recording that
    # the Spot job was reclaimed
    died = _die_once_after_recording(monkeypatch, "FAILED")
    trace = trace_file(tmp_path, "short-capacity", [1, 1, 0] + [1] * 500)
    with OfflineControlPlane(trace=trace, stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 12)
        _run_until(plane, lambda: bool(died))
        # WHEN Lambda retries the event, twice (EventBridge and Lambda deliver at least once)
        event, _, errored = retry_dead_lettered(plane)
        _, errored_again = plane.invoke("BatchStateChangeFunction", event)
        run, preprocess = _attempts(plane, "preprocess")
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
    # THEN the reclaim was learnt by the stage's Spot statistics, once
    assert died == ["preprocess"] and (errored, errored_again) == (False, False)
    assert preprocess[0].failure_class in RECLAIM_CLASSES and stage is not None
    assert (stage.spot_stats["interruptions"], stage.spot_learnt_attempt) == (1, 1)


def test_a_job_whose_start_s3_failed_past_its_retries_is_placed_again_as_no_interruption():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        # GIVEN a run whose preprocess job, on Spot, finds S3 failing as it starts, past its retries (exit 88)
        plane.batch.failing_stages["preprocess"] = EXIT_S3_UNAVAILABLE
        upload_quick_run(plane, 12)
        _run_until(plane, lambda: any(a.status == "FAILED" for a in _attempts(plane, "preprocess")[1]))
        # WHEN S3 answers again and the run goes on
        del plane.batch.failing_stages["preprocess"]
        status = plane.run_until_settled(max_hours=12)
        run, preprocess = _attempts(plane, "preprocess")
        svc = control_plane_services(plane)
        stage = svc.ledger.get_stage(run.run_id, "preprocess")
        report = run_report(svc, run)
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages]
    # THEN the job was placed again on Spot without spending a retry, and the run succeeded
    assert status == "SUCCEEDED" and stage is not None and stage.app_retries_used == 0
    assert [(a.capacity, a.failure_class) for a in preprocess] == [("spot", "s3_unavailable"), ("spot", None)]
    # AND nothing tells it as an interruption: no notice, no count in the report
    assert not any(text.startswith("Spot interruption") for text in sent)
    assert report["interruptions"] == 0


def test_a_job_whose_start_s3_fails_every_time_fails_its_run_once_its_retries_are_spent():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as plane:
        # GIVEN a run whose preprocess job finds S3 failing at every start, past its retries (exit 88)
        plane.batch.failing_stages["preprocess"] = EXIT_S3_UNAVAILABLE
        upload_quick_run(plane, 12)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        run, preprocess = _attempts(plane, "preprocess")
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "preprocess")
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages]
    # THEN the first starts were placed again free, each later one spent a retry, and with none left the run failed
    # saying why, instead of placing the job again until the stage's timeout
    assert status == "FAILED" and stage is not None and stage.status == "FAILED"
    free, budget = S3_UNAVAILABLE_RESUBMITS, stage.retry_budget
    assert (stage.s3_resubmits_used, stage.app_retries_used) == (free, budget)
    assert [a.failure_class for a in preprocess] == ["s3_unavailable"] * (free + budget + 1)
    assert stage.failure is not None and stage.failure.startswith("s3_unavailable") and "exit code 88" in stage.failure
    assert any("failed" in text.lower() for text in sent) and not any(t.startswith("Spot interruption") for t in sent)


def test_crash_in_a_requeue_before_the_on_demand_attempt_is_claimed_is_repaired(monkeypatch, tmp_path):
    from spot_hpc import placement

    # GIVEN no Spot capacity, and a requeue to On-Demand that dies after marking the Spot attempt cancelled
    real_place = placement.place_attempt
    crashes: list[str] = []

    def crash_once(svc, run, stage, capacity, reason, **claim_sets):
        if capacity == "on-demand" and not crashes:
            crashes.append(stage.stage)
            raise TimeoutError("Lambda timed out before claiming the On-Demand attempt")
        return real_place(svc, run, stage, capacity, reason, **claim_sets)

    monkeypatch.setattr(placement, "place_attempt", crash_once)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 0), stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 2.5)
        # WHEN the run goes its course (the guard tries the requeue again 5 minutes later)
        status = plane.run_until_settled(max_hours=6)
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the requeue was completed once, and the deadline met
    assert crashes == ["preprocess"] and status == "SUCCEEDED" and plane.clock.hours <= 2.5
    assert [(a.capacity, a.status, a.cancel_reason) for a in preprocess] == [
        ("spot", "FAILED", "requeue_to_on_demand"),
        ("on-demand", "SUCCEEDED", None),
    ]


def test_a_requeue_that_died_after_marking_the_spot_attempt_is_carried_out_by_the_guard(tmp_path):
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot with capacity throughout, and a requeue to On-Demand that died right after
        # its first step, marking the Spot attempt (the policy of a later look, with capacity, may not move it)
        run, _ = _preprocess_running_on_spot(plane, "incoming/marked.csv")
        control_plane_services(plane).ledger.cancel_attempt(run.run_id, "preprocess", 1, "requeue_to_on_demand")
        # WHEN the SLA guard's next pass comes, and the run goes its course
        plane.step(minutes=5)
        status = plane.run_until_settled(max_hours=12)
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the requeue was carried out: the Spot job ended as our cancellation, On-Demand finished the stage
    assert status == "SUCCEEDED"
    assert [(a.capacity, a.status, a.failure_class) for a in preprocess] == [
        ("spot", "FAILED", "cancelled_by_control_plane"),
        ("on-demand", "SUCCEEDED", None),
    ]


def test_a_requeue_that_dies_before_submitting_is_resubmitted_on_demand_and_the_spot_job_ended(monkeypatch, tmp_path):
    # GIVEN no Spot capacity, and a requeue that claims the On-Demand attempt and dies before SubmitJob
    real_submit = BatchGateway.submit
    crashes: list[str] = []

    def crash_once_on_demand(self, request):
        if "OnDemand" in request.queue and not crashes:
            crashes.append(request.name)
            raise TimeoutError("Lambda timed out before SubmitJob")
        return real_submit(self, request)

    monkeypatch.setattr(BatchGateway, "submit", crash_once_on_demand)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 0), stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 2.5)
        # WHEN the run goes its course (the guard finds the claimed attempt without a job)
        status = plane.run_until_settled(max_hours=6)
        jobs = {job.name: job for job in plane.batch.jobs.values() if "-preprocess-" in job.name}
    # THEN the lost submission was redone on On-Demand, once, and the Spot job it replaced does not linger
    assert len(crashes) == 1 and status == "SUCCEEDED"
    assert sorted((name.rsplit("-", 1)[1], "OnDemand" in job.queue, job.status) for name, job in jobs.items()) == [
        ("a1", False, "FAILED"),
        ("a2", True, "SUCCEEDED"),
    ]


def test_a_requeued_spot_job_whose_end_is_lost_is_recorded_by_the_guard_and_not_terminated_again(monkeypatch, tmp_path):
    # GIVEN no Spot capacity, so that the SLA guard requeues the waiting Spot job to On-Demand, and the Spot job's
    # end (FAILED, as TerminateJob leaves it) lost on its way to the control plane
    real_terminate = BatchGateway.terminate
    terminated: list[str] = []

    def count_terminations(self, job_id, reason):
        terminated.append(job_id)
        return real_terminate(self, job_id, reason)

    monkeypatch.setattr(BatchGateway, "terminate", count_terminations)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 0), stage_hours=QUICK_STAGES) as plane:
        deliver = plane.bus.put
        lost: list[str] = []

        def lose_the_spot_job_s_end(event):
            detail = event["detail"]
            spot_job = event["source"] == "aws.batch" and detail["jobName"].endswith("-preprocess-a1")
            if spot_job and detail["status"] in TERMINAL_STATUSES:
                lost.append(detail["status"])
                return []
            return deliver(event)

        plane.bus.put = lose_the_spot_job_s_end  # type: ignore[method-assign]
        upload_quick_run(plane, 2.5)
        # WHEN the run goes its course (the guard looks at every active stage every 5 minutes)
        status = plane.run_until_settled(max_hours=6)
        spot_job = next(job for job in plane.batch.jobs.values() if job.name.endswith("-preprocess-a1"))
        _, preprocess = _attempts(plane, "preprocess")
    # THEN the guard recorded the Spot job's end from Batch, with its stop, and terminated it once (the requeue did)
    assert lost == ["FAILED"] and status == "SUCCEEDED"
    assert [(a.capacity, a.status, a.stopped_at is not None) for a in preprocess] == [
        ("spot", "FAILED", True),
        ("on-demand", "SUCCEEDED", True),
    ]
    assert terminated.count(spot_job.job_id) == 1


def _spot_success_held_back(plane: OfflineControlPlane) -> tuple[dict, Any, Any, Any, str]:
    """Runs quick stages on Spot until preprocess's Spot job has succeeded, its SUCCEEDED held back. Returns that
    event, the control plane's services, the run, the stage and the Spot job's id."""
    deliver = plane.bus.put
    held: list[dict] = []

    def hold_back_the_spot_success(event):
        detail = event["detail"]
        spot_job = event["source"] == "aws.batch" and detail["jobName"].endswith("-preprocess-a1")
        if spot_job and detail["status"] == "SUCCEEDED" and not held:
            held.append(event)
            return []
        return deliver(event)

    plane.bus.put = hold_back_the_spot_success  # type: ignore[method-assign]
    upload_quick_run(plane, 12)
    _run_until(plane, lambda: bool(held))
    plane.bus.put = deliver  # type: ignore[method-assign]
    svc = control_plane_services(plane)
    run, attempts = _attempts(plane, "preprocess")
    stage = svc.ledger.get_stage(run.run_id, "preprocess")
    assert stage is not None
    return held[0], svc, run, stage, attempts[0].job_id


def _requeued_as_it_succeeds(plane: OfflineControlPlane) -> tuple[dict, list]:
    """The Spot job's success held back (`_spot_success_held_back`), then the stage requeued to On-Demand (as the guard
    or a warning would, their TerminateJob too late). Returns the held-back event and the On-Demand job's id."""
    succeeded, svc, run, stage, spot_job = _spot_success_held_back(plane)
    requeue_to_on_demand(svc, run, stage, spot_job, "deadline at risk")
    return succeeded, [a.job_id for a in _attempts(plane, "preprocess")[1][1:]]


def test_a_spot_job_that_succeeds_as_it_is_requeued_settles_its_stage_and_ends_the_on_demand_one(tmp_path):
    with OfflineControlPlane(trace=steady_trace(tmp_path, 4), stage_hours=QUICK_STAGES) as plane:
        # GIVEN preprocess's Spot job done, and the stage requeued to On-Demand before its success was told
        succeeded, [on_demand_job] = _requeued_as_it_succeeds(plane)
        # WHEN the Spot job's success is told, and the run goes its course
        told, errored = plane.invoke("BatchStateChangeFunction", succeeded)
        status = plane.run_until_settled(max_hours=12)
        _, preprocess = _attempts(plane, "preprocess")
        on_demand_status = _batch_status(on_demand_job)
        refused = _refused_calls(plane)
    # THEN the stage settled on the Spot attempt's work: the On-Demand job was ended before it ran, so that the work
    # was not done again (from nothing: a job's success cleans its checkpoints), and the run succeeded
    assert not errored and told["status"] == "settled"
    assert status == "SUCCEEDED"
    assert [(a.capacity, a.status, a.started_at is not None) for a in preprocess] == [
        ("spot", "SUCCEEDED", True),
        ("on-demand", "FAILED", False),
    ]
    assert preprocess[1].failure_class == "cancelled_by_control_plane" and on_demand_status == "FAILED"
    assert refused == {}


def test_a_handler_that_dies_after_ending_the_on_demand_job_leaves_its_end_to_settle_the_stage(monkeypatch, tmp_path):
    with OfflineControlPlane(trace=steady_trace(tmp_path, 4), stage_hours=QUICK_STAGES) as plane:
        # GIVEN preprocess's Spot job done, the stage requeued to On-Demand before its success was told, and the
        # handler of that success dying once after it ended the On-Demand job, before it settled the stage
        succeeded, [on_demand_job] = _requeued_as_it_succeeds(plane)
        died = _settling_a_stage_dies_once(monkeypatch, RuntimeExitError("Runtime exited: out of memory"))
        _, errored = plane.invoke("BatchStateChangeFunction", succeeded)
        # WHEN the On-Demand job's end (terminated) is told, and the run goes its course
        status = plane.run_until_settled(max_hours=12)
        _, preprocess = _attempts(plane, "preprocess")
        on_demand_status = _batch_status(on_demand_job)
    # THEN that end settled the stage on the Spot attempt's work, and the run succeeded without running it again
    assert errored and died == ["preprocess"]
    assert status == "SUCCEEDED"
    assert [(a.capacity, a.status, a.started_at is not None) for a in preprocess] == [
        ("spot", "SUCCEEDED", True),
        ("on-demand", "FAILED", False),
    ]
    assert on_demand_status == "FAILED"


def test_a_spot_job_whose_success_is_told_while_its_requeue_submits_ends_the_on_demand_one(tmp_path):
    with OfflineControlPlane(trace=steady_trace(tmp_path, 4), stage_hours=QUICK_STAGES) as plane:
        # GIVEN preprocess's Spot job done, its success held back, and the stage being requeued to On-Demand
        succeeded, svc, run, stage, spot_job = _spot_success_held_back(plane)
        submit = svc.batch.submit
        told: list[dict] = []

        def success_told_first(request):
            # WHEN the Spot job's success is told after the requeue claimed the next attempt, before its SubmitJob
            told.append(plane.invoke("BatchStateChangeFunction", succeeded)[0])
            return submit(request)

        svc.batch.submit = success_told_first  # type: ignore[method-assign]
        requeue_to_on_demand(svc, run, stage, spot_job, "deadline at risk")
        # ... and the run goes its course
        status = plane.run_until_settled(max_hours=12)
        _, preprocess = _attempts(plane, "preprocess")
        on_demand_status = _batch_status(preprocess[1].job_id)
        refused = _refused_calls(plane)
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages]
    # THEN the stage settled on the Spot attempt's work, and the On-Demand job submitted after was ended before it
    # ran: left alone, it did the whole stage again on On-Demand, from nothing, for a stage already done
    assert [result["status"] for result in told] == ["settled"] and status == "SUCCEEDED"
    assert [(a.capacity, a.status, a.started_at is not None) for a in preprocess] == [
        ("spot", "SUCCEEDED", True),
        ("on-demand", "FAILED", False),
    ]
    assert on_demand_status == "FAILED" and refused == {}
    # AND no one was told of a move to On-Demand that never ran
    assert [text for text in sent if text.startswith("Requeued to On-Demand")] == []


def test_hpc_in_shards_mode_runs_as_an_array_job_on_spot(tmp_path):
    # GIVEN a trace with Spot capacity for 4 nodes throughout, and an upload asking for 3 independent HPC shards
    with OfflineControlPlane(trace=steady_trace(tmp_path, 4), stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/shards.csv", b"a\n1\n", {"deadline-hours": "12", "hpc-mode": "shards", "hpc-nodes": "3"})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        _, hpc = _attempts(plane, "hpc")
        job = plane.batch.jobs[hpc[-1].job_id]
        env = {stage: plane.batch.jobs[_attempts(plane, stage)[1][-1].job_id].environment for stage in STAGE_NAMES}
        upload = f"s3://{plane.bucket}/incoming/shards.csv"
    # THEN the HPC stage ran on the Spot queue as an array of 3 shards (only multi-node jobs are On-Demand only)
    assert status == "SUCCEEDED"
    assert hpc[-1].capacity == "spot" and "SpotJobQueue" in hpc[-1].queue
    assert job.array_size == 3 and not job.is_multinode
    # and each shard learns how many shards there are, and every stage reads what the stage before it wrote
    assert job.environment["SPOT_CHECKPOINT_PARTS"] == "3"
    assert env["preprocess"]["INPUT_URI"] == upload
    assert env["hpc"]["INPUT_URI"] == env["preprocess"]["OUTPUT_URI"] + "sources.csv"
    assert env["postprocess"]["INPUT_URI"] == env["hpc"]["OUTPUT_URI"]
    assert len({env[stage]["OUTPUT_URI"] for stage in STAGE_NAMES}) == 3


def test_a_stage_that_can_no_longer_make_the_runs_deadline_is_notified_once_on_any_capacity(tmp_path):
    # GIVEN Spot capacity throughout and a deadline barely above the work (1.5 h of stages in 1.7 h)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=QUICK_STAGES) as plane:
        upload_quick_run(plane, 1.7)
        # WHEN the run goes its course (the SLA guard looks at every active stage every 5 minutes)
        plane.run_until_settled(max_hours=4)
        run, _ = _attempts(plane, "preprocess")
        slack = [n for n in run_report(control_plane_services(plane), run)["notifications"] if n["channel"] == "slack"]
    # THEN Slack heard "SLA at risk" once per stage at risk, the On-Demand-only HPC stage included
    at_risk = [n["text"] for n in slack if n["kind"] == "sla_at_risk"]
    stages = [text.split("| stage ")[1].split(" |")[0] for text in at_risk]
    assert "hpc" in stages and len(stages) == len(set(stages))


def test_a_roomy_deadline_puts_no_stage_at_risk_the_multinode_one_included(tmp_path):
    # GIVEN Spot capacity throughout and 1.5 h of stages due in 10 h (the multi-node HPC stage, On-Demand only, gets
    # none of the slack: its share is its compute and a changeover)
    # WHEN the run goes its course
    status, _, report = _quick_run(tmp_path, spot_nodes=1, deadline_hours=10, max_hours=12)
    # THEN no stage was told at risk: each could still finish long before the run's deadline needed it
    assert status == "SUCCEEDED" and report["deadline_met"] is True
    assert [n["text"] for n in report["notifications"] if n["kind"] == "sla_at_risk"] == []


def test_a_spot_job_placed_with_little_slack_is_moved_before_its_wait_counts_as_no_capacity(tmp_path):
    # GIVEN no Spot capacity, and a preprocess placed on Spot with about 0.2 h of slack (two changeovers and a bit):
    # the policy counted on being asked again at the SLA guard's next pass, five minutes on, while a wait counts as
    # a want of capacity only after ten
    stages = {"preprocess": 0.5, "hpc": 0.5, "postprocess": 0.02}
    with OfflineControlPlane(trace=steady_trace(tmp_path, 0), stage_hours=stages) as plane:
        hours = ",".join(f"{name}={hours}" for name, hours in stages.items())
        plane.upload("incoming/tight.csv", b"a\n1\n", {"deadline-hours": "1.54", "stage-hours": hours})
        # WHEN the run goes its course
        plane.run_until_settled(max_hours=4)
        run, preprocess = _attempts(plane, "preprocess")
        report = run_report(control_plane_services(plane), run)
    # THEN the guard rail moved it to On-Demand at the first pass that could no longer wait, and the deadline was met
    assert preprocess[0].capacity == "spot" and preprocess[0].cancel_reason == "requeue_to_on_demand"
    assert report["deadline_met"] is True


def _shards_run(plane: OfflineControlPlane, deadline_hours: float, hpc_hours: float = 0.5) -> None:
    """Three half-hour stages (HPC `hpc_hours`) under `deadline_hours`, the HPC stage as 3 independent shards."""
    stage_hours = f"preprocess=0.5,hpc={hpc_hours},postprocess=0.5"
    metadata = {"deadline-hours": str(deadline_hours), "stage-hours": stage_hours}
    plane.upload("incoming/shards.csv", b"a\n1\n", {**metadata, "hpc-mode": "shards", "hpc-nodes": "3"})


def _ended_shards(array_job_id: str) -> list[dict]:
    """The array's shards that ended, as DescribeJobs tells them."""
    batch = boto3.client("batch", region_name=REGION)
    return [
        job
        for state in ("SUCCEEDED", "FAILED")
        for summary in batch.list_jobs(arrayJobId=array_job_id, jobStatus=state)["jobSummaryList"]
        for job in batch.describe_jobs(jobs=[summary["jobId"]])["jobs"]
    ]


def test_shards_waiting_for_spot_are_moved_to_on_demand_in_time_and_billed_for_their_own_runs(tmp_path):
    # GIVEN Spot capacity for 2 nodes only, and 3 HPC shards under a deadline with little slack
    with OfflineControlPlane(trace=steady_trace(tmp_path, 2), stage_hours=QUICK_STAGES) as plane:
        _shards_run(plane, deadline_hours=2.5)
        # WHEN the run goes its course (the array's parent stays PENDING; its third shard waits RUNNABLE)
        status = plane.run_until_settled(max_hours=6)
        run, hpc = _attempts(plane, "hpc")
        report = run_report(control_plane_services(plane), run)
        shards = _ended_shards(hpc[0].job_id)
    # THEN the waiting shard was noticed, the array requeued to On-Demand, and the deadline met
    assert status == "SUCCEEDED" and report["deadline_met"] is True
    assert [(a.capacity, a.status, a.cancel_reason) for a in hpc] == [
        ("spot", "FAILED", "requeue_to_on_demand"),
        ("on-demand", "SUCCEEDED", None),
    ]
    # AND the Spot array is billed for the seconds its two shards ran, each on its own instance (at least a minute
    # each), not for three instances over the array's whole span (the third never ran)
    ran = [max(60, math.ceil((s["stoppedAt"] - s["startedAt"]) / 1000)) for s in shards if s.get("startedAt")]
    assert len(shards) == 3 and len(ran) == 2
    spot = report["stages"][1]["attempts"][0]
    assert spot["instance_seconds"] == sum(ran)
    assert spot["cost_usd"] == pytest.approx(spot["usd_per_hour"] / 3 * sum(ran) / 3600, abs=1e-6)
    span = (spot["stopped_hours"] - spot["started_hours"]) * spot["usd_per_hour"]
    assert spot["cost_usd"] < span and check_run_report_costs(report) == []


def _third_node_reclaimed_for_half_an_hour(tmp_path) -> Path:
    """Capacity for 3 nodes, then for 2 from an hour on for half an hour, then for 3 again."""
    return trace_file(tmp_path, "dip", [3] * 10 + [2] * 3 + [3] * 500)


def test_a_reclaimed_shard_replaces_the_array_as_a_reclaim_without_spending_retries(tmp_path):
    # GIVEN 3 HPC shards of 2 h on Spot, and the third node reclaimed an hour into them, for half an hour
    trace = _third_node_reclaimed_for_half_an_hour(tmp_path)
    with OfflineControlPlane(trace=trace, stage_hours={**QUICK_STAGES, "hpc": 2.0}) as plane:
        _shards_run(plane, deadline_hours=12, hpc_hours=2.0)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        _, hpc = _attempts(plane, "hpc")
        ledger = control_plane_services(plane).ledger
        stage = ledger.get_stage(hpc[0].run_id, "hpc")
        indexed = {i: [ref.job_id for ref in ledger.jobs_on_instance(i)] for i in hpc[0].instance_ids}
        refused = _refused_calls(plane)
    # THEN each shard's instance is known (for its interruption warning), the array was ended and placed again as
    # a reclaim (no retry spent), and the second array resumed from the shards' checkpoints
    assert status == "SUCCEEDED" and stage is not None and stage.app_retries_used == 0
    assert len(indexed) == 3 and all(jobs == [hpc[0].job_id] for jobs in indexed.values())
    assert hpc[0].failure_class in ("spot_reclaim", "checkpointed_interruption")
    assert hpc[0].shard_failure == hpc[0].failure_class
    assert hpc[-1].status == "SUCCEEDED" and hpc[-1].resumed_from_checkpoint
    # AND every AWS call on the way (ending the array is a TerminateJob by the Batch handler) is one its role allows
    assert refused == {}


def test_an_arrays_end_told_before_its_reclaimed_shards_is_still_a_reclaim(tmp_path):
    # GIVEN 3 HPC shards of 2 h on Spot, the third node reclaimed an hour into them, and EventBridge delivering the
    # array's FAILED event before its shards' (it keeps no order)
    trace = _third_node_reclaimed_for_half_an_hour(tmp_path)
    with OfflineControlPlane(trace=trace, stage_hours={**QUICK_STAGES, "hpc": 2.0}) as plane:
        deliver = plane.bus.put
        held_back: list[dict] = []

        def shards_after_their_array(event):
            detail = event.get("detail", {})
            if event["source"] != "aws.batch" or detail.get("status") != "FAILED":
                return deliver(event)
            if ":" in detail["jobId"]:  # a shard's end ("<array id>:<index>"): held back until its array's is told
                held_back.append(event)
                return []
            deliveries = deliver(event)
            for shard in held_back:
                deliveries += deliver(shard)
            held_back.clear()
            return deliveries

        plane.bus.put = shards_after_their_array  # type: ignore[method-assign]
        _shards_run(plane, deadline_hours=12, hpc_hours=2.0)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        _, hpc = _attempts(plane, "hpc")
        stage = control_plane_services(plane).ledger.get_stage(hpc[0].run_id, "hpc")
        refused = _refused_calls(plane)
    # THEN the array's failure was asked of its failed shards: a reclaim, placed again without spending a retry
    assert status == "SUCCEEDED" and stage is not None and stage.app_retries_used == 0
    assert hpc[0].status == "FAILED" and hpc[0].failure_class in ("spot_reclaim", "checkpointed_interruption")
    assert hpc[-1].status == "SUCCEEDED" and hpc[-1].resumed_from_checkpoint
    # AND listing the shards (ListJobs by arrayJobId) is a call the Batch handler's role allows
    assert refused == {}


@pytest.mark.parametrize("failing_stages", [{}, {"preprocess": 3}], ids=["succeeded", "failed"])
def test_a_run_whose_notify_task_failed_past_its_retries_is_settled_and_told_by_the_guard(monkeypatch, failing_stages):
    # GIVEN DynamoDB throttling the notify task's four attempts at the run's end (its retries wait 2+4+8 s, of virtual
    # time), so that the state machine's Catch ends the execution with the run's end untold
    real_finish_run = Ledger.finish_run
    throttled: list[str] = []

    def throttled_four_times(self, run_id, status, error=None, **when):
        if len(throttled) < 4:
            throttled.append(run_id)
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "UpdateItem")
        return real_finish_run(self, run_id, status, error, **when)

    monkeypatch.setattr(Ledger, "finish_run", throttled_four_times)
    with OfflineControlPlane(
        start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES, failing_stages=failing_stages
    ) as plane:
        plane.upload("incoming/untold.csv", b"a\n1\n", {"deadline-hours": "6"})
        status = plane.run_until_settled(max_hours=6)
        svc = control_plane_services(plane)
        untold = svc.ledger.list_runs()[-1].status
        # WHEN the SLA guard's next pass comes
        plane.step(minutes=5)
        guard_pass_at = plane.clock.now()
        run = svc.ledger.list_runs()[-1]
        open_runs = list(svc.ledger.open_runs())
        told = [message.get("text", "") for message in plane.webhook.delivered_messages]
        last_stop = max(a.stopped_at or "" for a in svc.ledger.get_run_items(run.run_id)[1])
    # THEN the run was settled as its execution ended, and the team told of it, once
    expected = "FAILED" if failing_stages else "SUCCEEDED"
    assert len(throttled) == 4 and status == expected and untold == "RUNNING"
    assert run.status == expected and open_runs == []
    assert sum(text.startswith(f"Pipeline {expected.lower()}") for text in told) == 1, told
    # AND a run that succeeded finished when its last stage did, not at the pass that settled it (minutes later, which
    # could read as a deadline missed); a failed one at the pass that stopped it
    assert run.finished_at == (format_time(guard_pass_at) if failing_stages else last_stop)
    assert last_stop < format_time(guard_pass_at)


# ------------------------------------------------------------------ a run that ends without its stages
def _batch_status(job_id: str) -> str:
    return str(boto3.client("batch", region_name=REGION).describe_jobs(jobs=[job_id])["jobs"][0]["status"])


def test_an_aborted_execution_fails_the_run_and_the_guard_stops_its_job():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot
        run, attempts = _preprocess_running_on_spot(plane, "incoming/aborted.csv")
        # WHEN a user aborts the execution (no failure notice runs) and the SLA guard comes round
        boto3.client("stepfunctions", region_name=REGION).stop_execution(executionArn=run.execution_arn)
        plane.step(minutes=10)
        plane.step(minutes=10)
        svc = control_plane_services(plane)
        settled = svc.ledger.get_run(run.run_id)
        stage = svc.ledger.get_stage(run.run_id, "preprocess")
        job_status = _batch_status(attempts[-1].job_id)
        _, after = _attempts(plane, "preprocess")
        active = [s.stage for s in svc.ledger.active_stages() if s.run_id == run.run_id]
        texts = [m.get("text") or "" for m in plane.webhook.delivered_messages]
        refused = _refused_calls(plane)
    # THEN the run is failed for its execution, its job terminated, not replaced, and out of the guard's watch
    assert settled is not None and settled.status == "FAILED" and "ExecutionABORTED" in (settled.error or "")
    assert stage is not None and stage.status == "FAILED" and active == []
    assert job_status == "FAILED" and len(after) == len(attempts)
    assert after[-1].failure_class == "cancelled_by_control_plane"
    # AND the team is told, and every call on the way is one the guard's role allows
    assert any("failed" in t and "preprocess was still on attempt 1" in t for t in texts), texts
    assert refused == {}


def test_a_run_aborted_while_its_runner_submits_the_first_job_has_that_job_terminated_by_the_runner(monkeypatch):
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN a user aborting the execution, and an SLA guard pass settling its run, while the stage runner submits
        # preprocess's first job: the guard stops the stage before the runner records the job, so finds none to end
        svc = control_plane_services(plane)
        real_submit = BatchGateway.submit
        submitted: list[str] = []

        def abort_and_settle(run_id: str) -> None:
            execution_arn = svc.ledger.get_run(run_id).execution_arn
            boto3.client("stepfunctions", region_name=REGION).stop_execution(executionArn=execution_arn)
            run_guard(svc)

        def submit_as_the_run_is_aborted(self, request):
            job_id = real_submit(self, request)
            if not submitted:
                submitted.append(job_id)
                # Another Lambda's pass: its calls are not the runner's.
                guard_pass = threading.Thread(target=abort_and_settle, args=(request.environment["RUN_ID"],))
                guard_pass.start()
                guard_pass.join()
            return job_id

        monkeypatch.setattr(BatchGateway, "submit", submit_as_the_run_is_aborted)
        # WHEN the runner, back from SubmitJob, records the job
        plane.upload("incoming/aborted-early.csv", b"a\n1\n", {"deadline-hours": "40", "stage-hours": "preprocess=4"})
        plane.step(minutes=10)
        run = svc.ledger.list_runs()[-1]
        _, attempts = _attempts(plane, "preprocess")
        job_status = _batch_status(submitted[0])
        refused = _refused_calls(plane)
    # THEN the run failed for its execution, and the job nothing else would come back to is terminated, by a call the
    # runner's role allows (refused, the job would run its whole stage for a run that has ended)
    assert run.status == "FAILED" and "ExecutionABORTED" in (run.error or "")
    assert [a.job_id for a in attempts] == submitted and attempts[0].failure_class == "cancelled_by_control_plane"
    assert job_status == "FAILED"
    assert refused == {}


def test_a_failure_notice_for_a_stage_still_running_terminates_its_job():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot
        run, attempts = _preprocess_running_on_spot(plane, "incoming/timeout.csv")
        # WHEN the state machine gives up on the stage (its wait timed out) and sends the failure notice, twice
        payload = {"run_id": run.run_id, "outcome": "failed", "error": {"Error": "States.Timeout", "Cause": ""}}
        seen = len(plane.webhook.delivered_messages)
        _, first_errored = plane.invoke("NotifyFunction", payload)
        _, again_errored = plane.invoke("NotifyFunction", payload)
        plane.step(minutes=10)
        svc = control_plane_services(plane)
        stage = svc.ledger.get_stage(run.run_id, "preprocess")
        job_status = _batch_status(attempts[-1].job_id)
        _, after = _attempts(plane, "preprocess")
        refused = _refused_calls(plane)
        failed_notices = [m for m in plane.webhook.delivered_messages[seen:] if run.run_id in (m.get("text") or "")]
    # THEN the stage's job is terminated and not replaced, and the notify function may do so
    assert stage is not None and stage.status == "FAILED" and (stage.failure or "").startswith("run failed")
    assert job_status == "FAILED" and len(after) == len(attempts)
    assert refused == {}
    # AND both deliveries of the notice succeeded, and the team was told once
    assert not first_errored and not again_errored
    assert len(failed_notices) == 1 and "failed" in failed_notices[0]["text"], failed_notices


# ------------------------------------------------------------------ the run-end notice
def test_a_run_end_notice_whose_notifier_died_before_its_deadline_is_sent_once_its_claim_lapses(monkeypatch):
    from spot_hpc import notifier

    with OfflineControlPlane(
        start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES, failing_stages={"preprocess": 3}
    ) as plane:
        # GIVEN the notify function's first invocation dying as it sends the run's failure notice, after claiming
        # it and well before its deadline: a dead process runs no `except`, so the claim is not given back
        real_deliver, real_release = notifier.deliver_notification, notifier._release_claim
        dying: list[str] = []  # the run whose notice the dead invocation claimed
        dead = {"now": False}

        def die_once(notification, **channels):
            if notification.kind == "failed" and not dying:
                dying.append(notification.run_id)
                dead["now"] = True
                raise RuntimeExitError("Runtime exited: out of memory")
            return real_deliver(notification, **channels)

        def release_unless_dead(svc, dedupe_key, claim):
            if dead["now"]:
                dead["now"] = False
                return
            real_release(svc, dedupe_key, claim)

        monkeypatch.setattr(notifier, "deliver_notification", die_once)
        monkeypatch.setattr(notifier, "_release_claim", release_unless_dead)
        # WHEN a run whose preprocess fails for good goes its course
        plane.upload("incoming/died.csv", b"a\n1\n", {"deadline-hours": "6"})
        status = plane.run_until_settled(max_hours=6)
        execution = plane.executions()[0]
        errors = [
            details["error"]
            for event in plane.history(execution["executionArn"])
            for name, details in event.items()
            if name.endswith("FailedEventDetails") and "error" in details
        ]
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages]
    # THEN the retry that found the dead invocation's claim failed (retried) instead of succeeding without a notice
    assert status == "FAILED" and dying
    assert "RuntimeExitError" in errors and "NotificationClaimHeld" in errors, errors
    # AND once the claim lapsed a retry sent the notice: the team was told once
    failed_notices = [text for text in sent if text.startswith("Pipeline failed") and dying[0] in text]
    assert len(failed_notices) == 1, sent


def test_a_run_end_notice_whose_notifier_died_with_no_retry_to_come_is_sent_and_counted_by_the_next_guard_pass(
    monkeypatch,
):
    from datetime import timedelta

    from spot_hpc import notifier, outcome

    counted: list[str] = []
    monkeypatch.setattr(outcome, "record_settled_run", lambda metrics, report: counted.append(report["run_id"]))
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=LONG_PREPROCESS) as plane:
        # GIVEN preprocess running on Spot, and the run's failure notice (its stage timed out) claimed by a notify
        # invocation that died before sending it: a dead process gives no claim back, and no retry of it comes
        run, _ = _preprocess_running_on_spot(plane, "incoming/orphaned.csv")
        payload = {"run_id": run.run_id, "outcome": "failed", "error": {"Error": "States.Timeout", "Cause": ""}}

        def die(notification, **channels):
            raise RuntimeExitError("Runtime exited: out of memory")

        with monkeypatch.context() as patched:
            patched.setattr(notifier, "deliver_notification", die)
            patched.setattr(notifier, "_release_claim", lambda svc, dedupe_key, claim: None)
            _, died = plane.invoke("NotifyFunction", payload)
        seen = len(plane.webhook.delivered_messages)
        # WHEN the invocation's lease has lapsed and the SLA guard's schedule fires, and fires again
        plane.clock.advance(timedelta(seconds=62))
        first, first_errored = plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        second, second_errored = plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
        sent = [m.get("text") or "" for m in plane.webhook.delivered_messages[seen:]]
        notes = run_report(control_plane_services(plane), run)["notifications"]
        refused = _refused_calls(plane)
    # THEN the first pass sent the notice, late, once, and counted the run its dead sender never counted
    assert died and not first_errored and not second_errored
    assert first["orphaned_notices"]["sent"] == 1 and second["orphaned_notices"]["sent"] == 0
    failed = [text for text in sent if "Pipeline failed" in text and run.run_id in text]
    assert len(failed) == 1 and failed[0].startswith("Delayed notice: first due 2026-01-05 "), sent
    assert [r["run_id"] for r in first["settled_runs"]] == [run.run_id] and second["settled_runs"] == []
    assert counted == [run.run_id]
    assert ("sns", "failed", "delivered late") in [(n["channel"], n["kind"], n["status"]) for n in notes]
    # AND every call the guard made on the way is one its role allows
    assert refused == {}


@pytest.mark.parametrize(("capacity_ticks", "charged"), [(3, False), (9, True)])
def test_a_spot_job_reclaimed_in_its_instances_first_hour_is_not_charged(tmp_path, capacity_ticks, charged):
    # GIVEN Spot capacity for 30 minutes (or 90), then none for 20 minutes, under a 4-hour preprocess with a roomy
    # deadline: the Spot job is reclaimed half an hour (or an hour and a half) after its instance was launched
    trace = trace_file(tmp_path, "reclaimed", [1] * capacity_ticks + [0, 0] + [1] * 500)
    with OfflineControlPlane(trace=trace, stage_hours=LONG_PREPROCESS) as plane:
        plane.upload("incoming/reclaimed.csv", b"a\n1\n", {"deadline-hours": "40", "stage-hours": "preprocess=4"})
        # WHEN the reclaim's events are handled, and the SLA guard's passes of the next ten minutes have looked at
        # the instance (its job may have stopped on the notice before EC2 took it)
        _run_until(plane, lambda: any(a.failure_class for a in _attempts(plane, "preprocess")[1]))
        for _ in range(10):
            plane.step()
        run, _ = _attempts(plane, "preprocess")
        report = run_report(control_plane_services(plane), run)
        refused = _refused_calls(plane)
    # THEN the reclaimed attempt costs nothing when the reclaim came in the instance's first hour (AWS charges
    # nothing then), and its billed run time otherwise; the report's figures agree with themselves
    reclaimed = report["stages"][0]["attempts"][0]
    assert reclaimed["capacity"] == "spot" and reclaimed["failure_class"] in RECLAIM_CLASSES
    assert reclaimed.get("interrupted_in_first_hour", False) is not charged
    ran_hours = reclaimed["stopped_hours"] - reclaimed["started_hours"]
    assert reclaimed["cost_usd"] == (pytest.approx(ran_hours * reclaimed["usd_per_hour"], abs=1e-3) if charged else 0)
    assert check_run_report_costs(report) == []
    assert refused == {}


def test_a_warned_job_stopped_before_its_reclaim_leaves_its_instance_to_ec2_which_takes_it_on_time(tmp_path):
    # GIVEN a container job on the Spot queue, outside any pipeline, warned of the trace's drop at 30 minutes
    trace = trace_file(tmp_path, "drop", [1] * 3 + [0] * 200)
    with OfflineControlPlane(trace=trace) as plane:
        batch = boto3.client("batch", region_name=REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        job_id = submit_probe(plane, "probe-spot-stopped", "SpotJobQueue", "PreprocessJobDefinition")
        for _ in range(40):
            if plane.batch.jobs[job_id].warned_at is not None:
                break
            plane.step()
        instance_id = plane.batch.jobs[job_id].instance_id

        def described() -> tuple[str, str | None]:
            instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            return instance["State"]["Name"], instance.get("StateReason", {}).get("Code")

        # WHEN it is terminated on the warning (a requeue), and the warning's two minutes then pass
        batch.terminate_job(jobId=job_id, reason="spot-hpc: requeued to On-Demand (probe)")
        plane.step()
        stopped = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        when_it_stopped = described()
        for _ in range(3):
            plane.step()
        after_the_reclaim = described()
    # THEN the job stopped on the SIGTERM while its instance still ran, and EC2 took the instance on time all the same
    assert (stopped["status"], stopped["container"]["exitCode"]) == ("FAILED", 87)
    assert when_it_stopped[0] == "running"
    assert after_the_reclaim == ("terminated", "Server.SpotInstanceTermination")


def test_a_shard_reclaimed_in_its_instances_first_hour_is_not_charged(tmp_path):
    # GIVEN 3 HPC shards of 2 h on Spot, and the third node reclaimed about 40 minutes into them (70 minutes into the
    # trace, the shards starting after a half-hour preprocess)
    trace = trace_file(tmp_path, "early-dip", [3] * 7 + [2] * 3 + [3] * 500)
    with OfflineControlPlane(trace=trace, stage_hours={**QUICK_STAGES, "hpc": 2.0}) as plane:
        _shards_run(plane, deadline_hours=12, hpc_hours=2.0)
        # WHEN the array has ended for the reclaim (the warned shard checkpointed and exited, the others were ended)
        _run_until(plane, lambda: any(a.failure_class for a in _attempts(plane, "hpc")[1]))
        run, hpc = _attempts(plane, "hpc")
        report = run_report(control_plane_services(plane), run)
        warned = {text.split()[-1] for _, text in plane.batch.timeline if "Spot interruption notice" in text}
        shards = _ended_shards(hpc[0].job_id)
        on_instance = control_plane_services(plane).batch.instances_of(
            shard["container"]["containerInstanceArn"] for shard in shards
        )
        refused = _refused_calls(plane)
    # THEN the shard on the warned instance, which EC2 took back within its first hour, costs nothing: the array is
    # billed for its other two shards' runs alone
    reclaimed = [s for s in shards if on_instance[s["container"]["containerInstanceArn"]] in warned]
    others = [s for s in shards if s not in reclaimed]
    assert len(warned) == 1 and len(reclaimed) == 1 and len(others) == 2
    assert reclaimed[0]["stoppedAt"] - reclaimed[0]["startedAt"] < 3600 * 1000
    stage = report["stages"][1]
    array = stage["attempts"][0]
    ran = {id(s): max(60, math.ceil((s["stoppedAt"] - s["startedAt"]) / 1000)) for s in shards}
    assert array["instance_seconds"] == sum(ran[id(s)] for s in others)
    # AND the array's row tells the seconds all three shards ran, and the stage (not succeeded yet) counts all three
    # in its On-Demand-only hours (On-Demand would have billed the reclaimed shard's run too), with the run time so
    # far of the attempts after it
    after = sum(
        (row["stopped_hours"] if row["stopped_hours"] is not None else report["as_of_hours"]) - row["started_hours"]
        for row in stage["attempts"][1:]
        if row["started_hours"] is not None
    )
    assert stage["status"] == "RUNNING" and array["run_seconds"] == sum(ran.values())
    assert stage["on_demand_only_hours"] == pytest.approx(sum(ran.values()) / 3 / 3600 + after, abs=1e-6)
    assert check_run_report_costs(report) == [] and refused == {}


def test_a_job_that_ran_before_on_an_instance_interrupted_in_its_first_hour_is_not_charged(tmp_path):
    # GIVEN Batch placing a job on an idle instance of its compute environment, Spot capacity for 50 minutes then
    # none for 20, and a run of a quarter-hour preprocess, a quarter-hour (On-Demand, multi-node) HPC stage and a
    # half-hour postprocess: the postprocess's Spot job goes to the instance the preprocess ran on, and EC2 takes it
    # back within the instance's first hour
    trace = trace_file(tmp_path, "reclaimed", [1] * 5 + [0, 0] + [1] * 500)
    stages = {"preprocess": 0.25, "hpc": 0.25, "postprocess": 0.5}
    with OfflineControlPlane(trace=trace, stage_hours=stages) as plane:
        plane.batch.reuses_idle_instances = True
        hours = ",".join(f"{name}={hours}" for name, hours in stages.items())
        plane.upload("incoming/reused.csv", b"a\n1\n", {"deadline-hours": "40", "stage-hours": hours})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=6)
        run, preprocess = _attempts(plane, "preprocess")
        _, postprocess = _attempts(plane, "postprocess")
        report = run_report(control_plane_services(plane), run)
        refused = _refused_calls(plane)
    # THEN the preprocess, which succeeded on that instance before, costs nothing either (AWS bills none of an
    # instance it interrupts in its first hour): the run's cost is its other attempts', and it saved that much more
    assert status == "SUCCEEDED"
    assert postprocess[0].instance_ids == preprocess[0].instance_ids
    assert postprocess[0].failure_class in RECLAIM_CLASSES and postprocess[0].interrupted_in_first_hour
    rows = {stage["name"]: stage["attempts"] for stage in report["stages"]}
    earlier = rows["preprocess"][0]
    billed = (earlier["stopped_hours"] - earlier["started_hours"]) * earlier["usd_per_hour"]
    assert earlier["status"] == "SUCCEEDED" and billed > 0.01
    assert (earlier["cost_usd"], earlier.get("interrupted_in_first_hour")) == (0.0, True)
    others = sum(row["cost_usd"] for name in ("hpc", "postprocess") for row in rows[name])
    assert report["cost_usd"] == pytest.approx(others, abs=1e-6)
    assert check_run_report_costs(report) == []
    # AND every AWS call on the way is one its role allows
    assert refused == {}


def test_shards_starting_at_once_each_keep_their_instance_on_the_array(monkeypatch, tmp_path):
    # GIVEN three HPC shards starting at once, each start's Batch event handled by its own invocation that read the
    # array's attempt before the others wrote theirs (the list of its instances read empty by all three)
    stale = {"reads": True}
    read_attempt = Ledger.get_attempt

    def read_before_the_others(self, run_id, stage, attempt):
        found = read_attempt(self, run_id, stage, attempt)
        return replace(found, instance_ids=[]) if found and stage == "hpc" and stale["reads"] else found

    monkeypatch.setattr(Ledger, "get_attempt", read_before_the_others)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 3), stage_hours={**QUICK_STAGES, "hpc": 2.0}) as plane:
        _shards_run(plane, deadline_hours=12, hpc_hours=2.0)
        # WHEN every shard has started
        batch = boto3.client("batch", region_name=REGION)

        def shards_running() -> list[dict]:
            hpc = _attempts(plane, "hpc")[1]
            if not hpc or not hpc[0].job_id:
                return []
            listed = batch.list_jobs(arrayJobId=hpc[0].job_id, jobStatus="RUNNING")["jobSummaryList"]
            return [job for summary in listed for job in batch.describe_jobs(jobs=[summary["jobId"]])["jobs"]]

        _run_until(plane, lambda: len(shards_running()) == 3)
        stale["reads"] = False
        hpc = _attempts(plane, "hpc")[1][0]
        on_instance = control_plane_services(plane).batch.instances_of(
            shard["container"]["containerInstanceArn"] for shard in shards_running()
        )
    # THEN the array's attempt names all three instances (asked at its end whether EC2 took one back in its first
    # hour): no start's write replaced another's
    assert len(set(on_instance.values())) == 3
    assert sorted(hpc.instance_ids) == sorted(on_instance.values())


def test_a_spot_job_is_priced_on_the_instance_type_it_got(tmp_path):
    # GIVEN the Spot compute environment launching an m6i.4xlarge, its fourth instance type (the placement prices
    # the first, c6i.4xlarge)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=QUICK_STAGES) as plane:
        plane.batch.instance_types["spot"] = "m6i.4xlarge"
        upload_quick_run(plane, 12)
        # WHEN preprocess's Spot job starts, and the run goes its course
        _run_until(plane, lambda: any(a.instance_type for a in _attempts(plane, "preprocess")[1]))
        status = plane.run_until_settled(max_hours=6)
        run, preprocess = _attempts(plane, "preprocess")
        report = run_report(control_plane_services(plane), run)
        settings = control_plane_services(plane).settings
        refused = _refused_calls(plane)
    # THEN its price is the m6i.4xlarge's Spot price in the zone it ran in, which the report bills and names
    book = DataFilePriceBook.from_data_dir(REPO_ROOT / "data")
    spot = preprocess[0]
    assert status == "SUCCEEDED" and spot.capacity == "spot" and spot.status == "SUCCEEDED"
    assert (spot.instance_type, spot.availability_zone is not None) == ("m6i.4xlarge", True)
    assert spot.usd_per_hour == pytest.approx(book.usd_per_hour("m6i.4xlarge", REGION, "spot"))
    assert spot.usd_per_hour != pytest.approx(book.usd_per_hour(settings.spot_instance_type, REGION, "spot"))
    row = report["stages"][0]["attempts"][0]
    assert (row["instance_type"], row["availability_zone"]) == ("m6i.4xlarge", spot.availability_zone)
    assert row["usd_per_hour"] == pytest.approx(spot.usd_per_hour)
    assert check_run_report_costs(report) == [] and refused == {}


def test_an_array_is_billed_for_the_instance_type_its_shards_got(tmp_path):
    # GIVEN the Spot compute environment launching m6i.4xlarge instances, its fourth instance type (the placement
    # prices the first, c6i.4xlarge), for 3 HPC shards of half an hour
    with OfflineControlPlane(trace=steady_trace(tmp_path, 3), stage_hours=QUICK_STAGES) as plane:
        plane.batch.instance_types["spot"] = "m6i.4xlarge"
        _shards_run(plane, deadline_hours=12)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=6)
        run, hpc = _attempts(plane, "hpc")
        report = run_report(control_plane_services(plane), run)
        settings = control_plane_services(plane).settings
        refused = _refused_calls(plane)
    # THEN the array's price is the m6i.4xlarge's Spot price for its three nodes, in the zone they ran in, which
    # the report bills and names
    book = DataFilePriceBook.from_data_dir(REPO_ROOT / "data")
    array = hpc[0]
    assert status == "SUCCEEDED" and (array.capacity, array.status, array.nodes) == ("spot", "SUCCEEDED", 3)
    assert (array.instance_type, array.availability_zone is not None) == ("m6i.4xlarge", True)
    assert array.usd_per_hour == pytest.approx(book.usd_per_hour("m6i.4xlarge", REGION, "spot", nodes=3))
    assert array.usd_per_hour != pytest.approx(book.usd_per_hour(settings.spot_instance_type, REGION, "spot", nodes=3))
    row = report["stages"][1]["attempts"][0]
    assert (row["instance_type"], row["usd_per_hour"]) == ("m6i.4xlarge", pytest.approx(array.usd_per_hour))
    assert check_run_report_costs(report) == [] and refused == {}


def test_a_multinode_job_is_billed_for_the_instances_its_nodes_got(tmp_path):
    # GIVEN the HPC compute environment launching m6i.8xlarge instances (as one that lists several types may; the
    # placement prices the stack's HPC type, c6i.8xlarge) for the two nodes of the multi-node HPC stage
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=QUICK_STAGES) as plane:
        plane.batch.instance_types["on-demand"] = "m6i.8xlarge"
        upload_quick_run(plane, 12)
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=6)
        run, hpc = _attempts(plane, "hpc")
        report = run_report(control_plane_services(plane), run)
        settings = control_plane_services(plane).settings
        job = hpc[-1]
        nodes = boto3.client("batch", region_name=REGION).describe_jobs(jobs=[f"{job.job_id}#{i}" for i in (0, 1)])
        refused = _refused_calls(plane)
    # THEN the job, whose nodes each ran on an instance of their own (Batch tells them of the nodes, not of the job),
    # is priced at the m6i.8xlarge's On-Demand price for both nodes, which the report bills and names
    book = DataFilePriceBook.from_data_dir(REPO_ROOT / "data")
    assert status == "SUCCEEDED" and (job.capacity, job.status, job.nodes) == ("on-demand", "SUCCEEDED", 2)
    assert len({node["container"]["containerInstanceArn"] for node in nodes["jobs"]}) == 2
    assert job.instance_type == "m6i.8xlarge"
    placed = book.usd_per_hour(settings.hpc_instance_type, REGION, "on-demand", nodes=2)
    assert job.usd_per_hour == pytest.approx(book.usd_per_hour("m6i.8xlarge", REGION, "on-demand", nodes=2))
    assert job.usd_per_hour != pytest.approx(placed)
    row = report["stages"][1]["attempts"][-1]
    assert (row["instance_type"], row["usd_per_hour"]) == ("m6i.8xlarge", pytest.approx(job.usd_per_hour))
    assert check_run_report_costs(report) == [] and refused == {}


def test_an_array_whose_shards_instances_cannot_be_told_at_its_end_settles_at_its_placement_price(
    monkeypatch, tmp_path
):
    # GIVEN 3 HPC shards on m6i.4xlarge instances, and ECS throttling every DescribeContainerInstances once they all
    # run (botocore's own retries used up)
    with OfflineControlPlane(trace=steady_trace(tmp_path, 3), stage_hours=QUICK_STAGES) as plane:
        plane.batch.instance_types["spot"] = "m6i.4xlarge"
        _shards_run(plane, deadline_hours=12)
        _run_until(
            plane,
            lambda: len(next(iter(_attempts(plane, "hpc")[1]), SimpleNamespace(instance_ids=[])).instance_ids) == 3,
        )

        def throttled(self, container_instance_arns):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "Describe")

        monkeypatch.setattr(BatchGateway, "instances_of", throttled)
        # WHEN the array ends
        _run_until(plane, lambda: _attempts(plane, "hpc")[1][0].status in TERMINAL_STATUSES)
        monkeypatch.undo()
        status = plane.run_until_settled(max_hours=6)
        run, hpc = _attempts(plane, "hpc")
        report = run_report(control_plane_services(plane), run)
    # THEN the stage settles all the same, its shards billed for their runs at the price it was placed at
    array = hpc[0]
    assert status == "SUCCEEDED" and array.status == "SUCCEEDED" and array.instance_seconds
    placed = DataFilePriceBook.from_data_dir(REPO_ROOT / "data").usd_per_hour("c6i.4xlarge", REGION, "spot", nodes=3)
    assert (array.usd_per_hour, array.instance_type) == (pytest.approx(placed), None)
    assert check_run_report_costs(report) == []


def test_a_start_whose_handler_died_before_pricing_it_is_priced_by_the_retry(monkeypatch, tmp_path):
    # GIVEN the Spot compute environment launching an m6i.4xlarge, and the Batch handler dying right after recording
    # that the Spot job runs, before pricing it on its instance
    died = _die_once_after_recording(monkeypatch, "RUNNING")
    with OfflineControlPlane(trace=steady_trace(tmp_path, 1), stage_hours=QUICK_STAGES) as plane:
        plane.batch.instance_types["spot"] = "m6i.4xlarge"
        upload_quick_run(plane, 12)
        _run_until(plane, lambda: bool(died))
        unpriced = _attempts(plane, "preprocess")[1][0]
        # WHEN Lambda retries the event
        _, result, errored = retry_dead_lettered(plane)
        priced = _attempts(plane, "preprocess")[1][0]
    # THEN the retry, finding the start recorded, prices the attempt on the instance it got
    assert died == ["preprocess"] and not errored and result["status"] == "ignored"
    assert (unpriced.status, unpriced.instance_type) == ("RUNNING", None)
    assert priced.instance_type == "m6i.4xlarge" and priced.usd_per_hour != unpriced.usd_per_hour


# ------------------------------------------------------------------ a multi-node job's child node failing
@pytest.mark.parametrize("node_event", ["told", "lost"])
def test_a_multinode_job_whose_child_node_failed_at_its_start_is_ended_and_placed_again_free(node_event):
    with OfflineControlPlane(
        start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES, failing_nodes={"hpc": (1, EXIT_S3_UNAVAILABLE)}
    ) as plane:
        # GIVEN the multi-node HPC job's node 1 stopping at its start because S3 failed it (exit 88), its main node
        # waiting for that node's part; the node's event told, or lost on its way
        if node_event == "lost":
            deliver = plane.bus.put

            def lose_node_events(event):
                return [] if "#" in event["detail"].get("jobId", "") else deliver(event)

            plane.bus.put = lose_node_events  # type: ignore[method-assign]
        plane.upload("incoming/node.csv", b"a\n1\n", {"deadline-hours": "12"})
        # WHEN the run goes its course
        status = plane.run_until_settled(max_hours=12)
        run, hpc = _attempts(plane, "hpc")
        stage = control_plane_services(plane).ledger.get_stage(run.run_id, "hpc")
        refused = _refused_calls(plane)
    # THEN the job was ended within a guard pass of its start (not at its attempt's timeout, hours later), read as S3
    # failing its start, and placed again without spending a retry; the run succeeded
    first = hpc[0]
    assert first.failure_class == "s3_unavailable" and first.started_at and first.stopped_at
    assert hours_between(parse_time(first.started_at), parse_time(first.stopped_at)) <= 10 / 60
    assert [a.status for a in hpc] == ["FAILED", "SUCCEEDED"]
    assert stage is not None and (stage.app_retries_used, stage.s3_resubmits_used) == (0, 1)
    assert status == "SUCCEEDED"
    # AND every call that took was one the functions' roles allow
    assert refused == {}
