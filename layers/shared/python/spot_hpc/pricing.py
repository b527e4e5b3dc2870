"""Prices of EC2 capacity: On-Demand USD/hour per instance type and region, and Spot where known.

A Spot price is the observed price of the instance type in its Availability Zone when one is known; otherwise
it is estimated as On-Demand x (1 - the Spot Instance Advisor's savings percent). With neither, the Spot price is
taken to be the On-Demand price: savings are under-reported rather than invented.

Two price books:
- `DataFilePriceBook` reads the JSON files under `data/` (offline only: the Lambda layer does not carry `data/`).
- `AwsPriceBook` asks the AWS Price List API (On-Demand) and EC2 `DescribeSpotPriceHistory` (Spot), through
  injected boto3 clients, caching answers in memory for the life of the process (keep the book at module scope
  of a handler so warm invocations reuse it). A Spot price at a past moment is read from that hour's history, asked
  once for every moment of the hour (an array's shards each priced as of their own start make one call per type,
  zone and hour, not one per shard). Throttling is left to botocore's retries: build the clients with
  `spot_hpc.aws.client` (standard retry mode, which backs off on throttling errors).
"""

from __future__ import annotations

import json
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from spot_hpc.clock import as_utc
from spot_hpc.cost import Capacity

SpotPriceSource = Literal["observed", "spot-advisor", "on-demand"]

# The Price List API is served from a few regions only; us-east-1 is one of them.
PRICING_API_REGION = "us-east-1"
# Every Linux, shared-tenancy, no-preinstalled-software, used-capacity On-Demand price (what Batch instances bill).
LINUX_ON_DEMAND_FILTERS: tuple[tuple[str, str], ...] = (
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("preInstalledSw", "NA"),
    ("capacitystatus", "Used"),
    ("licenseModel", "No License required"),
    ("marketoption", "OnDemand"),
)
SPOT_PRODUCT_DESCRIPTION = "Linux/UNIX"
# Spot prices move slowly (AWS smooths them); an hour-old answer is good enough for accounting.
SPOT_PRICE_CACHE_SECONDS = 3600.0
# A past Spot price is read from the history of the hour it falls in, asked once for all of the hour's moments.
SPOT_HISTORY_WINDOW = timedelta(hours=1)

# Each zone's Spot price changes, (when, USD per hour) in time order: what DescribeSpotPriceHistory tells of a window.
SpotHistory = dict[str, list[tuple[datetime, float]]]


def spot_price_hour(at: datetime) -> datetime:
    """The hour whose Spot price history a past moment's price is read from (`SPOT_HISTORY_WINDOW`)."""
    return at.replace(minute=0, second=0, microsecond=0)


class PriceNotFound(LookupError):
    """No price is known for this instance type in this region."""


@dataclass(frozen=True)
class SpotQuote:
    """The Spot price of one instance, with where it came from."""

    usd_per_hour: float
    source: SpotPriceSource
    on_demand_usd_per_hour: float

    @property
    def savings_pct(self) -> float:
        if self.on_demand_usd_per_hour <= 0:
            return 0.0
        return (1.0 - self.usd_per_hour / self.on_demand_usd_per_hour) * 100.0


class SpotAdvisor:
    """The Spot Instance Advisor document: savings percent vs On-Demand and interruption bucket per type."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document

    @classmethod
    def from_file(cls, path: Path) -> SpotAdvisor:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def savings_pct(self, instance_type: str, region: str, os: str = "Linux") -> float | None:
        entry = self._document.get("spot_advisor", {}).get(region, {}).get(os, {}).get(instance_type)
        return None if entry is None else float(entry["s"])

    def interruption_range(self, instance_type: str, region: str, os: str = "Linux") -> str | None:
        """The advisor's label for how often the type is interrupted per month, e.g. "<5%"."""
        entry = self._document.get("spot_advisor", {}).get(region, {}).get(os, {}).get(instance_type)
        if entry is None:
            return None
        labels = {item["index"]: item["label"] for item in self._document.get("ranges", [])}
        return labels.get(entry["r"])


class PriceBook(ABC):
    """On-Demand and Spot prices per instance type and region. Prices are per instance; see `usd_per_hour`."""

    def __init__(self, spot_advisor: SpotAdvisor | None = None) -> None:
        self.spot_advisor = spot_advisor

    @abstractmethod
    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        """The On-Demand price of one instance; raises `PriceNotFound`."""

    def observed_spot_usd_per_hour(
        self, instance_type: str, availability_zone: str | None, at: datetime | None = None
    ) -> float | None:
        """The Spot price of one instance in that zone (None: any zone of the book's region) at `at` (now when
        None), when this book can observe it."""
        return None

    def spot_quote(
        self, instance_type: str, region: str, availability_zone: str | None = None, at: datetime | None = None
    ) -> SpotQuote:
        """The Spot price of one instance: observed (in the zone, or across the region's zones when the zone is not
        known), else estimated from the advisor."""
        observed = self.observed_spot_usd_per_hour(instance_type, availability_zone, at)
        if observed is not None:
            return SpotQuote(observed, "observed", self.on_demand_usd_per_hour(instance_type, region))
        return self._estimated_spot_quote(instance_type, region)

    def _estimated_spot_quote(self, instance_type: str, region: str) -> SpotQuote:
        """The Spot price of one instance where none is observed: On-Demand less the advisor's savings, else
        On-Demand."""
        on_demand = self.on_demand_usd_per_hour(instance_type, region)
        savings = self.spot_advisor.savings_pct(instance_type, region) if self.spot_advisor else None
        if savings is not None:
            return SpotQuote(on_demand * (1.0 - savings / 100.0), "spot-advisor", on_demand)
        return SpotQuote(on_demand, "on-demand", on_demand)

    def usd_per_hour(
        self,
        instance_type: str,
        region: str,
        capacity: Capacity,
        nodes: int = 1,
        availability_zone: str | None = None,
        at: datetime | None = None,
    ) -> float:
        """The price of an attempt's capacity for all of its nodes (the run report's `usd_per_hour`)."""
        if capacity == "on-demand":
            per_instance = self.on_demand_usd_per_hour(instance_type, region)
        else:
            # An observed Spot price is the price whatever On-Demand costs: a Price List API that throttles or is down,
            # or does not list the type yet, must not leave it unknown. Only the estimates stand on On-Demand.
            observed = self.observed_spot_usd_per_hour(instance_type, availability_zone, at)
            per_instance = (
                observed if observed is not None else self._estimated_spot_quote(instance_type, region).usd_per_hour
            )
        return per_instance * nodes


class DataFilePriceBook(PriceBook):
    """Prices from the project's data files (offline): On-Demand prices and the Spot Advisor snapshot.

    `observed_spot_prices` maps (instance type, zone) to a known Spot price, e.g. the price column of a trace.
    """

    def __init__(
        self,
        on_demand_prices_path: Path,
        spot_advisor_path: Path | None = None,
        observed_spot_prices: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        super().__init__(SpotAdvisor.from_file(spot_advisor_path) if spot_advisor_path else None)
        self._on_demand = json.loads(Path(on_demand_prices_path).read_text(encoding="utf-8"))
        self._observed = dict(observed_spot_prices or {})

    @classmethod
    def from_data_dir(cls, data_dir: Path, **kwargs: Any) -> DataFilePriceBook:
        """The book of a directory laid out as the project's `data/` (On-Demand prices and Spot Advisor files)."""
        return cls(data_dir / "ec2-ondemand-prices.json", data_dir / "spot-advisor-data.json", **kwargs)

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        price = self._on_demand.get(instance_type, {}).get("ondemand_usd_per_hour", {}).get(region)
        if price is None:
            raise PriceNotFound(f"no On-Demand price for {instance_type} in {region} in the price data")
        return float(price)

    def observed_spot_usd_per_hour(
        self, instance_type: str, availability_zone: str | None, at: datetime | None = None
    ) -> float | None:
        return self._observed.get((instance_type, availability_zone)) if availability_zone else None


class AwsPriceBook(PriceBook):
    """Prices from AWS: the Price List API for On-Demand, EC2 Spot price history for Spot.

    `pricing_client` must be a `pricing` client in a Price List API region (`PRICING_API_REGION`); `ec2_client`
    an EC2 client in the region whose zones are asked about. Answers are cached in memory for this process.
    """

    def __init__(
        self,
        pricing_client: Any,
        ec2_client: Any | None = None,
        spot_advisor: SpotAdvisor | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(spot_advisor)
        self._pricing = pricing_client
        self._ec2 = ec2_client
        self._clock = clock
        self._now = now
        self._on_demand_cache: dict[tuple[str, str], float] = {}
        self._spot_cache: dict[tuple[str, str | None], tuple[float, float | None]] = {}
        # (type, zone, the hour's start): the hour's history, as known up to when it was asked (the hour's end once
        # it is over).
        self._spot_history: dict[tuple[str, str | None, datetime], tuple[datetime, SpotHistory]] = {}

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        key = (instance_type, region)
        if key not in self._on_demand_cache:
            self._on_demand_cache[key] = self._fetch_on_demand(instance_type, region)
        return self._on_demand_cache[key]

    def _fetch_on_demand(self, instance_type: str, region: str) -> float:
        filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type}]
        filters.append({"Type": "TERM_MATCH", "Field": "regionCode", "Value": region})
        filters.extend(
            {"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in LINUX_ON_DEMAND_FILTERS
        )
        paginator = self._pricing.get_paginator("get_products")
        for page in paginator.paginate(ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"):
            for product in page.get("PriceList", []):
                price = on_demand_price_from_product(product)
                if price is not None:
                    return price
        raise PriceNotFound(f"the AWS Price List has no Linux On-Demand price for {instance_type} in {region}")

    def observed_spot_usd_per_hour(
        self, instance_type: str, availability_zone: str | None, at: datetime | None = None
    ) -> float | None:
        if self._ec2 is None:
            return None
        if at is not None:
            return self._spot_price_in_its_hour(self._ec2, instance_type, availability_zone, as_utc(at))
        key = (instance_type, availability_zone)
        cached = self._spot_cache.get(key)
        # The current price is kept for SPOT_PRICE_CACHE_SECONDS.
        if cached is not None and self._clock() - cached[0] < SPOT_PRICE_CACHE_SECONDS:
            return cached[1]
        now = self._now()
        price = _price_at(_fetch_spot_history(self._ec2, instance_type, availability_zone, now, now), now)
        self._spot_cache[key] = (self._clock(), price)
        return price

    def _spot_price_in_its_hour(
        self, ec2_client: Any, instance_type: str, availability_zone: str | None, at: datetime
    ) -> float | None:
        """The price at a past moment, from the history of its hour: asked once, and again only for a moment after
        what was known of it when asked (the hour had not ended). A price at a past moment never changes."""
        hour = spot_price_hour(at)
        key = (instance_type, availability_zone, hour)
        cached = self._spot_history.get(key)
        if cached is None or at > cached[0]:
            known_until = max(at, min(hour + SPOT_HISTORY_WINDOW, as_utc(self._now())))
            history = _fetch_spot_history(ec2_client, instance_type, availability_zone, hour, known_until)
            cached = self._spot_history[key] = (known_until, history)
        return _price_at(cached[1], at)


def _fetch_spot_history(
    ec2_client: Any, instance_type: str, availability_zone: str | None, start: datetime, end: datetime
) -> SpotHistory:
    """Each zone's price changes from the one in effect at `start` (EC2 tells it with the window's changes) to `end`:
    the zone's, or without a zone every zone of the region's (where Batch's price-capacity-optimized allocation may
    place the job)."""
    zone_filter = {"AvailabilityZone": availability_zone} if availability_zone else {}
    paginator = ec2_client.get_paginator("describe_spot_price_history")
    history: SpotHistory = {}
    for page in paginator.paginate(
        InstanceTypes=[instance_type],
        ProductDescriptions=[SPOT_PRODUCT_DESCRIPTION],
        StartTime=start,
        EndTime=end,
        **zone_filter,
    ):
        for entry in page.get("SpotPriceHistory", []):
            zone = entry.get("AvailabilityZone", "")
            history.setdefault(zone, []).append((as_utc(entry["Timestamp"]), float(entry["SpotPrice"])))
    return {zone: sorted(changes) for zone, changes in history.items()}


def _price_at(history: SpotHistory, at: datetime) -> float | None:
    """The price in effect at `at`: each zone's latest change not after it; over several zones, their median."""
    in_effect: list[float] = []
    for changes in history.values():
        before = [price for when, price in changes if when <= at]
        if before:
            in_effect.append(before[-1])
    return statistics.median(in_effect) if in_effect else None


def on_demand_price_from_product(product: str | Mapping[str, Any]) -> float | None:
    """The hourly USD price of one Price List product (a JSON string in `PriceList`), None when it has none."""
    document = json.loads(product) if isinstance(product, str) else product
    for term in document.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit") not in ("Hrs", "Hours"):
                continue
            usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
            if usd > 0:
                return usd
    return None


def make_aws_price_book(region: str, spot_advisor: SpotAdvisor | None = None) -> AwsPriceBook:
    """An `AwsPriceBook` on the control plane's clients (call it at cold start, never at import time)."""
    from spot_hpc import aws

    return AwsPriceBook(
        pricing_client=aws.client("pricing", region_name=PRICING_API_REGION),
        ec2_client=aws.client("ec2", region_name=region),
        spot_advisor=spot_advisor,
    )
