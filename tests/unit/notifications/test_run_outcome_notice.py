"""The notice at the end of a run (the notify function): which stage failed and why, in words, with the figures. The
ledger runs on moto (conftest), so the notice's claim and the run's count follow the ledger's own conditional writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc import notifier
from spot_hpc.clock import utc_now
from spot_hpc.guard import _settle_as_ended
from spot_hpc.ledger import Attempt, Ledger, NotificationClaimHeld, Run, Stage
from spot_hpc.notifier import redeliver_parked_notices
from spot_hpc.outcome import finish, run_report
from spot_hpc.pricing import PriceBook
from spot_hpc.services import Services
from spot_hpc.slack import notification_dedupe_key

from spotctl.offline.webhook_sink import WebhookSink

NOW = datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
STARTED_AT = "2026-01-05T00:00:00Z"
ERROR = {
    "Error": "StageFailed",
    "Cause": "application_error: Essential container in task exited (exit code 3) after 2 retries",
}
FAILED_NOTICE = notification_dedupe_key("run-1", "hpc", "failed")


class FakePrices(PriceBook):
    """On-Demand at $1.00 an instance-hour (the run report asks only On-Demand prices)."""

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        return 1.0


@pytest.fixture(autouse=True)
def fixed_clock(utc_clock) -> None:
    utc_clock.now = NOW


@pytest.fixture
def svc(services: Services) -> Services:
    """The notify function's services on moto (conftest), with a price list."""
    services.prices = FakePrices()
    return services


def _write_run(
    ledger: Ledger, run: Run, stages: list[Stage], attempts: list[Attempt], ended: dict[str, tuple[str, str | None]]
) -> None:
    """The run as the control plane leaves it in the ledger: each attempt claimed on its stage and recorded in turn,
    then each stage in `ended` settled (status, failure) and answered to the state machine; the others stay PENDING."""
    ledger.create_run(run, stages)
    for attempt in attempts:
        ledger.claim_attempt(run.run_id, attempt.stage, attempt.attempt - 1)
        ledger.record_attempt(attempt)
    for stage, (status, failure) in ended.items():
        ledger.settle_stage(run.run_id, stage, status, None, failure)
        ledger.mark_answered(run.run_id, stage)


def _attempt(stage: str, number: int, start: str, stop: str, capacity: str = "on-demand", **fields: Any) -> Attempt:
    return Attempt("run-1", stage, number, f"job-{stage}-{number}", f"{stage}-queue", capacity, 1, start,
                   started_at=start, stopped_at=stop, **{"usd_per_hour": 1.0, **fields})  # fmt: skip


def _hpc_failed_attempts() -> list[Attempt]:
    """Preprocess done in an hour, then hpc failing three times with an application error (exit code 3)."""
    app_error = {"status": "FAILED", "exit_code": 3, "failure_class": "application_error",
                 "status_reason": "Essential container in task exited"}  # fmt: skip
    return [
        _attempt("preprocess", 1, "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", status="SUCCEEDED", exit_code=0),
        _attempt("hpc", 1, "2026-01-05T01:00:00Z", "2026-01-05T01:10:00Z", **app_error),
        _attempt("hpc", 2, "2026-01-05T01:10:00Z", "2026-01-05T01:20:00Z", **app_error),
        _attempt("hpc", 3, "2026-01-05T01:20:00Z", "2026-01-05T01:30:00Z", **app_error),
    ]


def _failed_hpc_run(ledger: Ledger, attempts: list[Attempt] | None = None) -> None:
    """run-1, whose HPC stage failed for good (on `attempts`, `_hpc_failed_attempts` unless given)."""
    run = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    stages = [
        Stage("run-1", "preprocess", 0, 1.0, True, 1),
        Stage("run-1", "hpc", 1, 2.0, False, 2),
        Stage("run-1", "postprocess", 2, 1.0, True, 1),
    ]
    ended = {"preprocess": ("SUCCEEDED", None), "hpc": ("FAILED", ERROR["Cause"])}
    _write_run(ledger, run, stages, attempts or _hpc_failed_attempts(), ended)


def _claim_held_by_another_invocation(ledger: Ledger) -> str:
    """The failed notice's claim, taken by a notify invocation that has a minute left (its lease): its claim id."""
    claim = ledger.claim_notification(FAILED_NOTICE, utc_now() + timedelta(minutes=1))
    assert claim is not None
    return claim


def _fields(message: dict[str, Any]) -> list[str]:
    return [f["text"] for block in message["blocks"] if block["type"] == "section" for f in block.get("fields", [])]


def test_a_failed_run_says_which_stage_failed_and_why_in_words(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a run whose HPC stage failed for good with an application error (exit code 3) on its third attempt
    _failed_hpc_run(svc.ledger)

    # WHEN the state machine's failure path settles it
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

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
    notes = svc.ledger.run_notifications("run-1")
    assert notes[0]["kind"] == "failed" and "stage hpc | hpc failed for good" in notes[0]["text"]


def test_a_stage_stopped_because_the_run_ended_is_not_told_as_a_move_to_on_demand(
    svc: Services, sink: WebhookSink
) -> None:
    # GIVEN a run ended (aborted) while hpc ran: its job was stopped by the control plane, and Batch's end of it is
    # already recorded as a control-plane cancellation when the notice is built (a retried notify task)
    attempts = _hpc_failed_attempts()
    attempts[-1] = _attempt(
        "hpc", 3, "2026-01-05T01:20:00Z", "2026-01-05T01:30:00Z", status="FAILED",
        failure_class="cancelled_by_control_plane", status_reason="spot-hpc: run_ended (attempt 3)",
    )  # fmt: skip
    _failed_hpc_run(svc.ledger, attempts)

    # WHEN the run is settled as failed
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the team reads that hpc was still running when the run ended, not that its work moved to On-Demand
    reason = sink.delivered_messages[0]["blocks"][1]["text"]["text"]
    assert reason.startswith("hpc was still on attempt 3 when the run ended; its job is stopped"), reason
    assert "On-Demand" not in reason.split(";")[0]


def test_the_failed_notice_is_sent_once_when_the_notify_task_is_retried(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a failed run already settled and notified
    _failed_hpc_run(svc.ledger)
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN the state machine retries the notify task
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN nothing more reaches Slack, and the figures are not counted again
    assert len(sink.delivered_messages) == 1 and settlement.counted is False


def test_a_notice_held_by_an_earlier_attempt_fails_the_notify_task_so_that_the_state_machine_retries_it(
    svc: Services, sink: WebhookSink
) -> None:
    # GIVEN a failed run whose notice an earlier attempt of the notify task claimed (it died before sending)
    _failed_hpc_run(svc.ledger)
    _claim_held_by_another_invocation(svc.ledger)

    # WHEN the state machine runs the notify task again, within that claim's lease
    with pytest.raises(NotificationClaimHeld):
        finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the task fails with the error the state machine retries, the run is settled, and nothing went out
    run = svc.ledger.get_run("run-1")
    assert run is not None and run.status == "FAILED" and sink.delivered_messages == []


def test_a_notice_whose_holder_sent_it_makes_the_retried_notify_task_a_no_op(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a failed run settled by a notify attempt that failed on a held claim, whose holder then sent the notice
    _failed_hpc_run(svc.ledger)
    holder = _claim_held_by_another_invocation(svc.ledger)
    with pytest.raises(NotificationClaimHeld):
        finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    assert svc.ledger.mark_notification_sent(FAILED_NOTICE, holder)

    # WHEN the state machine retries the task
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN it succeeds without telling anyone again, and the figures are not counted again
    assert sink.delivered_messages == [] and settlement.counted is False


def test_the_guard_settling_a_run_leaves_a_held_notice_and_the_run_s_count_to_the_notice_s_holder(
    svc: Services, sink: WebhookSink
) -> None:
    # GIVEN a run whose failure notice another invocation is sending (a notify task racing the guard)
    _failed_hpc_run(svc.ledger)
    _claim_held_by_another_invocation(svc.ledger)

    # WHEN the SLA guard settles it, as it does a run whose execution ended without settling it
    payload = {"run_id": "run-1", "outcome": "failed", "error": ERROR}
    settlement = finish(svc, payload, leave_held_notice=True)

    # THEN the guard does not fail over it (it never comes back to the run), and leaves the count to whoever sends it
    run = svc.ledger.get_run("run-1")
    assert run is not None and run.status == "FAILED"
    assert settlement.counted is False and sink.delivered_messages == []


def test_a_run_settled_by_an_invocation_that_died_before_its_notice_is_told_and_counted_by_the_retry(
    svc: Services, sink: WebhookSink
) -> None:
    # GIVEN a failed run that a notify attempt settled before it died, without claiming its notice
    _failed_hpc_run(svc.ledger)
    assert svc.ledger.finish_run("run-1", "FAILED", f"{ERROR['Error']}: {ERROR['Cause']}")

    # WHEN the state machine retries the notify task
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the retry sends the notice and counts the run's figures (they were never counted)
    assert len(sink.delivered_messages) == 1 and settlement.counted is True


def _fail_first_write(monkeypatch: pytest.MonkeyPatch, method: str, operation: str) -> list[str]:
    """DynamoDB failing (past botocore's retries) the first call of `Ledger.<method>`, a write about a run; the later
    ones go through. Returns the runs it failed for."""
    real = getattr(Ledger, method)
    failed: list[str] = []

    def fail_once(self: Ledger, run_id: str, *args: Any) -> Any:
        if not failed:
            failed.append(run_id)
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, operation)
        return real(self, run_id, *args)

    monkeypatch.setattr(Ledger, method, fail_once)
    return failed


def test_a_notice_sent_whose_note_on_the_run_could_not_be_written_still_counts_the_run_once(
    svc: Services, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a failed run, and DynamoDB failing (past botocore's retries) the note of its notice on the run, written
    # once the notice went out and was marked sent
    _failed_hpc_run(svc.ledger)
    failed = _fail_first_write(monkeypatch, "record_notifications", "PutItem")

    # WHEN the notify task runs, and the state machine runs it again (as it would after a failure)
    settlements = [finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR}) for _ in range(2)]

    # THEN the team was told once and the run counted once: by the invocation that sent the notice
    assert failed == ["run-1"] and len(sink.delivered_messages) == 1
    assert [settlement.counted for settlement in settlements] == [True, False]


def test_a_run_whose_closing_failed_after_its_notice_went_out_is_still_counted_once(
    svc: Services, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a failed run, and DynamoDB failing (past botocore's retries) the one write after its notice: closing the run
    _failed_hpc_run(svc.ledger)
    failed = _fail_first_write(monkeypatch, "close_run", "UpdateItem")

    # WHEN the notify task runs, and then the SLA guard's sweep settles the run it finds still open
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    open_after_notice = [run.run_id for run in svc.ledger.open_runs()]
    swept = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR}, leave_held_notice=True)

    # THEN the team was told once and the run counted once, by the invocation that sent the notice (before, it failed
    # and its retry found the notice sent: no invocation counted it); the sweep closes the run
    assert failed == ["run-1"] and len(sink.delivered_messages) == 1
    assert (settlement.counted, swept.counted) == (True, False)
    assert open_after_notice == ["run-1"] and list(svc.ledger.open_runs()) == []


class JobsTerminated:
    """AWS Batch as the run's end reaches it: the jobs it terminates."""

    def __init__(self) -> None:
        self.terminated: list[str] = []

    def terminate(self, job_id: str, reason: str) -> None:
        self.terminated.append(job_id)


def test_an_ended_run_is_billed_as_of_its_end_when_an_attempt_s_own_end_was_never_recorded(
    svc: Services, sink: WebhookSink, utc_clock
) -> None:
    # GIVEN run-1 failed at 05:00 while hpc ran On-Demand on 2 nodes ($1 a node-hour) from 01:30: the run's end stopped
    # the job, but its end event was lost, so its attempt stays RUNNING in the ledger
    run = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    stages = [Stage("run-1", "preprocess", 0, 1.0, True, 1), Stage("run-1", "hpc", 1, 2.0, False, 2)]
    preprocess = _attempt("preprocess", 1, STARTED_AT, "2026-01-05T01:00:00Z", status="SUCCEEDED", exit_code=0)
    hpc = Attempt("run-1", "hpc", 1, "job-hpc-1", "hpc-queue", "on-demand", 2, "2026-01-05T01:30:00Z",
                  usd_per_hour=2.0, status="RUNNING", started_at="2026-01-05T01:30:00Z")  # fmt: skip
    _write_run(svc.ledger, run, stages, [preprocess, hpc], {"preprocess": ("SUCCEEDED", None)})
    svc.batch = JobsTerminated()
    told = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR}).report

    # WHEN its report is read a month later (`spotctl report --stack`)
    utc_clock.advance(days=30)
    later = run_report(svc, svc.ledger.get_run("run-1"))  # type: ignore[arg-type]

    # THEN it costs what it cost when it ended: 1 h of preprocess and 3.5 h of hpc at $2, not a month of a job stopped
    assert told["cost_usd"] == pytest.approx(1.0 + 3.5 * 2.0)
    assert later["cost_usd"] == told["cost_usd"] and later["as_of_hours"] == told["finished_hours"] == 5.0
    assert svc.batch.terminated == ["job-hpc-1"]


class SecretsManagerFailing:
    """Secrets Manager failing (past botocore's retries) while `failing`; the real client otherwise."""

    def __init__(self, real: Any) -> None:
        self.real, self.failing = real, True

    def get_secret_value(self, **request: Any) -> Any:
        if self.failing:
            raise ClientError({"Error": {"Code": "InternalServiceError", "Message": "unavailable"}}, "GetSecretValue")
        return self.real.get_secret_value(**request)


def test_a_run_end_notice_whose_webhook_secret_could_not_be_read_reaches_slack_once_it_can(
    svc: Services, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a failed run, and Secrets Manager failing for a moment as its notice goes out
    _failed_hpc_run(svc.ledger)
    secrets = SecretsManagerFailing(svc.secrets)
    svc.secrets = secrets
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    parked_notes = [(n["channel"], n.get("status")) for n in svc.ledger.run_notifications("run-1")]

    # WHEN Secrets Manager is back and the SLA guard sends the parked notices (past the secret's cache)
    secrets.failing = False
    monkeypatch.setattr(notifier, "WEBHOOK_MAX_AGE_SECONDS", 0)
    redeliver_parked_notices(svc)

    # THEN the Slack copy was parked, not skipped as if Slack were not set up, and reached Slack late, once
    assert settlement.counted is True and ("slack", "dead-lettered") in parked_notes
    assert ["Pipeline failed: run run-1" in m["text"] for m in sink.delivered_messages] == [True]


def test_a_run_end_notice_whose_webhook_secret_holds_no_usable_url_reaches_slack_once_the_secret_is_fixed(
    svc: Services, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a failed run, and the webhook secret holding its URL with a line break after it (as a secret read from a
    # file gets), which is no webhook URL the sender takes; the secret read afresh each time
    _failed_hpc_run(svc.ledger)
    secret_id = svc.settings.slack_secret_id
    svc.secrets.put_secret_value(SecretId=secret_id, SecretString=sink.url + "\n")
    monkeypatch.setattr(notifier, "WEBHOOK_MAX_AGE_SECONDS", 0)

    # WHEN the run's end is told, then the secret is fixed and the SLA guard sends the parked notices
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    parked_notes = [(n["channel"], n.get("status")) for n in svc.ledger.run_notifications("run-1")]
    svc.secrets.put_secret_value(SecretId=secret_id, SecretString=sink.url)
    redeliver_parked_notices(svc)

    # THEN the Slack copy was parked, and the run report says so, not skipped as if Slack were not set up; and it
    # reached Slack once the secret was fixed, once
    assert settlement.counted is True and ("slack", "dead-lettered") in parked_notes
    assert ["Pipeline failed: run run-1" in m["text"] for m in sink.delivered_messages] == [True]


def test_a_late_call_with_the_other_outcome_counts_nothing(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a run settled as failed
    _failed_hpc_run(svc.ledger)
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN a call settles it as succeeded after that
    settlement = finish(svc, {"run_id": "run-1", "outcome": "succeeded"})

    # THEN the run stays failed and its figures are not counted a second time
    run = svc.ledger.get_run("run-1")
    assert run is not None and run.status == "FAILED" and settlement.counted is False


def test_a_late_call_with_the_other_outcome_tells_nothing(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a run settled as failed, and told so
    _failed_hpc_run(svc.ledger)
    finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN a call that comes late settles it as succeeded (a notify task still running when the execution was
    # stopped and the SLA guard settled the run as failed)
    finish(svc, {"run_id": "run-1", "outcome": "succeeded"})

    # THEN the team is told only how the run ended: no "Pipeline succeeded" after its "Pipeline failed"
    headers = [message["blocks"][0]["text"]["text"] for message in sink.delivered_messages]
    assert headers == [":x: Pipeline failed"]
    assert [note["kind"] for note in svc.ledger.run_notifications("run-1")] == ["failed", "failed"]


def test_a_succeeded_run_says_what_it_went_through(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a run whose preprocess was reclaimed on Spot once and finished on On-Demand
    run = Run("run-2", "ingest", "incoming/b.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    attempts = [
        Attempt("run-2", "preprocess", 1, "j1", "spot-queue", "spot", 1, STARTED_AT, usd_per_hour=0.3,
                status="FAILED", failure_class="spot_reclaim", started_at=STARTED_AT, stopped_at="2026-01-05T00:30:00Z",
                status_reason="Host EC2 (instance i-0abc) terminated."),
        Attempt("run-2", "preprocess", 2, "j2", "od-queue", "on-demand", 1, STARTED_AT, usd_per_hour=1.0,
                status="SUCCEEDED", exit_code=0, started_at="2026-01-05T00:30:00Z", stopped_at="2026-01-05T01:00:00Z",
                resumed_from_checkpoint=True),
    ]  # fmt: skip
    stages = [Stage("run-2", "preprocess", 0, 1.0, True, 1)]
    _write_run(svc.ledger, run, stages, attempts, {"preprocess": ("SUCCEEDED", None)})

    # WHEN it settles
    finish(svc, {"run_id": "run-2", "outcome": "succeeded"})

    # THEN the notice says the deadline was met and what the run went through, with its cost and savings
    (message,) = sink.delivered_messages
    reason = message["blocks"][1]["text"]["text"]
    assert reason == "deadline met: 5.00 h of 6 h; 1 interruption, 1 requeue to On-Demand"
    assert "*Cost*\n$0.6500" in _fields(message) and "*Savings*\n35.0%" in _fields(message)


class PricesDown(FakePrices):
    """A price list that cannot be reached (the Pricing API refusing, say)."""

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        raise ConnectionError("pricing endpoint unreachable")


def _run_priced_while_prices_were_down(ledger: Ledger, capacity: str = "on-demand") -> None:
    """The failed hpc run, its preprocess attempt (an hour on `capacity`, placed at 00:00) recorded at $0 with its
    price unknown."""
    attempts = _hpc_failed_attempts()
    attempts[0] = _attempt(
        "preprocess", 1, "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", capacity, status="SUCCEEDED", exit_code=0,
        usd_per_hour=0.0, price_unknown=True,
    )  # fmt: skip
    _failed_hpc_run(ledger, attempts)


def test_an_attempt_placed_while_prices_were_down_is_priced_at_the_run_end(svc: Services, sink: WebhookSink) -> None:
    # GIVEN a run whose preprocess attempt was placed while its price could not be looked up (recorded as $0)
    _run_priced_while_prices_were_down(svc.ledger)

    # WHEN the run ends, with prices back
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN that hour of On-Demand is billed ($1.00 of the $1.50), and nothing is flagged
    assert settlement.report["cost_usd"] == pytest.approx(1.5, abs=1e-5) and settlement.report["prices_unknown"] == 0
    (message,) = sink.delivered_messages
    assert "*Cost*\n$1.50" in _fields(message) and "looked up" not in message["blocks"][1]["text"]["text"]


class SpotPriceHistory(FakePrices):
    """Spot at $0.20 an instance-hour when the run's first attempt was placed (00:00), $0.50 at any other time; the
    moments it was asked about."""

    def __init__(self) -> None:
        self.asked: list[datetime | None] = []

    def observed_spot_usd_per_hour(
        self, instance_type: str, availability_zone: str | None = None, at: datetime | None = None
    ) -> float | None:
        self.asked.append(at)
        return 0.2 if at == datetime(2026, 1, 5, 0, 0, tzinfo=UTC) else 0.5


def test_a_spot_attempt_placed_while_prices_were_down_is_priced_as_of_its_placement_once(
    svc: Services, sink: WebhookSink, utc_clock
) -> None:
    # GIVEN a run whose preprocess ran an hour on Spot, placed at 00:00 while prices could not be looked up
    _run_priced_while_prices_were_down(svc.ledger, capacity="spot")
    history = svc.prices = SpotPriceHistory()

    # WHEN the run ends five hours later, and a report is made a month on, with prices down again
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    utc_clock.advance(days=30)
    svc.prices = PricesDown()
    later = run_report(svc, svc.ledger.get_run("run-1"))  # type: ignore[arg-type]

    # THEN it is billed at the Spot price of its placement, not of the run's end, and that price is kept: the later
    # report bills it alike without asking
    assert history.asked == [datetime(2026, 1, 5, 0, 0, tzinfo=UTC)]
    assert settlement.report["stages"][0]["attempts"][0]["usd_per_hour"] == 0.2
    kept = svc.ledger.get_attempt("run-1", "preprocess", 1)
    assert kept is not None and (kept.usd_per_hour, kept.price_unknown) == (0.2, False)
    assert later["stages"][0]["attempts"][0]["cost_usd"] == settlement.report["stages"][0]["attempts"][0]["cost_usd"]


def test_a_reader_of_the_ledger_prices_such_an_attempt_without_writing_it(svc: Services) -> None:
    # GIVEN the same Spot attempt, its price still unknown in the ledger
    _run_priced_while_prices_were_down(svc.ledger, capacity="spot")
    svc.prices = SpotPriceHistory()

    # WHEN a report is made as `spotctl report --stack` makes it (its user may only read the ledger)
    report = run_report(svc, svc.ledger.get_run("run-1"))  # type: ignore[arg-type]

    # THEN the report prices it as of its placement, and the ledger is left as it was
    assert report["stages"][0]["attempts"][0]["usd_per_hour"] == 0.2
    kept = svc.ledger.get_attempt("run-1", "preprocess", 1)
    assert kept is not None and (kept.usd_per_hour, kept.price_unknown) == (0.0, True)


class PricedOnItsNodesMeanwhile(FakePrices):
    """On-Demand at $1.00 an instance-hour; the first price asked takes long enough for the end of the run's HPC job,
    told meanwhile, to price that job on the instances its nodes got ($1.36 an hour for its two)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.asked = 0

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        self.asked += 1
        if self.asked == 1:
            self.ledger.update_open_attempt(
                "run-1", "hpc", 1, status="FAILED", stopped_at="2026-01-05T04:00:00Z", usd_per_hour=1.36,
                price_unknown=False,
            )  # fmt: skip
        return 1.0


def test_an_attempt_priced_on_its_instances_as_the_run_report_priced_it_again_keeps_its_instances_price(
    svc: Services,
) -> None:
    # GIVEN a run that failed while its multi-node HPC job ran, placed while prices could not be looked up; the job's
    # end, told as the run's report is made (the run's failure terminated it), prices it on its nodes' instances
    attempts = _hpc_failed_attempts()[:1]
    attempts.append(
        Attempt("run-1", "hpc", 1, "job-hpc-1", "hpc-queue", "on-demand", 2, "2026-01-05T01:00:00Z",
                usd_per_hour=0.0, price_unknown=True, status="RUNNING", started_at="2026-01-05T01:00:00Z")
    )  # fmt: skip
    _failed_hpc_run(svc.ledger, attempts)
    svc.prices = PricedOnItsNodesMeanwhile(svc.ledger)

    # WHEN the run's report, which reads the attempt with its price unknown, prices it again and keeps that price
    report = run_report(svc, svc.ledger.get_run("run-1"), keep_prices=True)  # type: ignore[arg-type]

    # THEN the price of its nodes' instances stands, in the ledger and in the report, not the placement's, which the
    # report's write from its earlier read would have put over it
    kept = svc.ledger.get_attempt("run-1", "hpc", 1)
    assert kept is not None and (kept.usd_per_hour, kept.price_unknown) == (1.36, False)
    assert report["stages"][1]["attempts"][0]["usd_per_hour"] == 1.36


def test_a_price_still_unknown_at_the_run_end_is_flagged_not_silently_zero(svc: Services, sink: WebhookSink) -> None:
    # GIVEN the same run, and prices still down at its end
    _run_priced_while_prices_were_down(svc.ledger)
    svc.prices = PricesDown()

    # WHEN the run ends
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # THEN the attempt and the On-Demand bases of the two stages that ran are flagged in the report and told in the
    # notice; postprocess, never reached, counts no hours, so its unknown price changes no figure and is not counted
    report = settlement.report
    assert report["prices_unknown"] == 3 and report["stages"][0]["attempts"][0]["price_unknown"] is True
    assert report["stages_not_run"] == ["postprocess"]
    assert report["cost_usd"] == pytest.approx(0.5, abs=1e-5)  # the three priced hpc attempts only
    (message,) = sink.delivered_messages
    assert "the cost counts 3 prices that could not be looked up as $0" in message["blocks"][1]["text"]["text"]


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


class DoubledPrices(FakePrices):
    """On-Demand at $2.00 an instance-hour: AWS's price, or the stack's On-Demand instance type, changed."""

    def on_demand_usd_per_hour(self, instance_type: str, region: str) -> float:
        return 2.0


def test_a_settled_runs_savings_keep_the_on_demand_base_of_its_end(svc: Services, sink: WebhookSink) -> None:
    # GIVEN the failed hpc run, settled while On-Demand was $1.00 an instance-hour
    _failed_hpc_run(svc.ledger, _hpc_failed_attempts())
    settlement = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})

    # WHEN On-Demand costs twice that later, and the run is settled again (a retried notify task) and read
    svc.prices = DoubledPrices()
    again = finish(svc, {"run_id": "run-1", "outcome": "failed", "error": ERROR})
    later = run_report(svc, svc.ledger.get_run("run-1"))  # type: ignore[arg-type]

    # THEN every report tells the On-Demand base and savings of the run's end, which the ledger keeps per stage
    bases = [stage["on_demand_usd_per_hour"] for stage in settlement.report["stages"]]
    assert bases == [1.0, 2.0]  # preprocess and hpc (2 nodes): postprocess was never reached
    for report in (again.report, later):
        assert [stage["on_demand_usd_per_hour"] for stage in report["stages"]] == bases
        for field in ("on_demand_only_cost_usd", "savings_usd", "savings_pct"):
            assert report[field] == settlement.report[field]
    assert [stage.on_demand_usd_per_hour for stage in svc.ledger.get_stages("run-1")] == [1.0, 2.0, 1.0]


def test_a_running_runs_on_demand_base_is_priced_anew_and_not_kept(svc: Services) -> None:
    # GIVEN a run not yet settled (its stages have ended, the run has not), its report made at $1.00 an instance-hour
    _failed_hpc_run(svc.ledger)
    run = svc.ledger.get_run("run-1")
    assert run is not None and run.status == "RUNNING"
    first = run_report(svc, run, keep_prices=True)

    # WHEN On-Demand costs twice that, and the report is made again
    svc.prices = DoubledPrices()
    second = run_report(svc, run, keep_prices=True)

    # THEN the base follows the price (nothing is kept before the run ends)
    assert [stage["on_demand_usd_per_hour"] for stage in first["stages"]] == [1.0, 2.0, 1.0]
    assert [stage["on_demand_usd_per_hour"] for stage in second["stages"]] == [2.0, 4.0, 2.0]
    assert all(stage.on_demand_usd_per_hour is None for stage in svc.ledger.get_stages("run-1"))


def _run_of_one_stage(svc: Services, run_id: str, stopped_at: str) -> Run:
    """A run of a 6 h deadline whose only stage succeeded on one On-Demand attempt that stopped at `stopped_at`."""
    run = Run(run_id, "ingest", f"incoming/{run_id}.csv", "v1", "2026-01-05T06:00:00Z", 6.0, STARTED_AT, {})
    attempts = [
        Attempt(run_id, "preprocess", 1, "j1", "od-queue", "on-demand", 1, STARTED_AT, usd_per_hour=1.0,
                status="SUCCEEDED", exit_code=0, started_at=STARTED_AT, stopped_at=stopped_at),
    ]  # fmt: skip
    _write_run(
        svc.ledger, run, [Stage(run_id, "preprocess", 0, 1.0, True, 1)], attempts, {"preprocess": ("SUCCEEDED", None)}
    )
    return run


def test_a_run_that_missed_its_deadline_by_seconds_never_reads_as_finishing_on_it(
    svc: Services, sink: WebhookSink, utc_clock
) -> None:
    # GIVEN a run of a 6 h deadline whose only stage succeeded, settled 10 s after its deadline
    _run_of_one_stage(svc, "run-3", stopped_at="2026-01-05T06:00:10Z")
    utc_clock.now = datetime(2026, 1, 5, 6, 0, 10, tzinfo=UTC)

    # WHEN it settles
    finish(svc, {"run_id": "run-3", "outcome": "succeeded"})

    # THEN the notice says it missed the deadline with hours past it, never "6.00 h" beside a 6 h deadline missed
    (message,) = sink.delivered_messages
    reason = message["blocks"][1]["text"]["text"]
    assert reason.startswith("deadline missed: 6.01 h of 6 h;"), reason
    assert "*Deadline*\n6.00 h (missed)" in _fields(message) and "*Elapsed*\n6.01 h" in _fields(message)


def test_a_run_the_guard_settles_after_its_notify_task_failed_tells_the_hours_it_took_not_the_pass_s(
    svc: Services, sink: WebhookSink, utc_clock
) -> None:
    # GIVEN a run of a 6 h deadline whose only stage succeeded 5 h 58 min in, and whose notify task failed past its
    # retries, so that its execution ended with the run still open
    run = _run_of_one_stage(svc, "run-4", stopped_at="2026-01-05T05:58:00Z")

    # WHEN the SLA guard's pass settles it, after the deadline
    utc_clock.now = datetime(2026, 1, 5, 6, 4, tzinfo=UTC)
    _settle_as_ended(svc, run, "SUCCEEDED")

    # THEN the notice tells the deadline met in 5.97 h, and the run's elapsed hours are those, not the 6.07 h of the
    # pass (past the deadline it says was met)
    (message,) = sink.delivered_messages
    reason = message["blocks"][1]["text"]["text"]
    assert reason.startswith("deadline met: 5.97 h of 6 h;"), reason
    assert "*Deadline*\n6.00 h (met)" in _fields(message)
    assert "*Elapsed*\n5.97 h" in _fields(message)
