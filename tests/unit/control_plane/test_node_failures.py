"""How a child node's failure ends a multi-node parallel job (job_events._apply_child_node_state): Batch ends such a
job with its main node alone, which waits for every node's part."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from batch_fakes import DescribedBatch
from sample_events import job_ended
from spot_hpc.job_events import apply_job_state, classify_failure
from spot_hpc.ledger import Attempt, Ledger, Run, Stage
from spot_hpc.run_report import FailureClass

MULTINODE_JOB = "7d2a-51"
MAIN_NODE = f"{MULTINODE_JOB}#0"


def _node_ended(index: int, status: str, status_reason: str, exit_code: int | None, main: bool | None) -> Any:
    node_details = {"nodeIndex": index} | ({} if main is None else {"isMainNode": main})
    return job_ended(
        status_reason, exit_code, jobId=f"{MULTINODE_JOB}#{index}", status=status, nodeDetails=node_details
    )


def _multinode_job_running(ledger: Ledger) -> None:
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    ledger.create_run(run, [Stage("r1", "hpc", 1, 8.0, False, 4)])
    ledger.claim_attempt("r1", "hpc", 0, capacity="on-demand")
    ledger.record_attempt(Attempt("r1", "hpc", 1, MULTINODE_JOB, "od-queue", "on-demand", 4, "2026-01-05T06:00:00Z"))
    ledger.update_open_attempt("r1", "hpc", 1, status="RUNNING", started_at="2026-01-05T06:05:00Z")


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
