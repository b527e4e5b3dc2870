"""The SLA guard acting on a stage whose job's end the ledger holds ahead of Batch's view (DescribeJobs is read once,
at the start of a pass that may take minutes, and may be seconds stale even then), while the job's own handler records
its end and acts on it, or died having recorded it. The ledger runs on moto, whose conditional writes are evaluated as
DynamoDB's are."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from batch_fakes import DescribedBatch
from function_settings import function_settings
from spot_hpc.clock import format_time
from spot_hpc.events import BatchJobDetail
from spot_hpc.guard import run_guard
from spot_hpc.job_events import apply_job_state
from spot_hpc.ledger import CANCEL_EARLIER_SUCCEEDED, CANCEL_REQUEUE, Attempt, Ledger, Run, Stage
from spot_hpc.run_report import FailureClass

# preprocess (1 h, Spot) before hpc (1 h, shards) and postprocess (10 h): with 13.2 h left, preprocess's share is
# 1.175 h, too little to wait one more pass for Spot and still finish on On-Demand (its changeover 0.1 h), though
# the run's deadline is not at risk (it may finish up to 2 h from now).
HOURS_LEFT = 13.2
CHANGEOVER_HOURS = 0.1


class FlatPrices:
    def usd_per_hour(self, instance_type: str, region: str, capacity: str, **_: Any) -> float:
        return 0.3 if capacity == "spot" else 1.0


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of the notices sent (SNS and Slack are the notifier's tests')."""
    kinds: list[str] = []

    def notify(svc: Any, kind: str, *_: Any, **__: Any) -> bool:
        kinds.append(kind)
        return True

    for module in ("spot_hpc.guard", "spot_hpc.placement", "spot_hpc.job_events"):
        monkeypatch.setattr(f"{module}.notify", notify)
    monkeypatch.setattr("spot_hpc.guard.redeliver_parked_notices", lambda svc, remaining: {"sent": 0})
    monkeypatch.setattr("spot_hpc.guard.send_orphaned_notices", lambda svc, remaining, **_: ({"sent": 0}, []))
    return kinds


def _services(ledger: Ledger, batch: DescribedBatch) -> Any:
    settings = function_settings(CHANGEOVER_HOURS=str(CHANGEOVER_HOURS))
    return SimpleNamespace(settings=settings, ledger=ledger, batch=batch, s3=None, prices=FlatPrices(), pipeline=None)


def _spot_stage_waiting(ledger: Ledger, utc_clock) -> None:
    """Run r1's preprocess on its first attempt, a Spot job that waited 20 minutes for capacity."""
    now = utc_clock.now
    run = Run("r1", "ingest", "incoming/a.csv", "v1", format_time(now + timedelta(hours=HOURS_LEFT)), 14.0,
              format_time(now - timedelta(minutes=30)), {}, hpc_mode="shards")  # fmt: skip
    stages = [
        Stage("r1", "preprocess", 0, 1.0, True, 1),
        Stage("r1", "hpc", 1, 1.0, True, 2),
        Stage("r1", "postprocess", 2, 10.0, True, 1),
    ]
    ledger.create_run(run, stages)
    ledger.claim_attempt("r1", "preprocess", 0, capacity="spot")
    waiting_since = format_time(now - timedelta(minutes=20))
    ledger.record_attempt(Attempt("r1", "preprocess", 1, "job-1", "spot", "spot", 1, waiting_since, status="RUNNABLE"))
    ledger.update_stage("r1", "preprocess", spot_waiting_since=waiting_since)


def test_the_waiting_spot_stage_is_requeued_by_the_guard(ledger: Ledger, utc_clock, told) -> None:
    # GIVEN the Spot stage waiting 20 minutes, too long for its share of the deadline, Batch and the ledger agreeing
    _spot_stage_waiting(ledger, utc_clock)
    batch = DescribedBatch({"job-1": "RUNNABLE"})

    # WHEN the guard runs a pass
    result = run_guard(_services(ledger, batch))

    # THEN it moves the stage to On-Demand, telling of it
    assert [a["action"] for a in result["actions"]] == ["requeued to On-Demand"]
    assert [job.queue for job in batch.submitted] == ["on-demand"] and batch.terminated == ["job-1"]
    assert told == ["requeued"]


def test_a_job_whose_end_the_ledger_has_recorded_is_not_requeued_on_batchs_older_view(
    ledger: Ledger, utc_clock, told
) -> None:
    # GIVEN the waiting Spot stage, whose job has since failed with an application error: its handler recorded the
    # end and is deciding what follows, while Batch, as the guard read it, still has the job RUNNABLE
    _spot_stage_waiting(ledger, utc_clock)
    failed_at = format_time(utc_clock.now)
    ledger.update_open_attempt("r1", "preprocess", 1, status="FAILED", exit_code=3, stopped_at=failed_at,
                               failure_class=FailureClass.APPLICATION_ERROR)  # fmt: skip
    batch = DescribedBatch({"job-1": "RUNNABLE"})
    svc = _services(ledger, batch)

    # WHEN the guard runs a pass
    result = run_guard(svc)

    # THEN it leaves the stage to the job's handler: nothing placed, and the ended attempt not marked as cancelled
    assert batch.submitted == [] and result["actions"] == []
    stage, attempt = ledger.get_stage("r1", "preprocess"), ledger.get_attempt("r1", "preprocess", 1)
    assert stage is not None and stage.attempt == 1
    assert attempt is not None and attempt.cancel_reason is None

    # AND the handler, acting on the end it recorded, places the next attempt spending one of the stage's retries
    detail = {"jobId": "job-1", "jobName": "job-1", "jobQueue": "spot", "status": "FAILED", "exitCode": 3}
    applied = apply_job_state(svc, BatchJobDetail.model_validate(detail | {"container": {"exitCode": 3}}))
    stage = ledger.get_stage("r1", "preprocess")
    assert applied["status"] == "resubmitted"
    assert stage is not None and (stage.attempt, stage.app_retries_used) == (2, 1)


def test_a_requeued_spot_jobs_success_whose_handler_died_before_acting_on_it_settles_the_stage(
    ledger: Ledger, utc_clock, told
) -> None:
    # GIVEN the Spot stage requeued to On-Demand (its second attempt's job running), and its Spot job's success told
    # as the requeue ended it: the handler recorded the success and died before settling the stage on it
    _spot_stage_waiting(ledger, utc_clock)
    now = format_time(utc_clock.now)
    ledger.cancel_attempt("r1", "preprocess", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("r1", "preprocess", 1, capacity="on-demand")
    ledger.record_attempt(Attempt("r1", "preprocess", 2, "job-2", "on-demand", "on-demand", 1, now, status="RUNNING"))
    ledger.update_open_attempt("r1", "preprocess", 1, status="SUCCEEDED", started_at=now, stopped_at=now)
    batch = DescribedBatch({"job-1": "SUCCEEDED", "job-2": "RUNNING"})

    # WHEN the guard runs a pass
    run_guard(_services(ledger, batch))

    # THEN the stage settles on the Spot attempt's work, and the On-Demand job, which would do it again, is ended
    stage, on_demand = ledger.get_stage("r1", "preprocess"), ledger.get_attempt("r1", "preprocess", 2)
    assert stage is not None and stage.status == "SUCCEEDED"
    assert batch.terminated == ["job-2"]
    assert on_demand is not None and on_demand.cancel_reason == CANCEL_EARLIER_SUCCEEDED


@pytest.mark.parametrize(
    ("batch_status", "placed"), [("STARTING", []), ("RUNNABLE", ["on-demand"])], ids=["starting", "tried-again"]
)
def test_a_spot_job_starting_after_a_long_wait_is_judged_by_what_batch_says(
    ledger: Ledger, utc_clock, told, batch_status: str, placed: list[str]
) -> None:
    # GIVEN the Spot stage that waited 20 minutes, whose job the ledger holds STARTING on the instance it got at last:
    # starting on it still, or waiting RUNNABLE again for Batch's next try, its container unable to start (an image
    # pull failing; the RUNNABLE after that STARTING reads as stale to the job's handler)
    _spot_stage_waiting(ledger, utc_clock)
    ledger.update_open_attempt("r1", "preprocess", 1, status="STARTING")
    batch = DescribedBatch({"job-1": batch_status})

    # WHEN the guard runs a pass
    run_guard(_services(ledger, batch))

    # THEN a job starting is left to start on its Spot capacity (the deadline leaves time for a reclaim then), not
    # taken for one still without capacity and replaced, paying a changeover again; one waiting again is moved to
    # On-Demand as any waiting job is
    assert [request.queue for request in batch.submitted] == placed
    assert batch.terminated == (["job-1"] if placed else [])


def _multinode_stage_running(ledger: Ledger, utc_clock) -> None:
    """Run r2's multi-node HPC stage of 4 nodes running on On-Demand (job mnp-1), its deadline far off."""
    now = utc_clock.now
    run = Run("r2", "ingest", "incoming/b.csv", "v1", format_time(now + timedelta(hours=40)), 48.0,
              format_time(now - timedelta(hours=2)), {})  # fmt: skip
    ledger.create_run(run, [Stage("r2", "hpc", 1, 8.0, False, 4)])
    ledger.claim_attempt("r2", "hpc", 0, capacity="on-demand")
    started = format_time(now - timedelta(hours=1))
    ledger.record_attempt(Attempt("r2", "hpc", 1, "mnp-1", "hpc", "on-demand", 4, started, status="RUNNING"))


MULTINODE_JOB = {"nodeProperties": {"numNodes": 4, "mainNode": 0}}


def _node(index: int, exit_code: int) -> dict[str, Any]:
    return MULTINODE_JOB | {
        "nodeDetails": {"nodeIndex": index, "isMainNode": index == 0},
        "statusReason": "Essential container in task exited",
        "container": {"exitCode": exit_code},
    }


@pytest.mark.parametrize(
    ("node_statuses", "ended", "failure"),
    [
        ({"mnp-1#2": "FAILED"}, ["mnp-1"], FailureClass.S3_UNAVAILABLE),
        ({}, [], None),
    ],
    ids=["a-child-failed", "all-running"],
)
def test_a_multinode_job_whose_child_nodes_failure_went_untold_is_ended_by_the_guard(
    ledger: Ledger, utc_clock, told, node_statuses: dict[str, str], ended: list[str], failure: str | None
) -> None:
    # GIVEN a multi-node job running, its main node waiting for the others' parts, and node 2 failed at its start
    # (exit 88) with its event lost, or every node running
    _multinode_stage_running(ledger, utc_clock)
    described = {"mnp-1": MULTINODE_JOB} | {f"mnp-1#{i}": _node(i, 88 if i == 2 else 0) for i in range(4)}
    batch = DescribedBatch({"mnp-1": "RUNNING"} | node_statuses, status="RUNNING", queue="hpc", described=described)

    # WHEN the guard runs a pass
    run_guard(_services(ledger, batch))

    # THEN the job whose node failed is ended now, with that node's failure recorded for what follows, not left to
    # wait until its attempt's timeout; a job whose nodes all run is left alone
    attempt = ledger.get_attempt("r2", "hpc", 1)
    assert batch.terminated == ended
    assert attempt is not None and attempt.shard_failure == failure


def test_a_multinode_job_whose_failed_nodes_handler_died_before_ending_it_is_ended_by_the_guard(
    ledger: Ledger, utc_clock, told
) -> None:
    # GIVEN a multi-node job running, whose node 2's failure (exit 88) was recorded by a handler that died before
    # terminating the job
    _multinode_stage_running(ledger, utc_clock)
    ledger.record_shard_failure("r2", "hpc", 1, FailureClass.S3_UNAVAILABLE)
    described = {"mnp-1": MULTINODE_JOB} | {f"mnp-1#{i}": _node(i, 88 if i == 2 else 0) for i in range(4)}
    batch = DescribedBatch(
        {"mnp-1": "RUNNING", "mnp-1#2": "FAILED"}, status="RUNNING", queue="hpc", described=described
    )

    # WHEN the guard runs a pass
    run_guard(_services(ledger, batch))

    # THEN the job is ended now, the recorded failure standing, not left to wait until its attempt's timeout
    attempt = ledger.get_attempt("r2", "hpc", 1)
    assert batch.terminated == ["mnp-1"]
    assert attempt is not None and attempt.shard_failure == FailureClass.S3_UNAVAILABLE
