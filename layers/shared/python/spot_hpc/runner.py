"""The stage runner: the state machine hands a stage and its task token; the control plane places the work.

The state machine waits on the token until the stage succeeds or fails for good (job_events settles it).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from spot_hpc.events import TERMINAL_STATUSES
from spot_hpc.job_events import answer_state_machine
from spot_hpc.pipeline import STAGE_NAMES
from spot_hpc.placement import CAPACITY_OF_ACTION, choose_capacity, place_attempt
from spot_hpc.policy import Action
from spot_hpc.services import Services
from spot_hpc.validation import describe_validation_error

logger = logging.getLogger(__name__)


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str = Field(min_length=1)
    stage: str
    task_token: str = Field(min_length=1)
    # Which attempt of the task state gave the token ($$.State.EnteredTime, $$.State.RetryCount)
    task_entered_at: AwareDatetime | None = None
    task_retry: int = Field(default=0, ge=0)


class StageRequestError(ValueError):
    """The state machine sent something the runner cannot act on; the task fails with this message."""


def run_stage(svc: Services, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        request = StageRequest.model_validate(payload)
    except ValidationError as exc:
        raise StageRequestError(f"invalid stage request: {describe_validation_error(exc, 'request')}") from exc
    if request.stage not in STAGE_NAMES:
        raise StageRequestError(f"unknown stage {request.stage!r}")
    run = svc.ledger.get_run(request.run_id)
    stage = svc.ledger.get_stage(request.run_id, request.stage)
    if run is None or stage is None:
        raise StageRequestError(f"run {request.run_id} / stage {request.stage} is not in the ledger")
    # A retried invocation (the Lambda or the state machine retried) brings a new token: the one answered is the latest.
    entered_ms = round(request.task_entered_at.timestamp() * 1000) if request.task_entered_at else None
    taken = svc.ledger.take_task_token(run.run_id, stage.stage, request.task_token, entered_ms, request.task_retry)
    if taken is None:
        # A later attempt of the task runs (or ran): its token is the one the state machine waits on, and it places.
        logger.info("a later attempt of the stage's task holds its token", extra={"run_id": run.run_id})
        return {"status": "superseded", "stage": stage.stage}
    stage = taken
    if stage.status != "PENDING":  # placed already: place nothing twice
        if stage.status in TERMINAL_STATUSES:
            # Settled already, and answered on the old token: the new one would otherwise wait forever.
            answer_state_machine(svc, stage)
            return {"status": "already settled", "stage_status": stage.status, "attempt": stage.attempt}
        return {"status": "already placed", "attempt": stage.attempt, "job_id": stage.job_id}
    decision = choose_capacity(svc, run, stage, current=Action.IDLE, spot_available=True)
    capacity = CAPACITY_OF_ACTION.get(decision.action, "spot")
    placed = place_attempt(svc, run, stage, capacity, decision.reason)
    if placed is None:
        return {"status": "already placed"}
    return {"status": "placed", "job_id": placed.job_id, "capacity": placed.capacity, "reason": decision.reason}
