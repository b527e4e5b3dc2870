"""How the ends of an array job's shards are recorded on the array's attempt (job_events._apply_shard_state)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sample_events import job_ended, load_event
from spot_hpc.job_events import _failed_shards_class, apply_job_state
from spot_hpc.ledger import Attempt, Ledger, Run, Stage
from spot_hpc.run_report import FailureClass

ARRAY_JOB = "4c1e-77"


class RecordingBatch:
    """Batch as the shard handler uses it: the jobs it was asked to terminate, and why."""

    def __init__(self) -> None:
        self.terminated: list[tuple[str, str]] = []

    def terminate(self, job_id: str, reason: str) -> None:
        self.terminated.append((job_id, reason))


def _shard_failed(index: int, status_reason: str, exit_code: int | None) -> Any:
    return job_ended(status_reason, exit_code, jobId=f"{ARRAY_JOB}:{index}", arrayProperties={"index": index})


def _array_running_on_spot(ledger: Ledger) -> None:
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    ledger.create_run(run, [Stage("r1", "hpc", 1, 2.0, True, 3)])
    ledger.claim_attempt("r1", "hpc", 0, capacity="spot")
    ledger.record_attempt(Attempt("r1", "hpc", 1, ARRAY_JOB, "spot-queue", "spot", 3, "2026-01-05T06:00:00Z"))
    ledger.update_open_attempt("r1", "hpc", 1, status="RUNNING", started_at="2026-01-05T06:05:00Z")


def test_a_shard_reclaimed_after_another_failed_on_its_own_makes_the_array_a_reclaim(ledger: Ledger, utc_clock):
    # GIVEN an array of 3 shards running on Spot, whose first shard failed on its own (exit 3)
    _array_running_on_spot(ledger)
    batch = RecordingBatch()
    svc = SimpleNamespace(ledger=ledger, batch=batch)
    apply_job_state(svc, _shard_failed(0, "Essential container in task exited", 3))
    # WHEN a second shard's instance is taken back by Spot
    result = apply_job_state(svc, _shard_failed(2, "Host EC2 (instance i-0b662ef9931388ba0) terminated.", None))
    # THEN that shard's end is the reclaim it was, as the array's end would have found it had it been told first
    # (a reclaim first): the array is ended at once, and will be placed again without spending a retry
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert result["failure_class"] == FailureClass.SPOT_RECLAIM
    assert attempt is not None and attempt.shard_failure == FailureClass.SPOT_RECLAIM
    assert [job_id for job_id, _ in batch.terminated] == [ARRAY_JOB]


def test_the_shards_an_arrays_reclaim_ended_leave_the_reclaim_recorded(ledger: Ledger, utc_clock):
    # GIVEN an array of 3 shards running on Spot, one of whose shards was reclaimed (which ends the array)
    _array_running_on_spot(ledger)
    svc = SimpleNamespace(ledger=ledger, batch=RecordingBatch())
    apply_job_state(svc, _shard_failed(2, "Host EC2 (instance i-0b662ef9931388ba0) terminated.", None))
    # WHEN the shards the array's end stopped checkpoint and exit 86, or fail on their own
    apply_job_state(svc, _shard_failed(0, "Essential container in task exited", 86))
    apply_job_state(svc, _shard_failed(1, "Essential container in task exited", 3))
    # THEN the array's shard failure is still the reclaim that ended it
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert attempt is not None and attempt.shard_failure == FailureClass.SPOT_RECLAIM


RECLAIMED = ("Host EC2 (instance i-0b662ef9931388ba0) terminated.", None)
FAILED_ON_ITS_OWN = ("Essential container in task exited", 3)


@pytest.mark.parametrize(
    ("first", "second"),
    [(RECLAIMED, FAILED_ON_ITS_OWN), (FAILED_ON_ITS_OWN, RECLAIMED)],
    ids=["own-failure-handled-on-a-read-before-the-reclaim", "reclaim-handled-on-a-read-before-the-own-failure"],
)
def test_two_shards_ends_handled_at_the_same_moment_leave_the_reclaim_recorded(
    ledger: Ledger, utc_clock, monkeypatch, first, second
):
    # GIVEN an array of 3 shards running on Spot, and two shards' ends handled at once, one reclaimed and one failed
    # on its own (exit 3): the second's handler read the array before the first's end was written, and writes after
    _array_running_on_spot(ledger)
    svc = SimpleNamespace(ledger=ledger, batch=RecordingBatch())
    read_before_the_first = ledger.get_attempt("r1", "hpc", 1)
    apply_job_state(svc, _shard_failed(2, *first))
    monkeypatch.setattr(ledger, "get_attempt", lambda run_id, stage, attempt: read_before_the_first)
    # WHEN the second is handled on that read
    apply_job_state(svc, _shard_failed(0, *second))
    monkeypatch.undo()
    # THEN the array's shard failure is the reclaim, whichever came first: it is placed again without spending a retry
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert attempt is not None and attempt.shard_failure == FailureClass.SPOT_RECLAIM


S3_FAILED_ITS_START = ("Essential container in task exited", 88)


@pytest.mark.parametrize(
    ("first", "second", "recorded"),
    [
        (S3_FAILED_ITS_START, FAILED_ON_ITS_OWN, FailureClass.APPLICATION_ERROR),
        (FAILED_ON_ITS_OWN, S3_FAILED_ITS_START, FailureClass.APPLICATION_ERROR),
        (S3_FAILED_ITS_START, RECLAIMED, FailureClass.SPOT_RECLAIM),
    ],
    ids=["own-failure-after-s3", "s3-after-own-failure", "reclaim-after-s3"],
)
def test_a_shard_whose_start_s3_failed_hides_no_other_shards_end(ledger: Ledger, utc_clock, first, second, recorded):
    # GIVEN an array of 3 shards running on Spot, one of whose shards found S3 failing as it started (exit 88), and
    # another that failed on its own or was reclaimed
    _array_running_on_spot(ledger)
    svc = SimpleNamespace(ledger=ledger, batch=RecordingBatch())
    # WHEN both ends are handled, in either order
    apply_job_state(svc, _shard_failed(0, *first))
    apply_job_state(svc, _shard_failed(1, *second))
    # THEN the array's failure is the other shard's: an own error spends a retry, a reclaim places it again at once
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert attempt is not None and attempt.shard_failure == recorded


def test_an_array_whose_shards_s3_failed_is_told_by_its_other_failed_shard(ledger: Ledger, utc_clock):
    # GIVEN an array's failed shards as ListJobs gives them, the first one's start failed by S3 (exit 88), the second
    # failed on its own, and none of their ends told yet
    shards = [
        load_event(
            "batch_job_failed_host_terminated",
            jobId=f"{ARRAY_JOB}:{index}",
            statusReason=reason,
            container={"exitCode": code},
            arrayProperties={"index": index},
        )["detail"]
        for index, (reason, code) in enumerate([S3_FAILED_ITS_START, FAILED_ON_ITS_OWN])
    ]
    attempt = Attempt("r1", "hpc", 1, ARRAY_JOB, "spot-queue", "spot", 3, "2026-01-05T06:00:00Z")
    # WHEN the array's failure is asked of them
    failure = _failed_shards_class(shards, attempt)
    # THEN it is the application's own error, which spends a retry
    assert failure == FailureClass.APPLICATION_ERROR
