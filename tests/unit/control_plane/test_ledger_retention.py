"""Every item the ledger writes expires after the retention period (DynamoDB TTL), whatever wrote it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spot_hpc.ledger import Attempt, JobRef, Ledger, Run, Stage

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class RecordingTable:
    """A table that keeps what was put (fakes over mocks: the ledger's own code runs unchanged)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put_item(self, Item: dict[str, Any], **_: Any) -> None:  # boto3 names it Item
        self.items.append(Item)

    def update_item(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": {}}  # updates change items written before; they carry no expiry of their own


@pytest.fixture(autouse=True)
def fixed_clock(utc_clock) -> None:
    utc_clock.now = NOW


def test_every_write_sets_the_expiry():
    # GIVEN a ledger with a 30-day retention
    table = RecordingTable()
    ledger = Ledger(table, retention_days=30)
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-11-23T12:00:00Z", 24.0, "2026-11-22T12:00:00Z", {})
    stage = Stage("r1", "preprocess", 0, 1.0, True, 1)
    attempt = Attempt("r1", "preprocess", 1, "job-1", "spot-queue", "spot", 1, "2026-11-22T12:00:00Z")
    # WHEN every kind of item is written
    ledger.create_run(run, [stage])
    ledger.record_attempt(attempt)
    ledger.index_instance("i-1", JobRef("job-1", "r1", "preprocess", 1))
    ledger.record_rejection("aws.s3", "bucket is not this stack's", {"event_id": "e1"})
    ledger.record_notifications("r1", [{"kind": "run_finished", "channel": "slack"}])
    ledger.claim_notification("r1#run_finished")
    # THEN each of them expires 30 days from now
    expiry = int((NOW + timedelta(days=30)).timestamp())
    assert len(table.items) == 8
    assert {item["pk"].split("#")[0] for item in table.items} == {"RUN", "JOB", "INSTANCE", "REJECTION", "NOTIFIED"}
    assert all(item["expires_at"] == expiry for item in table.items)


def test_an_item_an_update_creates_expires_as_a_put_one_does_and_an_items_expiry_is_kept(
    ledger: Ledger, ledger_table, utc_clock
):
    # GIVEN a run written a day ago, and no item for another run (it expired, or was never written)
    ledger.create_run(
        Run("r1", "b", "incoming/a.csv", "v1", "2026-11-23T12:00:00Z", 24.0, "2026-11-22T12:00:00Z", {}), []
    )
    written = ledger_table.get_item(Key={"pk": "RUN#r1", "sk": "RUN"})["Item"]["expires_at"]
    # WHEN both are updated a day later (DynamoDB's UpdateItem creates a missing item)
    utc_clock.now = NOW + timedelta(days=1)
    ledger.update_run("r1", execution_arn="arn:1")
    ledger.update_run("r2", execution_arn="arn:2")
    # THEN the run written before keeps its expiry, and the item the update created expires after the retention,
    # rather than never
    assert ledger_table.get_item(Key={"pk": "RUN#r1", "sk": "RUN"})["Item"]["expires_at"] == written
    created = ledger_table.get_item(Key={"pk": "RUN#r2", "sk": "RUN"})["Item"]
    assert written == int((NOW + timedelta(days=90)).timestamp())
    assert created["expires_at"] == int((NOW + timedelta(days=91)).timestamp())
