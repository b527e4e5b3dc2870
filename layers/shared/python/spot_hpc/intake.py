"""Accepting an event or refusing it: one place that parses, checks the account, and records refusals.

A refused input is recorded in the ledger with its reason and answered `{"status": "rejected", ...}`: never a
crash, never silently dropped.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from spot_hpc.services import Services
from spot_hpc.validation import describe_validation_error

logger = logging.getLogger(__name__)
EventModel = TypeVar("EventModel", bound=BaseModel)
# The reason given when a Spot signal is for an instance that runs none of this stack's jobs (as far as the ledger
# knows yet: the signal is kept for a job whose start is told later).
NOT_THIS_STACKS_INSTANCE = "not this stack's instance"


class Rejected(Exception):
    """An input the control plane will not act on; the message is the reason recorded and returned, `title` the
    notice's title where the kind's own ("Pipeline failed") would mislead."""

    def __init__(self, reason: str, title: str | None = None) -> None:
        super().__init__(reason)
        self.title = title


def parse_event(model: type[EventModel], event: Any, account_id: str) -> EventModel:
    """The event as `model`, from this account; `Rejected` (with the first validation problem) otherwise."""
    try:
        parsed = model.model_validate(event)
    except ValidationError as exc:
        raise Rejected(f"malformed {model.__name__}: {describe_validation_error(exc, 'event')}") from exc
    if getattr(parsed, "account", account_id) != account_id:
        raise Rejected(f"event from account {getattr(parsed, 'account', '?')}, not this stack's account")
    return parsed


def reject(svc: Services, source: str, reason: str, event: Any) -> dict[str, Any]:
    """Records the refusal and returns the handler's answer for it."""
    event_id = str(event.get("id", "")) if isinstance(event, dict) else ""
    svc.ledger.record_rejection(source, reason, {"event_id": event_id, "source": source})
    logger.warning("input rejected", extra={"source": source, "reason": reason, "event_id": event_id})
    return {"status": "rejected", "reason": reason, "source": source}
