"""A notification is claimed in the ledger before it is sent, and the claim is a lease that ends with the claiming
invocation: a handler killed between the claim and the send leaves a claim that the event's retry takes over. A
sent notice makes a duplicate a no-op; a live claim refuses it with NotificationClaimHeld, a retryable error, since
its holder may yet die without sending. The ledger runs on moto, whose conditional writes are evaluated as DynamoDB's
are."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc import notifier
from spot_hpc.clock import format_time, utc_now
from spot_hpc.guard import run_guard
from spot_hpc.ledger import Attempt, Ledger, NotificationClaimHeld, Run, Stage
from spot_hpc.slack import notification_dedupe_key

RUN = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T18:00:00Z", 12.0, "2026-01-05T05:00:00Z", {})
KEY = "notification#abc"


class KilledLambda(BaseException):
    """The Lambda runtime ending the process (timeout, out of memory): no `except Exception` runs after it."""


def _notify(svc: Any) -> bool:
    return notifier.notify(svc, "requeued", RUN, "hpc", "deadline at risk", attempt=2)


def _sns_notes(svc: Any) -> int:
    return [n["channel"] for n in svc.ledger.run_notifications(RUN.run_id)].count("sns")


def _killed_while_sending(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*_: Any, **__: Any) -> None:
        raise KilledLambda

    with monkeypatch.context() as patched:
        patched.setattr(notifier, "deliver_notification", killed)
        with pytest.raises(KilledLambda):
            _notify(services)


def test_a_notice_whose_handler_was_killed_at_its_timeout_is_sent_by_the_next_retry(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a handler killed at its one-minute timeout after claiming a notice and before sending it
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    _killed_while_sending(services, monkeypatch)

    # WHEN the state machine retries it two seconds after the timeout, and again later
    utc_clock.advance(seconds=62)
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    retried = _notify(services)
    utc_clock.advance(seconds=4)
    again = _notify(services)

    # THEN the first retry takes the claim over and sends the notice, once
    assert (retried, again) == (True, False)
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_retry_that_finds_the_claim_of_a_crashed_invocation_fails_and_sends_nothing_until_its_lease_lapses(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a handler with 50 seconds left, killed after claiming a notice (out of memory, well before its deadline)
    claimed_at = utc_now()
    services.invocation_ends_at = claimed_at + timedelta(seconds=50)
    _killed_while_sending(services, monkeypatch)

    # WHEN the state machine retries it 2 seconds later
    utc_clock.advance(seconds=2)
    with pytest.raises(NotificationClaimHeld) as held:
        _notify(services)

    # THEN the retry fails with the retryable error, saying when the claim lapses (the deadline, a second of margin,
    # and a second for comparing whole seconds), and nothing went out
    assert held.value.lapses_at == claimed_at + timedelta(seconds=50 + 1 + 1)
    assert sink.delivered_messages == [] and _sns_notes(services) == 0

    # WHEN it is retried a second before then, at then, and once more
    utc_clock.advance(seconds=49)
    with pytest.raises(NotificationClaimHeld):
        _notify(services)
    utc_clock.advance(seconds=1)
    at_lapse, once_more = _notify(services), _notify(services)

    # THEN the retry at the lapse takes the claim over and sends the notice, once
    assert (at_lapse, once_more) == (True, False)
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_duplicate_sent_while_the_first_invocation_sends_fails_and_its_retry_finds_the_notice_sent(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a duplicate of the event handled while the first invocation is sending the notice
    real_deliver = notifier.deliver_notification
    duplicates: list[type[BaseException]] = []

    def deliver_with_a_duplicate_racing(*args: Any, **kwargs: Any) -> Any:
        with pytest.raises(NotificationClaimHeld) as held:
            _notify(services)
        duplicates.append(held.type)
        return real_deliver(*args, **kwargs)

    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    with monkeypatch.context() as patched:
        patched.setattr(notifier, "deliver_notification", deliver_with_a_duplicate_racing)
        first = _notify(services)

    # WHEN the duplicate's event is retried (a second later: the first has marked it sent)
    utc_clock.advance(seconds=1)
    retried = _notify(services)

    # THEN the duplicate failed with the retryable error, its retry was a no-op, and Slack got one message
    assert duplicates == [NotificationClaimHeld] and (first, retried) == (True, False)
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_claim_without_its_holders_deadline_is_a_fifteen_minute_lease(services, sink, utc_clock, monkeypatch):
    # GIVEN a notice claimed by a caller that does not know its deadline, killed before sending it
    services.invocation_ends_at = None
    _killed_while_sending(services, monkeypatch)

    # WHEN it is retried within the 15 minutes, then after them, then once more
    utc_clock.advance(minutes=14)
    with pytest.raises(NotificationClaimHeld):
        _notify(services)
    utc_clock.advance(minutes=2)
    after_lease = _notify(services)
    utc_clock.advance(minutes=30)
    once_more = _notify(services)

    # THEN the retry within the lease fails (retryable), and only the retry after it sends the notice, once
    assert (after_lease, once_more) == (True, False)
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_claim_written_before_leases_followed_the_invocation_still_lapses(
    ledger: Ledger, ledger_table, utc_clock
) -> None:
    # GIVEN a claim written without `lease_until`, as the previous version wrote them
    ledger_table.put_item(
        Item={
            "pk": f"NOTIFIED#{KEY}",
            "sk": "NOTIFIED",
            "notice": "claimed",
            "claimed_at": format_time(utc_now()),
            "claim_id": "old-claim",
            "expires_at": 1,
        }
    )

    # WHEN it is claimed within 15 minutes of its claim, then after
    claimed_at = utc_now()
    utc_clock.advance(minutes=10)
    with pytest.raises(NotificationClaimHeld) as within:
        ledger.claim_notification(KEY, utc_now() + timedelta(seconds=60))
    utc_clock.advance(minutes=6)
    after = ledger.claim_notification(KEY, utc_now() + timedelta(seconds=60))

    # THEN it keeps its old 15-minute lease
    assert within.value.lapses_at == claimed_at + timedelta(minutes=15, seconds=1) and after is not None


def test_a_fresh_claim_refuses_a_duplicate_as_retryable_and_a_sent_notice_makes_it_a_no_op(
    ledger: Ledger, utc_clock
) -> None:
    # GIVEN one notice claimed a minute ago, and another claimed and sent
    held = ledger.claim_notification("notification#held")
    sent = ledger.claim_notification("notification#sent")
    assert held and sent and ledger.mark_notification_sent("notification#sent", sent)
    utc_clock.advance(minutes=1)

    # WHEN each is claimed again, then the sent one again a day later
    with pytest.raises(NotificationClaimHeld):
        ledger.claim_notification("notification#held")
    again = ledger.claim_notification("notification#sent")
    utc_clock.advance(days=1)
    a_day_later = ledger.claim_notification("notification#sent")

    # THEN the held one refused the duplicate, the sent one gave no claim; a sent notice is never claimed again
    assert again is None and a_day_later is None
    assert not ledger.notification_sent("notification#held") and ledger.notification_sent("notification#sent")


def test_a_record_written_before_claims_were_leases_reads_as_sent(ledger: Ledger, ledger_table, utc_clock) -> None:
    # GIVEN a notice recorded the old way (a record without a claim state)
    ledger_table.put_item(
        Item={"pk": f"NOTIFIED#{KEY}", "sk": "NOTIFIED", "notified_at": "2026-01-05T05:00:00Z", "expires_at": 1}
    )

    # WHEN it is claimed long after any lease
    utc_clock.advance(days=2)
    claim = ledger.claim_notification(KEY)

    # THEN it is not sent again
    assert claim is None and ledger.notification_sent(KEY)


def test_a_claim_taken_over_is_no_longer_its_old_holders(ledger: Ledger, utc_clock) -> None:
    # GIVEN a claim taken over after its lease ran out (its holder was presumed dead)
    first = ledger.claim_notification(KEY)
    utc_clock.advance(minutes=16)
    second = ledger.claim_notification(KEY)
    assert first and second and first != second

    # WHEN the old holder turns up and releases, then marks the notice
    ledger.release_notification(KEY, first)
    marked_by_old = ledger.mark_notification_sent(KEY, first)

    # THEN neither touches the new claim, which its holder then marks sent
    assert marked_by_old is False
    with pytest.raises(NotificationClaimHeld):
        ledger.claim_notification(KEY)
    assert ledger.mark_notification_sent(KEY, second) and ledger.notification_sent(KEY)


class TableCalls:
    """The ledger's table on moto, with one operation made to behave as AWS sometimes does."""

    def __init__(self, table: Any, operation: str, behaviour: str, times: int = 1) -> None:
        self._table, self._operation, self._behaviour, self._left = table, operation, behaviour, times

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._table, name)
        if name != self._operation:
            return real

        def call(**kwargs: Any) -> Any:
            if self._left <= 0:
                return real(**kwargs)
            self._left -= 1
            if self._behaviour == "throttled":  # still refused after botocore's own retries
                error = {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeded"}
                raise ClientError({"Error": error}, name)
            # "answer lost": the write is done, its answer lost, and botocore sends the same request again
            real(**kwargs)
            return real(**kwargs)

        return call


def test_a_claim_whose_answer_was_lost_and_resent_is_still_the_senders(services, sink, ledger_table, utc_clock):
    # GIVEN a claim that DynamoDB wrote but whose answer was lost, so that the SDK sent the same request again
    services.ledger = Ledger(TableCalls(ledger_table, "put_item", "answer lost"))

    # WHEN the notice is sent
    sent = _notify(services)

    # THEN the repeated request found the sender's own claim: the notice went out
    assert sent is True and len(sink.delivered_messages) == 1


def test_a_throttled_claim_sends_nothing_and_the_retry_sends_it(services, sink, ledger_table, utc_clock):
    # GIVEN DynamoDB throttling the claim (after the SDK's retries)
    services.ledger = Ledger(TableCalls(ledger_table, "put_item", "throttled"))

    # WHEN the notice is sent, and the event retried
    with pytest.raises(ClientError):
        _notify(services)
    retried = _notify(services)

    # THEN nothing went out before the claim, and the retry sent it once
    assert retried is True and len(sink.delivered_messages) == 1


def test_a_throttled_mark_as_sent_fails_nothing_and_sends_nothing_twice_within_the_lease(
    services, sink, ledger_table, utc_clock
):
    # GIVEN DynamoDB throttling the write that marks the notice sent (after the SDK's retries)
    services.ledger = Ledger(TableCalls(ledger_table, "update_item", "throttled"))

    # WHEN the notice is sent, and the event delivered again a minute later
    first = _notify(services)
    utc_clock.advance(minutes=1)
    with pytest.raises(NotificationClaimHeld):
        _notify(services)

    # THEN the handler did not fail over a notice already out, and the repeat found the claim: one message
    assert first is True and len(sink.delivered_messages) == 1


def test_a_notice_sns_refused_is_released_and_sent_by_the_retry_at_once(services, sink, utc_clock, monkeypatch):
    # GIVEN SNS refusing the first publish (after the SDK's retries)
    real_publish = services.sns.publish
    calls: list[str] = []

    def refuse_once(**kwargs: Any) -> Any:
        calls.append(kwargs["TopicArn"])
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")
        return real_publish(**kwargs)

    monkeypatch.setattr(services.sns, "publish", refuse_once)

    # WHEN the notice is sent, and the event retried at once
    with pytest.raises(ClientError):
        _notify(services)
    retried = _notify(services)

    # THEN the claim was given back, and the retry did not wait for the lease
    assert retried is True and len(calls) == 2 and len(sink.delivered_messages) == 1
    assert services.ledger.notification_sent(notification_dedupe_key(RUN.run_id, "hpc", "requeued", 2))


def _notify_task(state: str) -> tuple[float, dict[str, Any]]:
    """The notify function's timeout (template.yaml) and the ASL's retrier for a held claim on `state`."""
    import json

    from template_grants import REPO, source_template

    template = source_template()
    default = template["Globals"]["Function"]["Timeout"]
    timeout = float(template["Resources"]["NotifyFunction"]["Properties"].get("Timeout", default))
    task = json.loads((REPO / "statemachines" / "pipeline.asl.json").read_text())["States"][state]
    return timeout, next(r for r in task["Retry"] if r["ErrorEquals"] == [NotificationClaimHeld.__name__])


@pytest.mark.parametrize("state", ["NotifySucceeded", "NotifyFailed"])
def test_the_state_machines_retries_send_the_notice_of_a_notify_invocation_that_died_at_once(
    state, services, sink, utc_clock, monkeypatch
):
    # GIVEN a notify invocation with its whole timeout ahead (and part of a second, which the lease rounds up), killed
    # after claiming the notice
    timeout, retrier = _notify_task(state)
    utc_clock.advance(microseconds=1)
    services.invocation_ends_at = utc_now() + timedelta(seconds=timeout)
    _killed_while_sending(services, monkeypatch)

    # WHEN the state machine runs the task again at once, then at each wait of the retrier for a held claim
    waits = [retrier["IntervalSeconds"] * retrier["BackoffRate"] ** n for n in range(retrier["MaxAttempts"])]
    held = 0
    sent = None
    for wait in [0, *waits]:
        utc_clock.advance(seconds=wait)
        try:
            sent = _notify(services)
            break
        except NotificationClaimHeld:
            held += 1

    # THEN the retries failed while the claim was held, and one of them, not after the last, sent the notice, once
    assert held >= 1 and sent is True
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


class RunningOnDemand:
    """Batch as the guard's DescribeJobs sees it: every job RUNNING on the On-Demand queue."""

    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        return {j: {"jobId": j, "jobName": j, "jobQueue": "on-demand", "status": "RUNNING"} for j in job_ids}


def _stage_at_risk(services: Any) -> Stage:
    """RUN's last stage running On-Demand with 2 h of work and an hour to the run's deadline."""
    run = dataclasses.replace(
        RUN, deadline_at=format_time(utc_now() + timedelta(hours=1)), started_at=format_time(utc_now())
    )
    services.ledger.create_run(run, [Stage(RUN.run_id, "postprocess", 0, 2.0, True, 1)])
    stage = services.ledger.claim_attempt(RUN.run_id, "postprocess", 0, capacity="on-demand")
    at = format_time(utc_now())
    services.ledger.record_attempt(
        Attempt(RUN.run_id, "postprocess", 1, "job-1", "on-demand", "on-demand", 1, at, status="RUNNING")
    )
    services.batch = RunningOnDemand()
    return stage


def test_an_at_risk_notice_another_guard_pass_holds_fails_no_pass_and_a_pass_after_its_lease_sends_it(
    services, sink, utc_clock
):
    # GIVEN a stage that cannot make its deadline share, whose at-risk notice a guard pass claimed and died with
    # (at once, five minutes before its deadline)
    stage = _stage_at_risk(services)
    key = notification_dedupe_key(RUN.run_id, stage.stage, "sla_at_risk")
    assert services.ledger.claim_notification(key, utc_now() + timedelta(seconds=300))

    # WHEN the next pass comes while that claim holds, and the one after it lapsed
    utc_clock.advance(seconds=299)
    during = run_guard(services)
    utc_clock.advance(minutes=5)
    after = run_guard(services)

    # THEN the first pass checked the stage without failing or sending, and the later one sent the notice once
    assert [a["action"] for a in during["actions"] + after["actions"]] == []
    assert len(sink.delivered_messages) == 1 and "at risk" in sink.delivered_messages[0]["text"].lower()
