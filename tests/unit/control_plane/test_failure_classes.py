"""How the Batch state change handler tells failures apart (job_events.classify_failure), one case per class."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sample_events import job_ended, load_event
from spot_hpc.events import BatchJobStateChangeEvent
from spot_hpc.job_events import _adopt, classify_failure, interruption_notice
from spot_hpc.ledger import Attempt, Stage
from spot_hpc.pipeline import TAG_ATTEMPT, TAG_RUN, TAG_STAGE
from spot_hpc.run_report import FAILURE_WORDS, RECLAIM_CLASSES, FailureClass
from spot_hpc.slack import Notification, notification_text


def _attempt(capacity: str, cancel_reason: str | None = None) -> Attempt:
    return Attempt("run-1", "preprocess", 1, "job-1", "queue", capacity, 1, "2026-01-05T00:00:00Z",
                   cancel_reason=cancel_reason)  # fmt: skip


@pytest.mark.parametrize(
    ("status_reason", "exit_code", "capacity", "cancel_reason", "expected"),
    [
        ("Host EC2 (instance i-0b662ef9931388ba0) terminated.", None, "spot", None, FailureClass.SPOT_RECLAIM),
        ("Host EC2 (instance i-0b662ef9931388ba0) terminated.", None, "on-demand", None, FailureClass.HOST_FAILURE),
        ("Essential container in task exited", 86, "spot", None, FailureClass.CHECKPOINTED_INTERRUPTION),
        ("Essential container in task exited", 88, "spot", None, FailureClass.S3_UNAVAILABLE),
        ("Job attempt duration exceeded timeout", None, "on-demand", None, FailureClass.TIMEOUT),
        ("Essential container in task exited", 3, "spot", None, FailureClass.APPLICATION_ERROR),
        ("Essential container in task exited", 137, "spot", "requeued to On-Demand",
         FailureClass.CANCELLED_BY_CONTROL_PLANE),
    ],
)  # fmt: skip
def test_each_failure_is_classified(status_reason, exit_code, capacity, cancel_reason, expected):
    # GIVEN a FAILED job event and the attempt the ledger holds for it
    detail = job_ended(status_reason, exit_code)
    # WHEN it is classified
    failure = classify_failure(detail, _attempt(capacity, cancel_reason))
    # THEN the class is the expected one, and only reclaims are interruptions
    assert failure == expected
    assert (failure in RECLAIM_CLASSES) == (
        expected in {FailureClass.SPOT_RECLAIM, FailureClass.HOST_FAILURE, FailureClass.CHECKPOINTED_INTERRUPTION}
    )


def test_an_array_failed_by_a_reclaimed_shard_is_a_reclaim():
    # GIVEN an array job's parent FAILED (it says only that a child failed), one of whose shards was reclaimed
    detail = job_ended("1 of 3 array child jobs failed", None)
    attempt = _attempt("spot")
    attempt.shard_failure = FailureClass.SPOT_RECLAIM
    # WHEN it is classified
    # THEN it is the shard's reclaim, not an application error spending the retry budget
    assert classify_failure(detail, attempt) == FailureClass.SPOT_RECLAIM


def test_a_shard_is_known_by_its_parent_id_and_index():
    # GIVEN a Batch event for the second child of an array job, and one for its parent
    child = job_ended("Essential container in task exited", 0).model_copy(update={"job_id": "4c1e-77:1"})
    parent = BatchJobStateChangeEvent.model_validate(
        load_event(
            "batch_job_failed_host_terminated",
            status="PENDING",
            arrayProperties={"size": 3, "statusSummary": {"RUNNING": 2, "RUNNABLE": 1}},
        )
    ).detail
    # WHEN / THEN the child names its parent, and the parent counts its shards running and waiting
    assert child.array_parent_id == "4c1e-77" and parent.array_parent_id is None
    assert (parent.shards_running, parent.shards_waiting) == (2, 1)


@pytest.mark.parametrize("index", ["²", "٣", "1_0", " 1", "", "x"])
def test_a_job_id_whose_index_is_not_ascii_digits_is_no_shard(index):
    # GIVEN a Batch event whose job id has a colon but no index Batch would give a child
    detail = job_ended("Essential container in task exited", 0).model_copy(update={"job_id": f"4c1e-77:{index}"})
    # WHEN / THEN it names no parent: it is a job of its own, unknown to the control plane
    assert detail.array_parent_id is None


@pytest.mark.parametrize("tag", ["²", "٣", "1_0", " 1", "x"])
def test_a_job_tagged_with_an_attempt_that_is_not_ascii_digits_is_not_adopted(tag):
    # GIVEN a stage waiting for its attempt 3's job, and a Batch event for an unrecorded job whose tags name that
    # run and stage and an attempt the control plane never writes (it tags `str(attempt)`; "٣" is 3 to int())
    stage = Stage("r1", "preprocess", 0, 4.0, True, 1, attempt=3, capacity="spot")
    svc = SimpleNamespace(ledger=SimpleNamespace(get_stage=lambda run_id, name: stage))
    detail = job_ended("Essential container in task exited", 0).model_copy(
        update={"tags": {TAG_RUN: "r1", TAG_STAGE: "preprocess", TAG_ATTEMPT: tag}}
    )
    # WHEN / THEN the job is not taken as the stage's: it stays unknown, and the handler does not fail
    assert _adopt(svc, detail) is None


def test_a_node_of_a_multinode_job_is_not_adopted_as_the_stages_job():
    # GIVEN a stage whose multi-node job was submitted by a runner that died before recording it, and a Batch event
    # for one of its nodes (`<job id>#<node index>`), which carries the job's tags
    stage = Stage("r1", "hpc", 1, 4.0, False, 4, attempt=1, capacity="on-demand")
    svc = SimpleNamespace(ledger=SimpleNamespace(get_stage=lambda run_id, name: stage))
    detail = job_ended("Essential container in task exited", 0).model_copy(
        update={"job_id": "4c1e-77#2", "tags": {TAG_RUN: "r1", TAG_STAGE: "hpc", TAG_ATTEMPT: "1"}}
    )
    # WHEN / THEN the node is not taken as the stage's job: the job itself is (its own event, or the guard's repair),
    # whose id the stage must hold to be answered, terminated and billed
    assert _adopt(svc, detail) is None


@pytest.mark.parametrize(
    ("capacity", "failure", "title", "words"),
    [
        ("spot", FailureClass.SPOT_RECLAIM, "Spot interruption", "Spot took its instance back"),
        ("spot", FailureClass.HOST_FAILURE, "Spot interruption", "its instance was terminated under it"),
        ("on-demand", FailureClass.HOST_FAILURE, "On-Demand instance lost", "its instance was terminated under it"),
    ],
)
def test_a_lost_instance_is_told_as_a_spot_interruption_only_when_it_was_spot(capacity, failure, title, words):
    # GIVEN an attempt whose instance went away under it
    reason = "Host EC2 (instance i-0b662ef9931388ba0) terminated."
    # WHEN its notice is written
    notice_title, notice_reason = interruption_notice(_attempt(capacity), failure, reason)
    notification = Notification("interrupted", "run-1", "preprocess", notice_reason, attempt=1, title=notice_title)
    # THEN the title says what was lost, and the reason says it in words with Batch's own reason
    assert notification_text(notification).startswith(f"{title}: run run-1")
    assert notice_reason == f"{FAILURE_WORDS[failure]} ({reason})" == f"{words} ({reason})"


@pytest.mark.parametrize("exit_code", [86, 87])
@pytest.mark.parametrize("capacity", ["spot", "on-demand"])
def test_a_job_that_ran_past_its_timeout_and_checkpointed_on_the_sigterm_is_a_timeout(exit_code, capacity):
    # GIVEN a job Batch ended for running past its attempt timeout: Batch stops it with a SIGTERM, on which the job
    # runtime checkpoints and exits 86 (87 when the checkpoint cannot be written), as it does on a Spot notice
    detail = job_ended("Job attempt duration exceeded timeout", exit_code)
    # WHEN it is classified
    failure = classify_failure(detail, _attempt(capacity))
    # THEN it is a timeout, which spends the stage's retries, not an interruption resubmitted for nothing forever
    assert failure == FailureClass.TIMEOUT
    assert failure not in RECLAIM_CLASSES
