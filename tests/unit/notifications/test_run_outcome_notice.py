"""The notice at the end of a run (the notify function): which stage failed and why, in words, with the figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc.clock import format_time, utc_now
from spot_hpc.ledger import Attempt, NotificationClaimHeld, Run, Stage
from spot_hpc.outcome import finish
from spot_hpc.services import Services
from spot_hpc.slack import notification_dedupe_key

from spotctl.offline.webhook_sink import WebhookSink

NOW = datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
STARTED_AT = "2026-01-05T00:00:00Z"
ERROR = {
    "Error": "StageFailed",
    "Cause": "application_error: Essential container in task exited (exit code 3) after 2 retries",
}


class FakeLedger:
    """The ledger calls the end of a run makes, kept in memory (claims are conditional, as DynamoDB's are)."""

    def __init__(self, run: Run, stages: list[Stage], attempts: list[Attempt]) -> None:
        self.run, self.stages, self.attempts = run, stages, attempts
        self.claims: dict[str, str] = {}  # dedupe key -> "claimed" | "sent"
        self.notes: list[dict[str, str]] = []

    def get_run(self, run_id: str) -> Run | None:
        return self.run if run_id == self.run.run_id else None

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> bool:
        if self.run.status != "RUNNING":
            return False
        self.run.status, self.run.finished_at, self.run.error = status, format_time(utc_now()), error
        return True

    def get_run_items(self, run_id: str) -> tuple[list[Stage], list[Attempt]]:
        return self.stages, self.attempts

    def run_notifications(self, run_id: str) -> list[dict[str, str]]:
        return list(self.notes)

    def claim_notification(
        self, dedupe_key: str, holder_ends_at: datetime | None = None, notice: str | None = None
    ) -> str | None:
        if self.claims.get(dedupe_key) == "claimed":  # another invocation's, within its lease
            raise NotificationClaimHeld(dedupe_key, utc_now() + timedelta(seconds=62))
        if dedupe_key in self.claims:
            return None
        self.claims[dedupe_key] = "claimed"
        return dedupe_key  # the claim id

    def mark_notification_sent(self, dedupe_key: str, claim_id: str) -> bool:
        self.claims[dedupe_key] = "sent"
        return True

    def release_notification(self, dedupe_key: str, claim_id: str) -> None:
        self.claims.pop(dedupe_key, None)

    def record_notifications(self, run_id: str, entries: list[dict[str, str]]) -> None:
        self.notes.extend(entries)


class FakePrices:
    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **_: Any) -> float:
        return (1.0 if capacity == "on-demand" else 0.3) * nodes


class FakeSecrets:
    def __init__(self, url: str) -> None:
        self.url = url

    def get_secret_value(self, SecretId: str, **_: Any) -> dict[str, str]:  # boto3 names it SecretId
        return {"SecretString": self.url}


@pytest.fixture(autouse=True)
def fixed_clock(utc_clock) -> None:
    utc_clock.now = NOW


def _services(ledger: FakeLedger, sink: WebhookSink) -> Services:
    settings = SimpleNamespace(
        region="us-east-1", hpc_instance_type="c5n.18xlarge", spot_instance_type="c5.4xlarge",
        on_demand_instance_type="c5.4xlarge", slack_allow_loopback=True, slack_secret_id="spot-hpc/slack-webhook",
        notification_topic_arn=None, notifications_dlq_url=None,
    )  # fmt: skip
    return Services(settings, ledger, None, None, None, None, None, None, FakeSecrets(sink.url), FakePrices())  # type: ignore[arg-type]


def _attempt(stage: str, number: int, start: str, stop: str, **fields: Any) -> Attempt:
    return Attempt("run-1", stage, number, f"job-{stage}-{number}", f"{stage}-queue", "on-demand", 1, start,
                   started_at=start, stopped_at=stop, **{"usd_per_hour": 1.0, **fields})  # fmt: skip


def _failed_hpc_run() -> FakeLedger:
    run = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    stages = [
        Stage("run-1", "preprocess", 0, 1.0, True, 1, status="SUCCEEDED", attempt=1),
        Stage("run-1", "hpc", 1, 2.0, False, 2, status="FAILED", attempt=3, failure=ERROR["Cause"]),
        Stage("run-1", "postprocess", 2, 1.0, True, 1),
    ]
    app_error = {"status": "FAILED", "exit_code": 3, "failure_class": "application_error",
                 "status_reason": "Essential container in task exited"}  # fmt: skip
    attempts = [
        _attempt("preprocess", 1, "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", status="SUCCEEDED", exit_code=0),
        _attempt("hpc", 1, "2026-01-05T01:00:00Z", "2026-01-05T01:10:00Z", **app_error),
        _attempt("hpc", 2, "2026-01-05T01:10:00Z", "2026-01-05T01:20:00Z", **app_error),
        _attempt("hpc", 3, "2026-01-05T01:20:00Z", "2026-01-05T01:30:00Z", **app_error),
    ]
    return FakeLedger(run, stages, attempts)


def _fields(message: dict[str, Any]) -> list[str]:
    return [f["text"] for block in message["blocks"] if block["type"] == "section" for f in block.get("fields", [])]


def test_a_failed_run_says_which_stage_failed_and_why_in_words(sink: WebhookSink) -> None:
    # GIVEN a run whose HPC stage failed for good with an application error (exit code 3) on its third attempt
    ledger = _failed_hpc_run()

    # WHEN the state machine's failure path settles it
    finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN Slack is told once: the stage, that the application failed (not Spot), and on which attempt
    (message,) = sink.delivered_messages
    assert "*Stage*\nhpc" in _fields(message)
    reason = message["blocks"][1]["text"]["text"]
    assert reason.startswith("hpc failed for good on attempt 3: the application failed (exit code 3)")
    assert "0 interruptions, 0 requeues to On-Demand" in reason and "Details: StageFailed" in reason
    # ... with its cost, and no "savings" for a run that delivered nothing
    assert "*Cost*\n$1.50" in _fields(message) and not any("Savings" in text for text in _fields(message))
    assert "*Deadline*\n6.00 h (missed)" in _fields(message)
    # ... and the run report's notice carries the same words
    assert ledger.notes[0]["kind"] == "failed" and "stage hpc | hpc failed for good" in ledger.notes[0]["text"]


def test_a_stage_stopped_because_the_run_ended_is_not_told_as_a_move_to_on_demand(sink: WebhookSink) -> None:
    # GIVEN a run ended (aborted) while hpc ran: its job was stopped by the control plane, and Batch's end of it is
    # already recorded as a control-plane cancellation when the notice is built (a retried notify task)
    ledger = _failed_hpc_run()
    ledger.attempts[-1] = _attempt(
        "hpc", 3, "2026-01-05T01:20:00Z", "2026-01-05T01:30:00Z", status="FAILED",
        failure_class="cancelled_by_control_plane", status_reason="spot-hpc: run_ended (attempt 3)",
    )  # fmt: skip

    # WHEN the run is settled as failed
    finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the team reads that hpc was still running when the run ended, not that its work moved to On-Demand
    reason = sink.delivered_messages[0]["blocks"][1]["text"]["text"]
    assert reason.startswith("hpc was still on attempt 3 when the run ended; its job is stopped"), reason
    assert "On-Demand" not in reason.split(";")[0]


def test_the_failed_notice_is_sent_once_when_the_notify_task_is_retried(sink: WebhookSink) -> None:
    # GIVEN a failed run already settled and notified
    ledger = _failed_hpc_run()
    svc = _services(ledger, sink)
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN the state machine retries the notify task
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN nothing more reaches Slack, and the figures are not counted again
    assert len(sink.delivered_messages) == 1 and settlement.counted is False


FAILED_NOTICE = notification_dedupe_key("run-1", "hpc", "failed")


def test_a_notice_held_by_an_earlier_attempt_fails_the_notify_task_so_that_the_state_machine_retries_it(
    sink: WebhookSink,
) -> None:
    # GIVEN a failed run whose notice an earlier attempt of the notify task claimed (it died before sending)
    ledger = _failed_hpc_run()
    ledger.claims[FAILED_NOTICE] = "claimed"

    # WHEN the state machine runs the notify task again
    with pytest.raises(NotificationClaimHeld):
        finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the task fails with the error the state machine retries, the run is settled, and nothing went out
    assert ledger.run.status == "FAILED" and sink.delivered_messages == []


def test_a_notice_whose_holder_sent_it_makes_the_retried_notify_task_a_no_op(sink: WebhookSink) -> None:
    # GIVEN a failed run settled by a notify attempt that failed on a held claim, whose holder then sent the notice
    ledger = _failed_hpc_run()
    ledger.claims[FAILED_NOTICE] = "claimed"
    with pytest.raises(NotificationClaimHeld):
        finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    ledger.claims[FAILED_NOTICE] = "sent"

    # WHEN the state machine retries the task
    settlement = finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN it succeeds without telling anyone again, and the figures are not counted again
    assert sink.delivered_messages == [] and settlement.counted is False


def test_the_guard_settling_a_run_leaves_a_held_notice_and_the_run_s_count_to_the_notice_s_holder(
    sink: WebhookSink,
) -> None:
    # GIVEN a run whose failure notice another invocation is sending (a notify task racing the guard)
    ledger = _failed_hpc_run()
    ledger.claims[FAILED_NOTICE] = "claimed"

    # WHEN the SLA guard settles it, as it does a run whose execution ended without settling it
    payload = {"run_id": "run-1", "outcome": "failed", "error": ERROR}
    settlement = finish(_services(ledger, sink), payload, leave_held_notice=True)

    # THEN the guard does not fail over it (it never comes back to the run), and leaves the count to whoever sends it
    assert ledger.run.status == "FAILED"
    assert settlement.counted is False and sink.delivered_messages == []


def test_a_run_settled_by_an_invocation_that_died_before_its_notice_is_told_and_counted_by_the_retry(
    sink: WebhookSink,
) -> None:
    # GIVEN a failed run that a notify attempt settled before it died, without claiming its notice
    ledger = _failed_hpc_run()
    assert ledger.finish_run("run-1", "FAILED", ERROR)

    # WHEN the state machine retries the notify task
    settlement = finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the retry sends the notice and counts the run's figures (they were never counted)
    assert len(sink.delivered_messages) == 1 and settlement.counted is True


def test_a_late_call_with_the_other_outcome_counts_nothing(sink: WebhookSink) -> None:
    # GIVEN a run settled as failed
    ledger = _failed_hpc_run()
    finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN a call settles it as succeeded after that
    settlement = finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "succeeded"})

    # THEN the run stays failed and its figures are not counted a second time
    assert ledger.run.status == "FAILED" and settlement.counted is False


def test_a_succeeded_run_says_what_it_went_through(sink: WebhookSink) -> None:
    # GIVEN a run whose preprocess was reclaimed on Spot once and finished on On-Demand
    run = Run("run-2", "ingest", "incoming/b.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    stages = [Stage("run-2", "preprocess", 0, 1.0, True, 1, status="SUCCEEDED", attempt=2)]
    attempts = [
        Attempt("run-2", "preprocess", 1, "j1", "spot-queue", "spot", 1, STARTED_AT, usd_per_hour=0.3,
                status="FAILED", failure_class="spot_reclaim", started_at=STARTED_AT, stopped_at="2026-01-05T00:30:00Z",
                status_reason="Host EC2 (instance i-0abc) terminated."),
        Attempt("run-2", "preprocess", 2, "j2", "od-queue", "on-demand", 1, STARTED_AT, usd_per_hour=1.0,
                status="SUCCEEDED", exit_code=0, started_at="2026-01-05T00:30:00Z", stopped_at="2026-01-05T01:00:00Z",
                resumed_from_checkpoint=True),
    ]  # fmt: skip
    ledger = FakeLedger(run, stages, attempts)

    # WHEN it settles
    finish(_services(ledger, sink), {"run_id": "run-2", "outcome": "succeeded"})

    # THEN the notice says the deadline was met and what the run went through, with its cost and savings
    (message,) = sink.delivered_messages
    reason = message["blocks"][1]["text"]["text"]
    assert reason == "deadline met: 5.00 h of 6 h; 1 interruption, 1 requeue to On-Demand"
    assert "*Cost*\n$0.6500" in _fields(message) and "*Savings*\n35.0%" in _fields(message)


class PricesDown(FakePrices):
    """A price list that cannot be reached (the Pricing API refusing, say)."""

    def usd_per_hour(self, *_: Any, **__: Any) -> float:
        raise ConnectionError("pricing endpoint unreachable")


def _run_priced_while_prices_were_down() -> FakeLedger:
    ledger = _failed_hpc_run()
    ledger.attempts[0] = _attempt(
        "preprocess", 1, "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", status="SUCCEEDED", exit_code=0,
        usd_per_hour=0.0, price_unknown=True,
    )  # fmt: skip
    return ledger


def test_an_attempt_placed_while_prices_were_down_is_priced_at_the_run_end(sink: WebhookSink) -> None:
    # GIVEN a run whose preprocess attempt was placed while its price could not be looked up (recorded as $0)
    ledger = _run_priced_while_prices_were_down()

    # WHEN the run ends, with prices back
    settlement = finish(_services(ledger, sink), {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN that hour of On-Demand is billed ($1.00 of the $1.50), and nothing is flagged
    assert settlement.report["cost_usd"] == pytest.approx(1.5, abs=1e-5) and settlement.report["prices_unknown"] == 0
    (message,) = sink.delivered_messages
    assert "*Cost*\n$1.50" in _fields(message) and "looked up" not in message["blocks"][1]["text"]["text"]


def test_a_price_still_unknown_at_the_run_end_is_flagged_not_silently_zero(sink: WebhookSink) -> None:
    # GIVEN the same run, and prices still down at its end
    ledger = _run_priced_while_prices_were_down()
    services = _services(ledger, sink)
    services.prices = PricesDown()

    # WHEN the run ends
    settlement = finish(services, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the attempt and the three stages' On-Demand bases are flagged in the report and told in the notice
    report = settlement.report
    assert report["prices_unknown"] == 4 and report["stages"][0]["attempts"][0]["price_unknown"] is True
    assert report["cost_usd"] == pytest.approx(0.5, abs=1e-5)  # the three priced hpc attempts only
    (message,) = sink.delivered_messages
    assert "the cost counts 4 prices that could not be looked up as $0" in message["blocks"][1]["text"]["text"]


def test_whole_numbers_of_hours_and_dollars_read_back_from_dynamodb_as_the_floats_they_were(ledger: Any) -> None:
    # GIVEN a run, a stage and an attempt whose float fields hold whole numbers (DynamoDB keeps one kind of number)
    run = Run("run-9", "ingest", "incoming/c.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    ledger.create_run(run, [Stage("run-9", "preprocess", 0, 2.0, True, 1, attempt=1)])
    ledger.record_attempt(
        Attempt("run-9", "preprocess", 1, "j9", "spot-queue", "spot", 2, STARTED_AT, usd_per_hour=1.0)
    )

    # WHEN they are read back
    stages, attempts = ledger.get_run_items("run-9")
    again = ledger.get_run("run-9")

    # THEN the float fields are floats again for every reader, and whole-number fields stay ints
    assert type(again.deadline_hours) is float and type(stages[0].compute_hours) is float
    assert type(attempts[0].usd_per_hour) is float and attempts[0].usd_per_hour == 1.0
    assert type(attempts[0].nodes) is int and attempts[0].nodes == 2
