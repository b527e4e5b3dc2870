"""A stage whose run ended without it (placement.stop_stage): its jobs are ended, the one a requeue replaced too."""

from __future__ import annotations

from types import SimpleNamespace

from batch_fakes import DescribedBatch
from spot_hpc.ledger import CANCEL_REQUEUE, CANCEL_RUN_ENDED, Attempt, Ledger, Run, Stage
from spot_hpc.placement import stop_stage

NOW = "2026-01-05T06:00:00Z"


def _requeued_stage(ledger: Ledger, spot_status: str) -> Stage:
    """A preprocess whose Spot attempt 1 (its job in `spot_status`) a requeue replaced by On-Demand attempt 2."""
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, NOW, {})
    ledger.create_run(run, [Stage("r1", "preprocess", 0, 2.0, True, 1)])
    ledger.claim_attempt("r1", "preprocess", 0, capacity="spot")
    ledger.record_attempt(Attempt("r1", "preprocess", 1, "spot-job", "spot", "spot", 1, NOW, status=spot_status))
    ledger.cancel_attempt("r1", "preprocess", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("r1", "preprocess", 1, capacity="on-demand")
    ledger.record_attempt(Attempt("r1", "preprocess", 2, "od-job", "od", "on-demand", 1, NOW, status="RUNNABLE"))
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None
    return stage


def test_a_stage_stopped_while_its_requeue_had_not_ended_the_spot_job_ends_that_job_too(ledger: Ledger) -> None:
    # GIVEN a stage requeued to On-Demand by a handler that died before terminating the Spot job, still running
    stage = _requeued_stage(ledger, "RUNNING")
    batch = DescribedBatch()
    # WHEN its run ends without it (the run failed, was aborted or timed out)
    stop_stage(SimpleNamespace(ledger=ledger, batch=batch), stage, "run aborted")  # type: ignore[arg-type]
    # THEN both its jobs are ended: the SLA guard, which terminates such a Spot job at each pass, no longer watches
    # the stage, and the job would run, billed, until its attempt timeout
    assert batch.terminated == ["od-job", "spot-job"]
    on_demand = ledger.get_attempt("r1", "preprocess", 2)
    assert on_demand is not None and on_demand.cancel_reason == CANCEL_RUN_ENDED


def test_a_stage_stopped_after_its_requeue_ended_the_spot_job_ends_only_the_on_demand_one(ledger: Ledger) -> None:
    # GIVEN a stage requeued to On-Demand whose Spot job's end is recorded
    stage = _requeued_stage(ledger, "FAILED")
    batch = DescribedBatch()
    # WHEN its run ends without it
    stop_stage(SimpleNamespace(ledger=ledger, batch=batch), stage, "run aborted")  # type: ignore[arg-type]
    # THEN only the On-Demand job is ended
    assert batch.terminated == ["od-job"]
