"""The sample events in events/ (the same files `sam local invoke -e` and `spotctl invoke -e` take), for every
test: `from sample_events import load_event` (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from spot_hpc.events import BatchJobDetail, BatchJobStateChangeEvent

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"


@cache
def _read_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def load_event(name: str, **detail_changes: Any) -> dict[str, Any]:
    """A fresh copy of events/<name>.json, with top-level detail keys replaced."""
    event = copy.deepcopy(_read_event(name))
    event["detail"].update(detail_changes)
    return event


def job_ended(status_reason: str, exit_code: int | None, **detail_changes: Any) -> BatchJobDetail:
    """The detail of a Batch job's end (events/batch_job_failed_host_terminated.json, FAILED unless a `status` is
    given) with its status reason and exit code (None: no container exit, as for a lost host), parsed as the handlers
    parse it."""
    container = {} if exit_code is None else {"exitCode": exit_code}
    event = load_event(
        "batch_job_failed_host_terminated", statusReason=status_reason, container=container, **detail_changes
    )
    return BatchJobStateChangeEvent.model_validate(event).detail
