"""The prices the deadline policy weighs when it chooses a stage's capacity (placement.choose_capacity)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest
from spot_hpc.ledger import Run, Stage
from spot_hpc.placement import choose_capacity
from spot_hpc.policy import Action
from spot_hpc.pricing import PriceBook, PriceNotFound

pytestmark = pytest.mark.usefixtures("utc_clock")

SPOT_USD_PER_HOUR = 0.25  # what EC2's Spot price history tells of one c6i.4xlarge


class PriceListDown(PriceBook):
    """Prices as AwsPriceBook gives them while the Price List API is down (or throttles past its retries): no
    On-Demand price, and the Spot price EC2's history tells (`None` On-Demand: the Price List API answers)."""

    def __init__(self, on_demand_usd_per_hour: float | None = None) -> None:
        super().__init__()
        self._on_demand = on_demand_usd_per_hour

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        if self._on_demand is None:
            raise PriceNotFound(f"{instance_type} in {region}: the Price List API did not answer")
        return self._on_demand

    def observed_spot_usd_per_hour(
        self, instance_type: str, availability_zone: str | None, at: datetime | None = None
    ) -> float | None:
        return SPOT_USD_PER_HOUR


def _decide(prices: PriceBook) -> Action:
    # The HPC stage in shards mode, 8 shards of 4 h, with a day to the run's deadline and Spot capacity now.
    stage = Stage("r1", "hpc", 1, 4.0, True, 8)
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    settings = SimpleNamespace(
        region="us-east-1", hpc_instance_type="c6i.8xlarge", spot_instance_type="c6i.4xlarge",
        on_demand_instance_type="c6i.4xlarge", changeover_hours=0.1, spot_interruption_bucket=4,
    )  # fmt: skip
    svc = SimpleNamespace(settings=settings, prices=prices, ledger=SimpleNamespace(get_stages=lambda run_id: [stage]))
    return choose_capacity(svc, run, stage, current=Action.IDLE, spot_available=True).action  # type: ignore[arg-type]


def test_a_spot_price_told_without_an_on_demand_price_does_not_make_spot_look_dearer():
    # GIVEN a stage that goes to Spot when both prices are known (On-Demand $0.68 an hour, Spot $0.25)
    assert _decide(PriceListDown(on_demand_usd_per_hour=0.68)) == Action.SPOT
    # WHEN the Price List API is down: the On-Demand price is unknown, the Spot price EC2 tells is not
    action = _decide(PriceListDown())
    # THEN the policy still weighs Spot at its typical discount, not the shards' $2 an hour against a stand-in
    # On-Demand price of 1 (which made Spot dearer than On-Demand)
    assert action == Action.SPOT
