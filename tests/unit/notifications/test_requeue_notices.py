"""A move of a stage's work from Spot to On-Demand is told once, and only when the work moved: an On-Demand attempt
ended before it ran, its stage settled without it (the Spot job succeeded after all, or the run ended), moved
nothing. The ledger runs on moto."""

from __future__ import annotations

from typing import Any

import pytest
from spot_hpc.ledger import CANCEL_EARLIER_SUCCEEDED, CANCEL_RUN_ENDED, Attempt, Run, Stage
from spot_hpc.placement import tell_requeue

RUN = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T18:00:00Z", 12.0, "2026-01-05T05:00:00Z", {})


def _requeued(services: Any, cancel_reason: str | None, started: bool) -> None:
    """Preprocess's Spot attempt 1, then On-Demand attempt 2, as the ledger holds them."""
    services.ledger.create_run(RUN, [Stage(RUN.run_id, "preprocess", 0, 1.0, True, 1)])
    spot = Attempt(RUN.run_id, "preprocess", 1, "job-1", "spot", "spot", 1, "2026-01-05T05:01:00Z", status="FAILED")
    on_demand = Attempt(
        RUN.run_id,
        "preprocess",
        2,
        "job-2",
        "on-demand",
        "on-demand",
        1,
        "2026-01-05T06:00:00Z",
        cancel_reason=cancel_reason,
        started_at="2026-01-05T06:05:00Z" if started else None,
    )
    for attempt in (spot, on_demand):
        services.ledger.claim_attempt(RUN.run_id, "preprocess", attempt.attempt - 1, capacity=attempt.capacity)
        services.ledger.record_attempt(attempt)


@pytest.mark.parametrize(
    ("cancel_reason", "started", "told"),
    [
        (None, False, True),
        (CANCEL_EARLIER_SUCCEEDED, True, True),
        (CANCEL_EARLIER_SUCCEEDED, False, False),
        (CANCEL_RUN_ENDED, False, False),
    ],
    ids=["placed", "ran-then-ended-by-the-spot-success", "ended-before-it-ran", "run-ended-before-it-ran"],
)
def test_a_requeue_is_told_by_a_handler_coming_back_only_when_the_work_moved(
    services, sink, utc_clock, cancel_reason, started, told
) -> None:
    # GIVEN a stage whose Spot attempt was followed by an On-Demand one, whose placer may have died before telling
    _requeued(services, cancel_reason, started)
    # WHEN a handler coming back to the placement tells of the move, if it was never told
    sent = tell_requeue(services, RUN, "preprocess", 1, "deadline at risk")
    # THEN it is told only when the On-Demand attempt stood or ran
    assert sent is told
    assert [m["text"].startswith("Requeued to On-Demand") for m in sink.delivered_messages] == ([True] if told else [])
