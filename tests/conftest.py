"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spot_hpc import clock
from spot_hpc.ledger import ACTIVE_INDEX, Ledger


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An in-process moto for the test, with fake credentials in us-east-1: no request leaves the process."""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def ledger_table(moto_aws: None) -> Any:
    """The ledger's table (keys and the guard's index, as the template declares them) on moto, which evaluates
    conditional writes as DynamoDB does."""
    import boto3

    return boto3.resource("dynamodb", region_name="us-east-1").create_table(
        TableName="ledger",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "active", "active_sk")
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": ACTIVE_INDEX,
                "KeySchema": [
                    {"AttributeName": "active", "KeyType": "HASH"},
                    {"AttributeName": "active_sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )


@pytest.fixture
def ledger(ledger_table: Any) -> Ledger:
    return Ledger(ledger_table)


START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


class MovableClock:
    """The control plane's UTC clock, moved by the test."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def utc_clock() -> Iterator[MovableClock]:
    moved = MovableClock()
    clock.use_clock(moved)
    yield moved
    clock.use_clock(None)


@pytest.fixture(autouse=True)
def domain_logging_restored() -> Iterator[None]:
    """A handler's cold start hands the domain packages' loggers ("spot_hpc", "spot_checkpoint") to Powertools, which
    stops them propagating (`spot_hpc.handler`): undone after each test, so that a later test's caplog still sees the
    domain's records."""
    from spot_hpc.handler import DOMAIN_PACKAGES

    packages = [logging.getLogger(name) for name in DOMAIN_PACKAGES]
    saved = [(package.level, list(package.handlers), package.propagate) for package in packages]
    yield
    for package, (level, handlers, propagate) in zip(packages, saved, strict=True):
        package.setLevel(level)
        package.handlers = handlers
        package.propagate = propagate
