"""The price a placement records on its attempt: looked up when the job is placed, flagged when it cannot be, and
looked up again for the instance the job got once it starts."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc.batch import Ec2Instance
from spot_hpc.ledger import Attempt, Stage
from spot_hpc.placement import HeldInstance, price_on_instances, record_placed
from spot_hpc.services import Services

pytestmark = pytest.mark.usefixtures("utc_clock")


class FakeLedger:
    """Keeps the attempts a placement records."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def record_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def get_stage(self, run_id: str, stage: str) -> None:
        return None  # no stage settled while its attempt was placed


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


class ZonedPrices:
    """Spot of an m6i.4xlarge at $0.40 in us-east-1c, at $0.30 elsewhere; the calls it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int, str | None, Any]] = []

    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **where: Any) -> float:
        self.asked.append((instance_type, capacity, nodes, where.get("availability_zone"), where.get("at")))
        return (0.4 if where.get("availability_zone") == "us-east-1c" else 0.3) * nodes


class DescribedInstances:
    """EC2's answer for the instances it knows (an `Ec2Instance` each)."""

    def __init__(self, known: dict[str, Any]) -> None:
        self.known = known

    def describe_instances(self, instance_ids: list[str]) -> dict[str, Any]:
        return {i: self.known[i] for i in instance_ids if i in self.known}


def _started_attempt() -> Attempt:
    return Attempt("run-1", "preprocess", 1, "job-1", "spot-queue", "spot", 2, "2026-01-05T00:00:00Z",
                   usd_per_hour=0.6, started_at="2026-01-05T00:10:00Z")  # fmt: skip


def test_a_started_job_is_priced_on_the_instance_it_got() -> None:
    # GIVEN a 2-node Spot job placed at the first Spot type's price, started on an m6i.4xlarge in us-east-1c
    started = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
    services = _services(FakeLedger(), prices := ZonedPrices())
    services.batch = DescribedInstances({"i-1": Ec2Instance("m6i.4xlarge", "us-east-1c", started)})  # type: ignore[assignment]

    # WHEN it is priced on that instance
    priced = price_on_instances(services, _started_attempt(), [HeldInstance("i-1", 1.0, started)])

    # THEN the price is that type's Spot price in that zone as it started, for both nodes, and says what it is of
    assert priced == {"usd_per_hour": 0.8, "price_unknown": False, "instance_type": "m6i.4xlarge",
                      "availability_zone": "us-east-1c"}  # fmt: skip
    assert prices.asked == [("m6i.4xlarge", "spot", 1, "us-east-1c", started)]


@pytest.mark.parametrize("cannot_tell", ["instance unknown to EC2", "prices down"])
def test_a_started_job_that_cannot_be_priced_on_its_instance_keeps_its_placement_price(cannot_tell) -> None:
    # GIVEN EC2 not describing the instance, or the price list down
    started = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
    known = (
        {} if cannot_tell == "instance unknown to EC2" else {"i-1": Ec2Instance("m6i.4xlarge", "us-east-1c", started)}
    )
    services = _services(FakeLedger(), PricesDown())
    services.batch = DescribedInstances(known)  # type: ignore[assignment]

    # WHEN it is priced on its instance
    # THEN nothing changes: the placement's price stands
    assert price_on_instances(services, _started_attempt(), [HeldInstance("i-1", 1.0, started)]) == {}


def _array_attempt(usd_per_hour: float = 0.9, price_unknown: bool = False) -> Attempt:
    """Three Spot shards placed at the first Spot type's price, $0.30 a node."""
    placed = {"usd_per_hour": usd_per_hour, "price_unknown": price_unknown, "started_at": "2026-01-05T00:10:00Z"}
    return Attempt("run-1", "hpc", 1, "array-1", "spot-queue", "spot", 3, "2026-01-05T00:00:00Z", **placed)


def test_an_array_is_priced_on_its_shards_instances_weighed_by_their_seconds() -> None:
    # GIVEN three shards, two on m6i.4xlarge instances in us-east-1c ($0.40) for an hour each, one on an instance
    # EC2 no longer describes for half an hour (at the placement's $0.30 a node)
    started = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
    services = _services(FakeLedger(), ZonedPrices())
    services.batch = DescribedInstances(  # type: ignore[assignment]
        {i: Ec2Instance("m6i.4xlarge", "us-east-1c", started) for i in ("i-1", "i-2")}
    )

    # WHEN the array is priced on its shards' instances
    priced = price_on_instances(
        services,
        _array_attempt(),
        [HeldInstance("i-1", 3600, started), HeldInstance("i-2", 3600, started), HeldInstance("i-gone", 1800, started)],
    )

    # THEN the price for its three nodes is the seconds-weighted mean of theirs, so that the array's cost is each
    # shard's seconds at its own price; the type is not named, one shard's being unknown
    assert priced == {"usd_per_hour": pytest.approx((0.4 * 3600 * 2 + 0.3 * 1800) / 9000 * 3), "price_unknown": False}
    cost = priced["usd_per_hour"] / 3 * 9000 / 3600
    assert cost == pytest.approx(0.4 + 0.4 + 0.15)


def test_an_array_whose_shards_all_got_one_type_in_one_zone_names_them() -> None:
    # GIVEN two shards on m6i.4xlarge instances in us-east-1c
    started = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
    services = _services(FakeLedger(), ZonedPrices())
    services.batch = DescribedInstances(  # type: ignore[assignment]
        {i: Ec2Instance("m6i.4xlarge", "us-east-1c", started) for i in ("i-1", "i-2")}
    )
    # WHEN it is priced
    priced = price_on_instances(
        services, _array_attempt(), [HeldInstance("i-1", 600, started), HeldInstance("i-2", 1200, started)]
    )
    # THEN it names them
    assert (priced["instance_type"], priced["availability_zone"]) == ("m6i.4xlarge", "us-east-1c")
    assert priced["usd_per_hour"] == pytest.approx(1.2)


def test_an_array_with_a_shard_that_cannot_be_priced_at_all_keeps_its_placement_price() -> None:
    # GIVEN an array placed while the price list was down, one shard on an instance EC2 no longer describes
    started = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
    services = _services(FakeLedger(), ZonedPrices())
    services.batch = DescribedInstances({"i-1": Ec2Instance("m6i.4xlarge", "us-east-1c", started)})  # type: ignore[assignment]
    attempt = _array_attempt(usd_per_hour=0.0, price_unknown=True)
    # WHEN it is priced
    # THEN nothing changes: a figure from some shards' prices would hide that one is unknown (the report prices it)
    assert (
        price_on_instances(services, attempt, [HeldInstance("i-1", 600, started), HeldInstance(None, 600, started)])
        == {}
    )
