"""Price books: the project's data files offline; the Price List API and Spot price history through stubs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from spot_hpc.pricing import (
    PRICING_API_REGION,
    AwsPriceBook,
    DataFilePriceBook,
    PriceNotFound,
    SpotAdvisor,
    on_demand_price_from_product,
)

DATA_DIR = Path(__file__).resolve().parents[3] / "data"
NOW = datetime(2025, 6, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def data_book() -> DataFilePriceBook:
    return DataFilePriceBook.from_data_dir(DATA_DIR)


def test_on_demand_price_from_data(data_book: DataFilePriceBook) -> None:
    # GIVEN the project's On-Demand price data
    # WHEN the price of a p3.2xlarge in us-east-1 is asked
    price = data_book.on_demand_usd_per_hour("p3.2xlarge", "us-east-1")

    # THEN it is the file's figure
    document = json.loads((DATA_DIR / "ec2-ondemand-prices.json").read_text())
    assert price == document["p3.2xlarge"]["ondemand_usd_per_hour"]["us-east-1"]


def test_spot_estimate_is_on_demand_minus_advisor_savings(data_book: DataFilePriceBook) -> None:
    # GIVEN the Spot Advisor snapshot's savings for r5.16xlarge in us-east-1
    advisor = json.loads((DATA_DIR / "spot-advisor-data.json").read_text())
    savings = advisor["spot_advisor"]["us-east-1"]["Linux"]["r5.16xlarge"]["s"]

    # WHEN a Spot quote is asked without an observed price
    quote = data_book.spot_quote("r5.16xlarge", "us-east-1", availability_zone="us-east-1b")

    # THEN it is On-Demand x (1 - savings), marked as an advisor estimate
    on_demand = data_book.on_demand_usd_per_hour("r5.16xlarge", "us-east-1")
    assert quote.source == "spot-advisor"
    assert quote.usd_per_hour == pytest.approx(on_demand * (1 - savings / 100))
    assert quote.savings_pct == pytest.approx(savings)


def test_observed_spot_price_wins_over_the_estimate() -> None:
    # GIVEN a book that knows the Spot price in one zone (e.g. from a trace)
    book = DataFilePriceBook.from_data_dir(DATA_DIR, observed_spot_prices={("p3.2xlarge", "us-east-1a"): 0.9})

    # WHEN quotes are asked in that zone, in another zone, and without a zone
    in_zone = book.spot_quote("p3.2xlarge", "us-east-1", "us-east-1a")
    other_zone = book.spot_quote("p3.2xlarge", "us-east-1", "us-east-1b")
    no_zone = book.spot_quote("p3.2xlarge", "us-east-1")

    # THEN only the known zone uses the observed price
    assert (in_zone.usd_per_hour, in_zone.source) == (0.9, "observed")
    assert other_zone.source == no_zone.source == "spot-advisor"


def test_attempt_price_covers_all_nodes(data_book: DataFilePriceBook) -> None:
    # GIVEN a 4-node attempt
    # WHEN its On-Demand and Spot prices are asked
    on_demand = data_book.usd_per_hour("p3.2xlarge", "us-east-1", "on-demand", nodes=4)
    spot = data_book.usd_per_hour("p3.2xlarge", "us-east-1", "spot", nodes=4)

    # THEN they are four times the per-instance prices
    assert on_demand == pytest.approx(4 * data_book.on_demand_usd_per_hour("p3.2xlarge", "us-east-1"))
    assert spot == pytest.approx(4 * data_book.spot_quote("p3.2xlarge", "us-east-1").usd_per_hour)


def test_unknown_type_or_region_is_price_not_found(data_book: DataFilePriceBook) -> None:
    # GIVEN / WHEN / THEN unknown types and regions raise PriceNotFound
    with pytest.raises(PriceNotFound):
        data_book.on_demand_usd_per_hour("z99.mega", "us-east-1")
    with pytest.raises(PriceNotFound):
        data_book.on_demand_usd_per_hour("p3.2xlarge", "mars-north-1")


def test_without_any_spot_figure_spot_is_priced_as_on_demand() -> None:
    # GIVEN a book with On-Demand prices only (no advisor, no observation)
    book = DataFilePriceBook(DATA_DIR / "ec2-ondemand-prices.json")

    # WHEN a Spot quote is asked
    quote = book.spot_quote("c5.large", "us-east-1")

    # THEN savings are not invented
    assert quote.source == "on-demand" and quote.savings_pct == 0


def test_advisor_interruption_range_label() -> None:
    # GIVEN the advisor snapshot
    advisor = SpotAdvisor.from_file(DATA_DIR / "spot-advisor-data.json")

    # WHEN / THEN the interruption bucket is shown as its label
    assert advisor.interruption_range("p3.2xlarge", "us-east-1") in {"<5%", "5-10%", "10-15%", "15-20%", ">20%"}
    assert advisor.interruption_range("p3.2xlarge", "us-east-1") == ">20%"  # its bucket (r) is 4 in the snapshot
    assert advisor.interruption_range("z99.mega", "us-east-1") is None


# --- AWS: Price List API and Spot price history -------------------------------------------------------------------


def _client(service: str, region: str) -> object:
    return boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")


def _stubbed(service: str, region: str, *responses: tuple[str, dict, dict | None]) -> tuple[Any, Stubber]:
    """A client whose Stubber answers `responses` (operation, response, expected request or None) in order."""
    client = _client(service, region)
    stubber = Stubber(client)
    for operation, response, expected in responses:
        stubber.add_response(operation, response, expected)
    stubber.activate()
    return client, stubber


def _price_list_product(usd: str) -> str:
    return json.dumps(
        {
            "product": {"attributes": {"instanceType": "p3.2xlarge", "regionCode": "us-west-2"}},
            "terms": {
                "OnDemand": {
                    "SKU.TERM": {
                        "priceDimensions": {"SKU.TERM.DIM": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}},
                    }
                }
            },
        }
    )


EXPECTED_FILTERS = [
    {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "p3.2xlarge"},
    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-west-2"},
    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
    {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"},
    {"Type": "TERM_MATCH", "Field": "marketoption", "Value": "OnDemand"},
]


def test_price_list_request_and_cache() -> None:
    # GIVEN a Price List API client that answers exactly one, exactly-shaped request
    pricing = _client("pricing", PRICING_API_REGION)
    stubber = Stubber(pricing)
    stubber.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [_price_list_product("3.0600000000")]},
        {"ServiceCode": "AmazonEC2", "Filters": EXPECTED_FILTERS, "FormatVersion": "aws_v1"},
    )
    stubber.activate()
    book = AwsPriceBook(pricing_client=pricing)

    # WHEN the On-Demand price is asked twice
    first = book.on_demand_usd_per_hour("p3.2xlarge", "us-west-2")
    second = book.on_demand_usd_per_hour("p3.2xlarge", "us-west-2")

    # THEN the price is parsed from the product's terms and the second answer came from the cache
    assert first == second == 3.06
    stubber.assert_no_pending_responses()


def test_price_list_without_a_price_is_price_not_found() -> None:
    # GIVEN a Price List answer with no hourly price
    pricing, _ = _stubbed("pricing", PRICING_API_REGION, ("get_products", {"PriceList": []}, None))

    # WHEN / THEN the price is not found
    with pytest.raises(PriceNotFound):
        AwsPriceBook(pricing_client=pricing).on_demand_usd_per_hour("p3.2xlarge", "us-west-2")


def test_price_from_product_ignores_zero_and_non_hourly_dimensions() -> None:
    # GIVEN a product whose first dimension is a zero-priced reservation placeholder
    product = {
        "terms": {
            "OnDemand": {
                "A": {"priceDimensions": {"1": {"unit": "Quantity", "pricePerUnit": {"USD": "5"}}}},
                "B": {"priceDimensions": {"2": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0000000000"}}}},
                "C": {"priceDimensions": {"3": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0850000000"}}}},
            }
        }
    }

    # WHEN / THEN the first positive hourly price is taken
    assert on_demand_price_from_product(product) == 0.085
    assert on_demand_price_from_product({"terms": {}}) is None


def test_spot_price_history_is_paginated_and_the_price_in_effect_is_taken() -> None:
    # GIVEN an EC2 client whose Spot price history comes in two pages
    pricing, pricing_stubber = _stubbed(
        "pricing", PRICING_API_REGION, ("get_products", {"PriceList": [_price_list_product("3.06")]}, None)
    )
    ec2 = _client("ec2", "us-west-2")
    ec2_stubber = Stubber(ec2)
    expected_params = {
        "InstanceTypes": ["p3.2xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "AvailabilityZone": "us-west-2a",
        "StartTime": NOW,
        "EndTime": NOW,
    }

    ec2_stubber.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [_history_entry("0.95", _at(3))], "NextToken": "page-2"},
        expected_params,
    )
    ec2_stubber.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [_history_entry("0.97", _at(9)), _history_entry("1.20", _at(13))], "NextToken": ""},
        {**expected_params, "NextToken": "page-2"},
    )
    ec2_stubber.activate()
    book = AwsPriceBook(pricing_client=pricing, ec2_client=ec2, now=lambda: NOW, clock=lambda: 0.0)

    # WHEN the Spot quote in that zone is asked twice
    quote = book.spot_quote("p3.2xlarge", "us-west-2", availability_zone="us-west-2a")
    again = book.spot_quote("p3.2xlarge", "us-west-2", availability_zone="us-west-2a")

    # THEN both pages were read, the latest price not after "now" was taken, and the second ask was cached
    assert quote == again
    assert quote.usd_per_hour == 0.97 and quote.source == "observed"
    ec2_stubber.assert_no_pending_responses()
    pricing_stubber.assert_no_pending_responses()


def test_no_spot_history_falls_back_to_the_advisor() -> None:
    # GIVEN EC2 has no Spot price for the zone, and an advisor snapshot is at hand
    pricing, _ = _stubbed(
        "pricing", PRICING_API_REGION, ("get_products", {"PriceList": [_price_list_product("3.06")]}, None)
    )
    ec2, _ = _stubbed("ec2", "us-west-2", ("describe_spot_price_history", {"SpotPriceHistory": []}, None))
    advisor = SpotAdvisor({"spot_advisor": {"us-west-2": {"Linux": {"p3.2xlarge": {"s": 70, "r": 4}}}}})
    book = AwsPriceBook(pricing_client=pricing, ec2_client=ec2, spot_advisor=advisor, now=lambda: NOW)

    # WHEN a Spot quote is asked
    quote = book.spot_quote("p3.2xlarge", "us-west-2", availability_zone="us-west-2d")

    # THEN it is the advisor estimate
    assert quote.source == "spot-advisor"
    assert quote.usd_per_hour == pytest.approx(3.06 * 0.3)


def test_without_a_zone_the_spot_price_is_the_median_over_the_region_s_zones() -> None:
    # GIVEN the control plane does not know the zone (Batch picks it), and EC2 prices three zones of the region
    pricing, _ = _stubbed(
        "pricing", PRICING_API_REGION, ("get_products", {"PriceList": [_price_list_product("3.06")]}, None)
    )

    history = [
        _history_entry("0.90", _at(3)),
        _history_entry("0.95", _at(9)),
        _history_entry("1.10", _at(4), zone="us-west-2b"),
        _history_entry("1.30", _at(5), zone="us-west-2c"),
    ]
    ec2, ec2_stubber = _stubbed(
        "ec2",
        "us-west-2",
        (
            "describe_spot_price_history",
            {"SpotPriceHistory": history},
            {"InstanceTypes": ["p3.2xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": NOW, "EndTime": NOW},
        ),
    )
    book = AwsPriceBook(pricing_client=pricing, ec2_client=ec2, now=lambda: NOW)

    # WHEN an attempt's Spot price is asked without a zone, as the control plane asks it
    per_hour = book.usd_per_hour("p3.2xlarge", "us-west-2", "spot", nodes=2)

    # THEN it is observed, not On-Demand: the median of each zone's latest price (0.95, 1.10, 1.30), for both nodes
    assert per_hour == pytest.approx(2 * 1.10)
    ec2_stubber.assert_no_pending_responses()


def _at(hour: int) -> datetime:
    """An hour of the day the history tests are set on."""
    return datetime(2025, 6, 28, hour, 0, tzinfo=UTC)


def _history_entry(price: str, when: datetime, zone: str = "us-west-2a") -> dict:
    """One row of DescribeSpotPriceHistory for p3.2xlarge."""
    return {
        "AvailabilityZone": zone,
        "InstanceType": "p3.2xlarge",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": when,
    }


def _history_request(start: datetime, end: datetime) -> dict:
    return {
        "InstanceTypes": ["p3.2xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "AvailabilityZone": "us-west-2a",
        "StartTime": start,
        "EndTime": end,
    }


def test_a_past_spot_price_is_read_from_its_hour_asked_once_for_all_of_its_moments() -> None:
    # GIVEN EC2's Spot price history of the zone for 09:00-10:00, which tells the price in effect at 09:00 (set at
    # 08:00) and its change at 09:30
    ec2, ec2_stubber = _stubbed(
        "ec2",
        "us-west-2",
        (
            "describe_spot_price_history",
            {
                "SpotPriceHistory": [
                    _history_entry("0.90", datetime(2025, 6, 28, 8, 0, tzinfo=UTC)),
                    _history_entry("0.95", datetime(2025, 6, 28, 9, 30, tzinfo=UTC)),
                ]
            },
            _history_request(datetime(2025, 6, 28, 9, 0, tzinfo=UTC), datetime(2025, 6, 28, 10, 0, tzinfo=UTC)),
        ),
    )
    book = AwsPriceBook(pricing_client=None, ec2_client=ec2, now=lambda: NOW)

    # WHEN the price is asked as of three moments of that hour (shards starting one after the other)
    prices = [
        book.observed_spot_usd_per_hour("p3.2xlarge", "us-west-2a", datetime(2025, 6, 28, 9, minute, tzinfo=UTC))
        for minute in (5, 29, 45)
    ]

    # THEN each is the price in effect at its moment, from one request for the hour
    assert prices == [0.90, 0.90, 0.95]
    ec2_stubber.assert_no_pending_responses()


def test_a_spot_price_of_the_hour_under_way_is_asked_again_for_a_moment_after_what_was_known() -> None:
    # GIVEN the time 12:20, and EC2's price history of the zone from 12:00 asked up to 12:20, then up to 12:50
    now = {"at": datetime(2025, 6, 28, 12, 20, tzinfo=UTC)}
    hour = datetime(2025, 6, 28, 12, 0, tzinfo=UTC)
    set_at_eleven = _history_entry("0.90", datetime(2025, 6, 28, 11, 0, tzinfo=UTC))
    changed = _history_entry("1.10", datetime(2025, 6, 28, 12, 30, tzinfo=UTC))
    ec2, ec2_stubber = _stubbed(
        "ec2",
        "us-west-2",
        ("describe_spot_price_history", {"SpotPriceHistory": [set_at_eleven]}, _history_request(hour, now["at"])),
        (
            "describe_spot_price_history",
            {"SpotPriceHistory": [set_at_eleven, changed]},
            _history_request(hour, datetime(2025, 6, 28, 12, 50, tzinfo=UTC)),
        ),
    )
    book = AwsPriceBook(pricing_client=None, ec2_client=ec2, now=lambda: now["at"])

    # WHEN the price is asked as of 12:10 and 12:15, then, at 12:50, as of 12:40
    early = [book.observed_spot_usd_per_hour("p3.2xlarge", "us-west-2a", hour.replace(minute=m)) for m in (10, 15)]
    now["at"] = datetime(2025, 6, 28, 12, 50, tzinfo=UTC)
    later = book.observed_spot_usd_per_hour("p3.2xlarge", "us-west-2a", hour.replace(minute=40))

    # THEN the first two came from one request, and the third, after what it told, from another
    assert (early, later) == ([0.90, 0.90], 1.10)
    ec2_stubber.assert_no_pending_responses()


def test_a_spot_price_ec2_tells_needs_no_on_demand_price() -> None:
    # GIVEN a Price List API that throttles every request, and EC2's Spot price history of the zone
    pricing = _client("pricing", PRICING_API_REGION)
    pricing_stubber = Stubber(pricing)
    pricing_stubber.add_client_error("get_products", service_error_code="ThrottlingException", http_status_code=400)
    pricing_stubber.activate()
    ec2, ec2_stubber = _stubbed(
        "ec2",
        "us-west-2",
        ("describe_spot_price_history", {"SpotPriceHistory": [_history_entry("0.95", _at(9))]}, None),
    )
    book = AwsPriceBook(pricing_client=pricing, ec2_client=ec2, now=lambda: NOW)

    # WHEN an attempt's Spot price in that zone is asked
    per_hour = book.usd_per_hour("p3.2xlarge", "us-west-2", "spot", nodes=2, availability_zone="us-west-2a")

    # THEN it is EC2's price for both nodes: the On-Demand price it does not need cannot leave it unknown
    assert per_hour == pytest.approx(2 * 0.95)
    ec2_stubber.assert_no_pending_responses()
