"""An ended array is priced on its shards' instances, each shard as of its own start (shards start as Spot capacity
comes, hours apart when it is short), with one Spot price history lookup per type, zone and hour, whatever the
number of shards, and never a failed settlement for a price that cannot be had."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc.batch import Ec2Instance
from spot_hpc.events import BatchJobDetail
from spot_hpc.job_events import _billing_sets
from spot_hpc.ledger import Attempt
from spot_hpc.pricing import AwsPriceBook
from spot_hpc.services import Services

ARRAY_STARTED = datetime(2026, 1, 5, 0, 10, tzinfo=UTC)
SHARDS = 1000
SHARD_SECONDS = 1800
# EC2's Spot price of an m6i.4xlarge in us-east-1c: $0.30 from the day before, $0.50 from 01:30.
PRICE_CHANGES = [
    (datetime(2026, 1, 4, 20, 0, tzinfo=UTC), "0.300000"),
    (datetime(2026, 1, 5, 1, 30, tzinfo=UTC), "0.500000"),
]


class SpotPriceHistory:
    """EC2's DescribeSpotPriceHistory of that type and zone, as EC2 answers a window: the price in effect at its start
    and the changes within it. Records each request; `throttled` answers every request with a ThrottlingException (the
    client's own retries used up)."""

    def __init__(self, throttled: bool = False) -> None:
        self.throttled = throttled
        self.requests: list[dict[str, Any]] = []

    def get_paginator(self, operation: str) -> SpotPriceHistory:
        assert operation == "describe_spot_price_history"
        return self

    def paginate(self, **request: Any) -> list[dict[str, Any]]:
        self.requests.append(request)
        if self.throttled:
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            raise ClientError(error, "DescribeSpotPriceHistory")  # type: ignore[arg-type]
        in_effect = [change for change in PRICE_CHANGES if change[0] <= request["StartTime"]][-1:]
        within = [change for change in PRICE_CHANGES if request["StartTime"] < change[0] <= request["EndTime"]]
        entries = [
            {"AvailabilityZone": "us-east-1c", "InstanceType": "m6i.4xlarge", "SpotPrice": price, "Timestamp": when}
            for when, price in in_effect + within
        ]
        return [{"SpotPriceHistory": entries}]


class PriceList:
    """The Price List API: the m6i.4xlarge's On-Demand price; counts its requests."""

    def __init__(self) -> None:
        self.requests = 0

    def get_paginator(self, operation: str) -> PriceList:
        assert operation == "get_products"
        return self

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        self.requests += 1
        dimension = {"unit": "Hrs", "pricePerUnit": {"USD": "0.768"}}
        product = {"terms": {"OnDemand": {"T": {"priceDimensions": {"D": dimension}}}}}
        return [{"PriceList": [json.dumps(product)]}]


class ShardInstances:
    """ECS and EC2 as the shards' instances tell them: one m6i.4xlarge in us-east-1c each."""

    def instances_of(self, arns: Any) -> dict[str, str]:
        return {arn: "i-" + arn.rsplit("/", 1)[-1] for arn in arns}

    def describe_instances(self, instance_ids: Any) -> dict[str, Ec2Instance]:
        return {i: Ec2Instance("m6i.4xlarge", "us-east-1c", ARRAY_STARTED) for i in instance_ids}


def _shard_started(index: int) -> datetime:
    """The shards start 10 seconds apart as capacity comes, over almost three hours."""
    return ARRAY_STARTED + timedelta(seconds=10 * index)


def _shards() -> list[dict[str, Any]]:
    def ms(when: datetime) -> int:
        return int(when.timestamp() * 1000)

    arn = "arn:aws:ecs:us-east-1:123456789012:container-instance/spot-hpc-spot/{:017x}"
    return [
        {
            "jobId": f"array-1:{index}",
            "jobName": "run-1-hpc-1",
            "jobQueue": "spot-queue",
            "status": "SUCCEEDED",
            "startedAt": ms(_shard_started(index)),
            "stoppedAt": ms(_shard_started(index) + timedelta(seconds=SHARD_SECONDS)),
            "container": {"containerInstanceArn": arn.format(index), "exitCode": 0},
        }
        for index in range(SHARDS)
    ]


def _services(ec2: SpotPriceHistory, pricing: PriceList) -> Services:
    book = AwsPriceBook(pricing_client=pricing, ec2_client=ec2, now=lambda: datetime(2026, 1, 5, 6, 0, tzinfo=UTC))
    settings = SimpleNamespace(region="us-east-1")
    return Services(settings, None, ShardInstances(), None, None, None, None, None, None, book)  # type: ignore[arg-type]


def _ended_array() -> tuple[Attempt, BatchJobDetail]:
    """A 1,000-shard Spot array placed at the first Spot type's $0.30 a node, which succeeded."""
    attempt = Attempt("run-1", "hpc", 1, "array-1", "spot-queue", "spot", SHARDS, "2026-01-05T00:00:00Z",
                      usd_per_hour=0.3 * SHARDS, started_at="2026-01-05T00:10:00Z")  # fmt: skip
    detail = BatchJobDetail.model_validate(
        {"jobId": "array-1", "jobName": "run-1-hpc-1", "jobQueue": "spot-queue", "status": "SUCCEEDED",
         "arrayProperties": {"size": SHARDS, "statusSummary": {"SUCCEEDED": SHARDS}}}
    )  # fmt: skip
    return attempt, detail


def test_an_array_s_shards_are_each_priced_as_of_their_own_start_with_one_lookup_an_hour() -> None:
    # GIVEN 1,000 Spot shards of half an hour on m6i.4xlarge instances in us-east-1c, started 10 s apart from 00:10
    # to 02:56:30, and the type's Spot price there moving from $0.30 to $0.50 at 01:30
    ec2, pricing = SpotPriceHistory(), PriceList()
    attempt, detail = _ended_array()

    # WHEN the array's end is billed
    sets = _billing_sets(_services(ec2, pricing), attempt, detail, _shards())

    # THEN each shard is priced as of its own start (the 480 started before 01:30 at $0.30, the 520 after at $0.50),
    # weighed by their seconds, not all at the $0.30 of the array's start
    own = [0.3 if _shard_started(index) < PRICE_CHANGES[1][0] else 0.5 for index in range(SHARDS)]
    assert own.count(0.3) == 480
    assert sets["usd_per_hour"] == pytest.approx(sum(own) / SHARDS * SHARDS)
    assert (sets["instance_type"], sets["availability_zone"]) == ("m6i.4xlarge", "us-east-1c")
    assert sets["instance_seconds"] == sets["run_seconds"] == SHARDS * SHARD_SECONDS
    # AND each instance keeps what its own shard was billed, for its time to come out should EC2 interrupt it within
    # its first hour after the array ended
    assert [sets["billed_on_instances"][f"i-{index:017x}"] for index in (0, SHARDS - 1)] == [
        {"seconds": SHARD_SECONDS, "usd_per_hour": 0.3},
        {"seconds": SHARD_SECONDS, "usd_per_hour": 0.5},
    ]
    # AND EC2's price history was asked once for each hour a shard started in (00:00, 01:00, 02:00), the Price List
    # not at all (every shard's Spot price was observed)
    assert [(r["StartTime"].hour, r["EndTime"].hour, r["AvailabilityZone"]) for r in ec2.requests] == [
        (0, 1, "us-east-1c"),
        (1, 2, "us-east-1c"),
        (2, 3, "us-east-1c"),
    ]
    assert pricing.requests == 0


def test_an_array_whose_spot_prices_are_throttled_settles_at_its_placement_price_asking_once_an_hour() -> None:
    # GIVEN the same 1,000 shards, and EC2 throttling every DescribeSpotPriceHistory (the client's retries used up)
    ec2, pricing = SpotPriceHistory(throttled=True), PriceList()
    attempt, detail = _ended_array()

    # WHEN the array's end is billed
    sets = _billing_sets(_services(ec2, pricing), attempt, detail, _shards())

    # THEN it is billed for its shards' seconds at the price it was placed at (no price is set over it), each
    # instance's shard at that price too (what comes out of the bill should EC2 interrupt the instance within its
    # first hour later), and a price that failed was not asked again for each shard: once for each hour the shards
    # started in
    billed_on = {f"i-{index:017x}": {"seconds": SHARD_SECONDS, "usd_per_hour": 0.3} for index in range(SHARDS)}
    assert sets == {
        "instance_seconds": SHARDS * SHARD_SECONDS,
        "run_seconds": SHARDS * SHARD_SECONDS,
        "billed_on_instances": billed_on,
        "unbilled_instance_ids": [],
    }
    assert [r["StartTime"].hour for r in ec2.requests] == [0, 1, 2]
