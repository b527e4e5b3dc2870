"""How the ends of an array job's shards are recorded on the array's attempt (job_events._apply_shard_state), and how
a child node's failure ends a multi-node parallel job (job_events._apply_child_node_state): Batch ends such a job with
its main node alone, which waits for every node's part."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from batch_fakes import DescribedBatch
from sample_events import job_ended, load_event
from spot_hpc.job_events import _failed_shards_class, apply_job_state, classify_failure
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


def _hpc_job_running(ledger: Ledger, job_id: str, capacity: str, parts: int) -> None:
    """Run r1's HPC stage of `parts` shards or nodes running its first attempt, the job `job_id`, on `capacity`."""
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    ledger.create_run(run, [Stage("r1", "hpc", 1, 2.0, capacity == "spot", parts)])
    ledger.claim_attempt("r1", "hpc", 0, capacity=capacity)
    ledger.record_attempt(Attempt("r1", "hpc", 1, job_id, f"{capacity}-queue", capacity, parts, "2026-01-05T06:00:00Z"))
    ledger.update_open_attempt("r1", "hpc", 1, status="RUNNING", started_at="2026-01-05T06:05:00Z")


def _array_running_on_spot(ledger: Ledger) -> None:
    _hpc_job_running(ledger, ARRAY_JOB, "spot", 3)


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


# ------------------------------------------------------------------ a multi-node job's child nodes
MULTINODE_JOB = "7d2a-51"
MAIN_NODE = f"{MULTINODE_JOB}#0"


def _node_ended(index: int, status: str, status_reason: str, exit_code: int | None, main: bool | None) -> Any:
    node_details = {"nodeIndex": index} | ({} if main is None else {"isMainNode": main})
    return job_ended(
        status_reason, exit_code, jobId=f"{MULTINODE_JOB}#{index}", status=status, nodeDetails=node_details
    )


def _multinode_job_running(ledger: Ledger) -> None:
    _hpc_job_running(ledger, MULTINODE_JOB, "on-demand", 4)


@pytest.mark.parametrize(
    ("status_reason", "exit_code", "failure"),
    [
        ("Essential container in task exited", 88, FailureClass.S3_UNAVAILABLE),
        ("Essential container in task exited", 3, FailureClass.APPLICATION_ERROR),
        ("Host EC2 (instance i-0b662ef9931388ba0) terminated.", None, FailureClass.HOST_FAILURE),
    ],
    ids=["s3-unavailable-at-its-start", "its-own-error", "its-host-lost"],
)
def test_a_failed_child_node_ends_its_job_now_with_its_own_failure(
    ledger: Ledger, utc_clock, status_reason, exit_code, failure
):
    # GIVEN a multi-node job of 4 nodes running, its main node waiting for the others' parts
    _multinode_job_running(ledger)
    batch = DescribedBatch({MAIN_NODE: "RUNNING"}, status="RUNNING")
    # WHEN node 2 fails
    result = apply_job_state(
        SimpleNamespace(ledger=ledger, batch=batch), _node_ended(2, "FAILED", status_reason, exit_code, main=False)
    )
    # THEN the job is ended now, not when its attempt times out, and the node's failure is the attempt's: what follows
    # (placed again free after 88, a retry spent after an error) is decided by it, not by the job's SIGTERM
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert batch.terminated == [MULTINODE_JOB]
    assert result["failure_class"] == failure
    assert attempt is not None and attempt.shard_failure == failure and attempt.status == "RUNNING"


def test_the_job_ending_on_a_child_nodes_failure_is_classed_by_that_failure(ledger: Ledger, utc_clock):
    # GIVEN a multi-node job whose node 1 could not reach S3 at its start, and which was ended for it
    _multinode_job_running(ledger)
    svc = SimpleNamespace(ledger=ledger, batch=DescribedBatch({MAIN_NODE: "RUNNING"}, status="RUNNING"))
    apply_job_state(svc, _node_ended(1, "FAILED", "Essential container in task exited", 88, main=False))
    # WHEN the job's own end is classed (its main node checkpointed on the SIGTERM and exited 86)
    ended = job_ended("spot-hpc: node ended by s3_unavailable", 86, jobId=MULTINODE_JOB)
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert attempt is not None
    # THEN it is the node's failure, not a checkpointed interruption of the whole job
    assert classify_failure(ended, attempt) == FailureClass.S3_UNAVAILABLE


@pytest.mark.parametrize(
    ("node", "status", "main_status", "main"),
    [
        (1, "SUCCEEDED", "RUNNING", False),  # its part done: the main node goes on waiting for the others
        (1, "FAILED", "SUCCEEDED", False),  # stopped by Batch after the main node ended the job
        (0, "FAILED", "FAILED", True),  # the main node: its end is the job's, told by the job's own event
        (0, "FAILED", "FAILED", None),  # the same, from an event without the flag
    ],
    ids=["child-succeeded", "child-stopped-after-the-main-node", "main-node", "main-node-unflagged"],
)
def test_a_node_end_that_does_not_leave_the_job_waiting_ends_nothing(
    ledger: Ledger, utc_clock, node, status, main_status, main
):
    # GIVEN a multi-node job running
    _multinode_job_running(ledger)
    batch = DescribedBatch({MAIN_NODE: main_status}, status="RUNNING")
    # WHEN a node's end is told
    result = apply_job_state(
        SimpleNamespace(ledger=ledger, batch=batch),
        _node_ended(node, status, "Essential container in task exited", 1, main=main),
    )
    # THEN the job is left to end as Batch ends it, and no failure is recorded for it
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert result["status"] == "ignored" and batch.terminated == []
    assert attempt is not None and attempt.shard_failure is None


@pytest.mark.parametrize(
    ("first", "failure"),
    [(FAILED_ON_ITS_OWN, FailureClass.APPLICATION_ERROR), (S3_FAILED_ITS_START, FailureClass.S3_UNAVAILABLE)],
    ids=["its-own-error", "s3-unavailable-at-its-start"],
)
def test_the_nodes_a_child_nodes_failure_stopped_leave_that_failure_recorded(ledger: Ledger, utc_clock, first, failure):
    # GIVEN a multi-node job of 4 nodes running, ended by the control plane for its node 1's failure
    _multinode_job_running(ledger)
    svc = SimpleNamespace(ledger=ledger, batch=DescribedBatch({MAIN_NODE: "RUNNING"}, status="RUNNING"))
    apply_job_state(svc, _node_ended(1, "FAILED", *first, main=False))
    # WHEN another child node, stopped by that end while the main node still checkpoints, checkpoints and exits 86
    apply_job_state(svc, _node_ended(2, "FAILED", "Essential container in task exited", 86, main=False))
    # THEN the attempt's failure is still node 1's, which decides what follows, not an interruption placed again free
    attempt = ledger.get_attempt("r1", "hpc", 1)
    assert attempt is not None and attempt.shard_failure == failure
