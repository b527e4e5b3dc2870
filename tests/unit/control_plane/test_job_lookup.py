"""A Batch event finds its job by id in the ledger right after the job was recorded (DynamoDB reads are eventually
consistent unless asked otherwise: a read just after a write may not see it)."""

from __future__ import annotations

from typing import Any

from spot_hpc.ledger import Attempt, JobRef, Ledger, Run, Stage


class StaleReplicaTable:
    """The ledger's table as an eventually consistent read may see it just after the writes: a GetItem not asked to be
    strongly consistent finds nothing yet; everything else goes to the table."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get_item(self, **request: Any) -> dict[str, Any]:
        if not request.get("ConsistentRead"):
            return {}
        return self._table.get_item(**request)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def test_a_job_recorded_a_moment_ago_is_found_by_its_id(ledger_table: Any, utc_clock):
    # GIVEN a stage whose attempt's job was just recorded (the job's first events follow its submission in seconds,
    # and a job adopted from its own event is looked up at once after recording it)
    ledger = Ledger(StaleReplicaTable(ledger_table))
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    ledger.create_run(run, [Stage("r1", "preprocess", 0, 1.0, True, 1)])
    ledger.claim_attempt("r1", "preprocess", 0)
    ledger.record_attempt(Attempt("r1", "preprocess", 1, "job-1", "spot-queue", "spot", 1, "2026-01-05T06:00:00Z"))
    # WHEN a Batch event of that job looks it up by its id
    found = ledger.find_job("job-1")
    # THEN it is found: the read sees the write before it
    assert found == JobRef("job-1", "r1", "preprocess", 1)
