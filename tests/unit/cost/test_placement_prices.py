"""The price a placement records on its attempt: looked up when the job is placed, flagged when it cannot be."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc.ledger import Attempt, Stage
from spot_hpc.placement import record_placed
from spot_hpc.services import Services

pytestmark = pytest.mark.usefixtures("utc_clock")


class FakeLedger:
    """Keeps the attempts a placement records."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def record_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)


class FakePrices:
    """A price list that has every price: Spot at 30% of On-Demand, per node."""

    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **_: Any) -> float:
        return (1.0 if capacity == "on-demand" else 0.3) * nodes


class PricesDown:
    """A price list that cannot be reached (the Pricing API refusing, say)."""

    def usd_per_hour(self, *_: Any, **__: Any) -> float:
        raise ConnectionError("pricing endpoint unreachable")


def _services(ledger: FakeLedger, prices: Any) -> Services:
    settings = SimpleNamespace(
        region="us-east-1", hpc_instance_type="c5n.18xlarge", spot_instance_type="c5.4xlarge",
        on_demand_instance_type="c5.4xlarge",
    )  # fmt: skip
    return Services(settings, ledger, None, None, None, None, None, None, None, prices)  # type: ignore[arg-type]


def _placed_stage() -> Stage:
    # No checkpoint (the attempt starts afresh) and no wait for Spot in progress: only the price is looked up.
    return Stage("run-1", "preprocess", 0, 2.0, True, 2, status="RUNNING", attempt=1)


def test_a_placement_whose_price_cannot_be_looked_up_is_recorded_at_zero_and_flagged() -> None:
    # GIVEN a price list that cannot be reached
    ledger = FakeLedger()
    services = _services(ledger, PricesDown())

    # WHEN a Spot job of the stage is recorded as placed
    attempt = record_placed(services, _placed_stage(), "job-1", "spot-queue", "spot", "Spot capacity")

    # THEN the attempt is recorded at $0 with its price unknown, for the run report to price again
    assert ledger.attempts == [attempt]
    assert attempt.usd_per_hour == 0.0 and attempt.price_unknown is True
    assert (attempt.job_id, attempt.capacity, attempt.nodes) == ("job-1", "spot", 2)


def test_a_placement_whose_price_is_looked_up_is_recorded_with_it() -> None:
    # GIVEN a price list that answers
    ledger = FakeLedger()
    services = _services(ledger, FakePrices())

    # WHEN an On-Demand job of the two-node stage is recorded as placed
    attempt = record_placed(services, _placed_stage(), "job-1", "od-queue", "on-demand", "deadline at risk")

    # THEN the attempt carries the price for both nodes, and nothing is flagged
    assert ledger.attempts == [attempt]
    assert attempt.usd_per_hour == pytest.approx(2.0) and attempt.price_unknown is False
