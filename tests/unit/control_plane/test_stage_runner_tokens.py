"""Which task token the stage keeps when the state machine's attempts of one task state overlap (runner.run_stage):
after a Lambda.ServiceException the state machine may retry the runner while the invocation before still runs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc.ledger import Ledger, Run, Stage
from spot_hpc.runner import run_stage

ENTERED = "2026-01-05T06:00:00.250Z"
ENTERED_AGAIN = "2026-01-05T09:30:00Z"  # the state entered anew (a redrive)


def _placed_stage(ledger: Ledger) -> None:
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    ledger.create_run(run, [Stage("r1", "preprocess", 0, 2.0, True, 1)])
    ledger.claim_attempt("r1", "preprocess", 0, capacity="spot")


def _request(token: str, **order: Any) -> dict[str, Any]:
    return {"run_id": "r1", "stage": "preprocess", "task_token": token, **order}


@pytest.mark.parametrize(
    ("first", "then", "kept"),
    [
        ({"task_entered_at": ENTERED, "task_retry": 1}, {"task_entered_at": ENTERED, "task_retry": 0}, "first"),
        ({"task_entered_at": ENTERED, "task_retry": 0}, {"task_entered_at": ENTERED, "task_retry": 1}, "then"),
        ({"task_entered_at": ENTERED, "task_retry": 2}, {"task_entered_at": ENTERED_AGAIN, "task_retry": 0}, "then"),
        ({"task_entered_at": ENTERED_AGAIN, "task_retry": 0}, {"task_entered_at": ENTERED, "task_retry": 3}, "first"),
        # an execution started before the state machine sent the order of its attempts
        ({"task_entered_at": ENTERED, "task_retry": 2}, {}, "then"),
    ],
    ids=["retry-then-late-first", "in-order", "redriven", "late-from-before-a-redrive", "no-order"],
)
def test_the_stage_keeps_the_token_of_its_tasks_latest_attempt(
    ledger: Ledger, first: dict[str, Any], then: dict[str, Any], kept: str
) -> None:
    # GIVEN a placed stage, and two invocations of its runner by attempts of the state machine's task
    _placed_stage(ledger)
    svc = SimpleNamespace(ledger=ledger)
    # WHEN they write their tokens in this order
    results = [run_stage(svc, _request("first", **first)), run_stage(svc, _request("then", **then))]  # type: ignore[arg-type]
    # THEN the stage keeps the token of the later attempt, the one the state machine waits on; the invocation of an
    # earlier one that wrote last ends there, without acting on the stage
    stage = ledger.get_stage("r1", "preprocess")
    assert stage is not None and stage.task_token == kept
    statuses = [result["status"] for result in results]
    assert statuses == (["already placed", "superseded"] if kept == "first" else ["already placed"] * 2)


def test_a_task_attempt_told_at_a_time_that_is_no_time_is_a_request_error(ledger: Ledger) -> None:
    # GIVEN a request whose state entry time is not an ISO 8601 time with its offset
    _placed_stage(ledger)
    # WHEN the runner is invoked with it
    # THEN the task fails as for any request the runner cannot act on (the state machine does not retry it)
    with pytest.raises(ValueError, match="task_entered_at"):
        run_stage(SimpleNamespace(ledger=ledger), _request("t", task_entered_at="yesterday"))  # type: ignore[arg-type]
