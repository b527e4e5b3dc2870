"""The SLA guard's pass when AWS fails under it: a call failing for one run leaves the others looked after."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc.guard import run_guard
from spot_hpc.ledger import Run, Stage


class LedgerThrottlingOneRun:
    """Active stages of runs that are gone, and one run whose item DynamoDB throttles (its partition hot with its own
    jobs' events); records which runs the pass looked up."""

    def __init__(self, stages: list[Stage], throttled: str) -> None:
        self.stages = stages
        self.throttled = throttled
        self.looked_up: list[str] = []

    def active_stages(self) -> Iterator[Stage]:
        return iter(self.stages)

    def open_runs(self) -> Iterator[Run]:
        return iter([])

    def awaited_interruptions(self, now: Any) -> Iterator[Any]:
        return iter([])  # no instance's interruption awaited

    def get_run(self, run_id: str) -> Run | None:
        self.looked_up.append(run_id)
        if run_id == self.throttled:
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded"}}
            raise ClientError(error, "GetItem")  # type: ignore[arg-type]
        return None


class NoJobs:
    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        return {}


def throttled(operation: str) -> ClientError:
    error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
    return ClientError(error, operation)  # type: ignore[arg-type]


class BatchThrottled:
    """DescribeJobs throttled past the client's retries (a burst of submissions sharing the account's rate)."""

    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        raise throttled("DescribeJobs")


def sent_notices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which of the pass's last steps ran: the notices whose sender died, then those Slack could not take."""
    sent: list[str] = []

    def send_orphaned(svc: Any, remaining: Any, **_: Any) -> tuple[dict[str, int], list[Any]]:
        sent.append("orphaned")
        return {"sent": 0}, []

    def redeliver_parked(svc: Any, remaining: Any) -> dict[str, int]:
        sent.append("parked")
        return {"sent": 0}

    monkeypatch.setattr("spot_hpc.guard.send_orphaned_notices", send_orphaned)
    monkeypatch.setattr("spot_hpc.guard.redeliver_parked_notices", redeliver_parked)
    return sent


@pytest.fixture(autouse=True)
def no_notices_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sent last in a pass (tests/unit/notifications/test_parked_notices.py and test_notification_claims.py).
    monkeypatch.setattr("spot_hpc.guard.redeliver_parked_notices", lambda svc, remaining: {"sent": 0})
    monkeypatch.setattr("spot_hpc.guard.send_orphaned_notices", lambda svc, remaining, **_: ({"sent": 0}, []))


def test_a_run_the_ledger_cannot_read_now_leaves_the_other_runs_checked(utc_clock) -> None:
    # GIVEN active stages of five runs, and DynamoDB throttling the read of one of them
    stages = [Stage(f"run-{number}", "preprocess", 0, 1.0, True, 1) for number in range(5)]
    ledger = LedgerThrottlingOneRun(stages, throttled="run-2")

    # WHEN the guard runs a pass
    result = run_guard(SimpleNamespace(ledger=ledger, batch=NoJobs(), pipeline=None))

    # THEN every run was looked up, and the throttled run's stage is told as an error for a later pass to check again
    assert sorted(ledger.looked_up) == [f"run-{number}" for number in range(5)]
    assert result["actions"] == [{"run_id": "run-2", "stage": "preprocess", "action": "error"}]


class LedgerThrottlingAwaitedInterruptions(LedgerThrottlingOneRun):
    """No active stage, and the sparse index's query of awaited interruptions throttled past the client's retries."""

    def awaited_interruptions(self, now: Any) -> Iterator[Any]:
        error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded"}}
        raise ClientError(error, "Query")  # type: ignore[arg-type]


def test_awaited_interruptions_the_ledger_cannot_read_now_leave_the_notices_sent(utc_clock, monkeypatch) -> None:
    # GIVEN DynamoDB throttling the query of the instances whose interruption is awaited
    ledger = LedgerThrottlingAwaitedInterruptions([], throttled="")
    sent = sent_notices(monkeypatch)

    # WHEN the guard runs a pass
    result = run_guard(SimpleNamespace(ledger=ledger, batch=NoJobs(), pipeline=None))

    # THEN the pass ends, having found no instance unbilled (the next pass asks again), and still sent the notices
    assert result["unbilled_instances"] == 0
    assert sent == ["orphaned", "parked"]


def test_batch_throttled_leaves_the_jobs_to_the_next_pass_and_the_rest_of_the_pass_done(utc_clock, monkeypatch) -> None:
    # GIVEN active stages with jobs, and DescribeJobs throttled past the client's retries
    stages = [Stage(f"run-{number}", "hpc", 1, 4.0, False, 1, job_id=f"job-{number}") for number in range(3)]
    ledger = LedgerThrottlingOneRun(stages, throttled="")
    sent = sent_notices(monkeypatch)

    # WHEN the guard runs a pass
    result = run_guard(SimpleNamespace(ledger=ledger, batch=BatchThrottled(), pipeline=None))

    # THEN the pass tells what it could not read, still checked each run and sent the notices
    assert result["unread"] == ["jobs"]
    assert sorted(ledger.looked_up) == ["run-0", "run-1", "run-2"]
    assert sent == ["orphaned", "parked"]


class LedgerThrottlingActiveStages(LedgerThrottlingOneRun):
    """The sparse index's query of active stages throttled; one open run whose execution ended unsettled."""

    def active_stages(self) -> Iterator[Stage]:
        raise throttled("Query")

    def open_runs(self) -> Iterator[Run]:
        run = Run("run-open", "in", "run.json", "v1", "2026-01-05T12:00:00Z", 12.0, "2026-01-05T00:00:00Z", {})
        run.execution_arn = "arn:aws:states:us-east-1:123456789012:execution:p:e"
        return iter([run])


def test_active_stages_unread_leave_the_ended_runs_and_notices_looked_after(utc_clock, monkeypatch) -> None:
    # GIVEN the query of active stages throttled, and an open run
    ledger = LedgerThrottlingActiveStages([], throttled="")
    sent = sent_notices(monkeypatch)
    asked: list[str] = []
    pipeline = SimpleNamespace(execution_status=lambda arn: asked.append(arn) or "RUNNING")

    # WHEN the guard runs a pass
    result = run_guard(SimpleNamespace(ledger=ledger, batch=NoJobs(), pipeline=pipeline))

    # THEN the pass tells what it could not read, and still checked the open run's execution and sent the notices
    assert result["unread"] == ["active stages"] and result["active_stages"] == 0
    assert asked == ["arn:aws:states:us-east-1:123456789012:execution:p:e"]
    assert sent == ["orphaned", "parked"]


class LedgerThrottlingOpenRuns(LedgerThrottlingOneRun):
    """The sparse index's query of open runs throttled past the client's retries (the partition the active stages'
    query reads too)."""

    def open_runs(self) -> Iterator[Run]:
        raise throttled("Query")


def test_open_runs_unread_leave_the_stages_checked_and_the_notices_sent(utc_clock, monkeypatch) -> None:
    # GIVEN active stages of two runs, and the query of open runs throttled
    stages = [Stage(f"run-{number}", "preprocess", 0, 1.0, True, 1) for number in range(2)]
    ledger = LedgerThrottlingOpenRuns(stages, throttled="")
    sent = sent_notices(monkeypatch)

    # WHEN the guard runs a pass
    result = run_guard(SimpleNamespace(ledger=ledger, batch=NoJobs(), pipeline=None))

    # THEN the pass ends telling what it could not read (counted for the alarm), having checked the stages and sent
    # the notices; the ended runs wait for the next pass
    assert result["unread"] == ["open runs"]
    assert sorted(ledger.looked_up) == ["run-0", "run-1"]
    assert sent == ["orphaned", "parked"]
