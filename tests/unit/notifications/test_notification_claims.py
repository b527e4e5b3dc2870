"""A notification is claimed in the ledger before it is sent, and the claim is a lease that ends with the claiming
invocation: a handler killed between the claim and the send leaves a claim that the event's retry takes over, while
a live claim or a sent notice stops every duplicate. The ledger runs on moto, whose conditional writes are evaluated
as DynamoDB's are."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc import notifier
from spot_hpc.clock import format_time, utc_now
from spot_hpc.ledger import Ledger, Run
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


def test_a_notice_claimed_by_a_live_invocation_is_left_to_it_until_that_invocation_ends(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a handler with 50 seconds left, killed after claiming a notice (a crash, before its deadline)
    services.invocation_ends_at = utc_now() + timedelta(seconds=50)
    _killed_while_sending(services, monkeypatch)

    # WHEN a duplicate comes while that invocation could still be sending, and another after its deadline
    utc_clock.advance(seconds=30)
    during = _notify(services)
    utc_clock.advance(seconds=30)
    after = _notify(services)

    # THEN the duplicate sends nothing, and the one after the deadline sends the notice
    assert (during, after) == (False, True)
    assert len(sink.delivered_messages) == 1


def test_a_claim_without_its_holders_deadline_is_a_fifteen_minute_lease(services, sink, utc_clock, monkeypatch):
    # GIVEN a notice claimed by a caller that does not know its deadline, killed before sending it
    services.invocation_ends_at = None
    _killed_while_sending(services, monkeypatch)

    # WHEN it is retried within the 15 minutes, then after them, then once more
    utc_clock.advance(minutes=14)
    within_lease = _notify(services)
    utc_clock.advance(minutes=2)
    after_lease = _notify(services)
    utc_clock.advance(minutes=30)
    once_more = _notify(services)

    # THEN only the retry after the lease sends it, once
    assert (within_lease, after_lease, once_more) == (False, True, False)
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
    utc_clock.advance(minutes=10)
    within = ledger.claim_notification(KEY, utc_now() + timedelta(seconds=60))
    utc_clock.advance(minutes=6)
    after = ledger.claim_notification(KEY, utc_now() + timedelta(seconds=60))

    # THEN it keeps its old 15-minute lease
    assert within is None and after is not None


def test_a_fresh_claim_and_a_sent_notice_both_stop_a_duplicate(ledger: Ledger, utc_clock) -> None:
    # GIVEN one notice claimed a minute ago, and another claimed and sent
    held = ledger.claim_notification("notification#held")
    sent = ledger.claim_notification("notification#sent")
    assert held and sent and ledger.mark_notification_sent("notification#sent", sent)
    utc_clock.advance(minutes=1)

    # WHEN each is claimed again, then again a day later
    again = [ledger.claim_notification(k) for k in ("notification#held", "notification#sent")]
    utc_clock.advance(days=1)
    a_day_later = ledger.claim_notification("notification#sent")

    # THEN the duplicates get no claim; only the sent one reads as sent; a sent notice is never claimed again
    assert again == [None, None] and a_day_later is None
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
    assert marked_by_old is False and ledger.claim_notification(KEY) is None
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
    repeated = _notify(services)

    # THEN the handler did not fail over a notice already out, and the repeat found the claim: one message
    assert (first, repeated) == (True, False) and len(sink.delivered_messages) == 1


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
