"""A notification is claimed in the ledger before it is sent, and the claim is a lease that ends with the claiming
invocation: a handler killed between the claim and the send leaves a claim that the event's retry takes over. A
sent notice makes a duplicate a no-op; a live claim refuses it with NotificationClaimHeld, a retryable error, since
its holder may yet die without sending. The claim keeps the notice it sends: when no retry comes after its lease, the
SLA guard sends it. The ledger runs on moto, whose conditional writes are evaluated as DynamoDB's are."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
from batch_fakes import DescribedBatch
from botocore.exceptions import ClientError
from spot_hpc import notifier
from spot_hpc.clock import format_time, utc_now
from spot_hpc.guard import run_guard
from spot_hpc.ledger import Attempt, Ledger, NotificationClaimHeld, Run, Stage
from spot_hpc.notifier import ORPHAN_SWEEP_MAX_NOTICES, ORPHANED_NOTICES_SOURCE, send_orphaned_notices
from spot_hpc.outcome import finish
from spot_hpc.slack import Notification, notification_dedupe_key, notification_text, stored_notice

from spotctl.offline.webhook_sink import SinkResponse

RUN = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T18:00:00Z", 12.0, "2026-01-05T05:00:00Z", {})
KEY = "notification#abc"


class KilledLambda(BaseException):
    """The Lambda runtime ending the process (timeout, out of memory): no `except Exception` runs after it."""


def _notify(svc: Any) -> bool:
    """A sender that is retried for a held claim (as the state machine's notify task is)."""
    return notifier.notify(svc, "requeued", RUN, "hpc", "deadline at risk", attempt=2, raise_if_held=True)


def _sns_notes(svc: Any) -> int:
    return [n["channel"] for n in svc.ledger.run_notifications(RUN.run_id)].count("sns")


def _killed_while_sending(services: Any, monkeypatch: pytest.MonkeyPatch, send: Any = _notify) -> None:
    def killed(*_: Any, **__: Any) -> None:
        raise KilledLambda

    with monkeypatch.context() as patched:
        patched.setattr(notifier, "deliver_notification", killed)
        with pytest.raises(KilledLambda):
            send(services)


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

    # THEN the handler did not fail over a notice already out (it says it did not settle it), and the repeat found
    # the claim: one message
    assert first is False and len(sink.delivered_messages) == 1


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

    from template_grants import REPO, function_timeout_seconds

    timeout = function_timeout_seconds("NotifyFunction")
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
    services.batch = DescribedBatch(status="RUNNING", queue="on-demand")
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


def test_an_at_risk_notice_sns_refuses_does_not_keep_the_guard_from_moving_the_stage_to_on_demand(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN RUN's last stage waiting 20 minutes for Spot with an hour of work and 1.15 h to the run's deadline (at
    # risk, and waiting any longer would leave no time for On-Demand), and SNS throttling the at-risk notice
    run = dataclasses.replace(
        RUN, deadline_at=format_time(utc_now() + timedelta(hours=1.15)), started_at=format_time(utc_now())
    )
    services.ledger.create_run(run, [Stage(RUN.run_id, "postprocess", 0, 1.0, True, 1)])
    services.ledger.claim_attempt(RUN.run_id, "postprocess", 0, capacity="spot")
    waiting_since = format_time(utc_now() - timedelta(minutes=20))
    services.ledger.record_attempt(
        Attempt(RUN.run_id, "postprocess", 1, "job-1", "spot", "spot", 1, waiting_since, status="RUNNABLE")
    )
    services.ledger.update_stage(RUN.run_id, "postprocess", spot_waiting_since=waiting_since)
    services.batch = DescribedBatch(status="RUNNABLE")

    real_publish = services.sns.publish

    def refuse_at_risk(**kwargs: Any) -> Any:
        if kwargs["MessageAttributes"]["kind"]["StringValue"] == "sla_at_risk":
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")
        return real_publish(**kwargs)

    monkeypatch.setattr(services.sns, "publish", refuse_at_risk)

    # WHEN the guard runs a pass
    result = run_guard(services)

    # THEN the stage was moved to On-Demand all the same (the Spot job ended), and the notice is left to a later pass
    assert [a["action"] for a in result["actions"]] == ["requeued to On-Demand"]
    assert [job.queue for job in services.batch.submitted] == ["on-demand"]
    assert services.batch.terminated == ["job-1"]
    key = notification_dedupe_key(RUN.run_id, "postprocess", "sla_at_risk")
    assert not services.ledger.notification_sent(key)
    assert ["at risk" in m["text"].lower() for m in sink.delivered_messages] == [False]


# ------------------------------------------------------------------ claims keep their notice; the guard sends orphans
REQUEUED = Notification(kind="requeued", run_id=RUN.run_id, stage="hpc", reason="deadline at risk", attempt=2)
NOTICE = REQUEUED.dedupe_key
# What `_notify` sends an hour into RUN.
NOTIFIED = dataclasses.replace(REQUEUED, deadline_hours=12.0, elapsed_hours=1.0)
SENDER_DIED = "the invocation sending it stopped before it did."


def _record(ledger_table: Any, key: str = NOTICE) -> dict[str, Any]:
    return ledger_table.get_item(Key={"pk": f"NOTIFIED#{key}", "sk": "NOTIFIED"}).get("Item", {})


def _listed(ledger: Ledger) -> list[str]:
    """The keys of the claims the guard's sweep would look at now (their lease has lapsed)."""
    return [claim.dedupe_key for claim in ledger.lapsed_notice_claims()]


def _orphaned(services: Any, utc_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The requeue notice claimed by a handler with a minute left and killed before sending it; then the minute
    passes (and the lease with it), and no retry comes."""
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    _killed_while_sending(services, monkeypatch)
    services.invocation_ends_at = None
    utc_clock.advance(seconds=62)


def _sweeps(services: Any) -> dict[str, Any]:
    services.batch = DescribedBatch(status="RUNNING", queue="on-demand")
    return run_guard(services)


def test_a_claim_keeps_the_notice_it_sends_in_the_guards_index_until_it_is_sent(
    services, sink, ledger_table, utc_clock, monkeypatch
):
    # GIVEN a handler killed after claiming a notice, and the same notice sent by another handler
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    _killed_while_sending(services, monkeypatch)
    claimed = _record(ledger_table)
    ledger_table.delete_item(Key={"pk": f"NOTIFIED#{NOTICE}", "sk": "NOTIFIED"})
    _notify(services)

    # WHEN the records are read
    sent = _record(ledger_table)

    # THEN the claim held the notice (compact: no field left at no value) and was listed by its lease's end
    assert claimed["active"] == "notice" and claimed["active_sk"] == claimed["lease_until"]
    assert claimed["notice_body"] == stored_notice(NOTIFIED, due_at=format_time(utc_now()))
    stored = json.loads(claimed["notice_body"])["notification"]
    assert stored["kind"] == "requeued" and all(value not in (None, {}) for value in stored.values()), stored
    # AND the sent one stays, for dedupe, without the notice and out of the index
    assert sent["notice"] == "sent" and not {"active", "active_sk", "notice_body"} & set(sent)


def test_a_claim_given_back_after_a_failed_send_leaves_the_index(services, sink, ledger_table, utc_clock, monkeypatch):
    # GIVEN SNS refusing the publish (after the SDK's retries)
    def refuse(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    monkeypatch.setattr(services.sns, "publish", refuse)

    # WHEN the notice is sent, and the sweep looks long after any lease
    with pytest.raises(ClientError):
        _notify(services)
    utc_clock.advance(hours=1)

    # THEN the claim was given back (for the event's retry, at once): nothing is left for the guard
    assert _record(ledger_table) == {} and _listed(services.ledger) == []


def test_the_guard_sends_a_notice_whose_sender_died_once_late_and_a_retry_after_it_sends_nothing(
    services, sink, ledger_table, utc_clock, monkeypatch
):
    # GIVEN a notice whose sender died after claiming it, and no retry before its lease lapsed
    claimed_at = utc_now()
    _orphaned(services, utc_clock, monkeypatch)
    published: list[str] = []
    real_publish = services.sns.publish
    monkeypatch.setattr(services.sns, "publish", lambda **kw: published.append(kw["Message"]) or real_publish(**kw))

    # WHEN the SLA guard runs a pass, then another, and then the event's retry comes after all
    first = _sweeps(services)
    second = _sweeps(services)
    retried = _notify(services)

    # THEN the first pass sent it once, to SNS and Slack, each saying it is late and when it was first due
    assert first["orphaned_notices"] == {"sent": 1, "already_sent": 0, "held": 0, "dropped": 0, "stopped": None}
    due = claimed_at.strftime("%Y-%m-%d %H:%M UTC")
    late = f"Delayed notice: first due {due}; {SENDER_DIED}"
    (message,) = sink.delivered_messages
    assert message["text"].startswith(late) and message["blocks"][1]["elements"][0]["text"] == f":hourglass: {late}"
    assert published == [f"{notification_text(NOTIFIED)}\n{late}"]
    # AND its run's report says it went out late; the second pass and the retry sent nothing
    notes = [(n["channel"], n["status"]) for n in services.ledger.run_notifications(RUN.run_id)]
    assert sorted(notes) == [("slack", "delivered late"), ("sns", "delivered late")]
    assert second["orphaned_notices"]["sent"] == 0 and retried is False and len(sink.delivered_messages) == 1
    assert services.ledger.notification_sent(NOTICE) and _listed(services.ledger) == []


def test_a_live_claim_is_left_to_its_holder(services, sink, utc_clock, monkeypatch):
    # GIVEN a handler with a minute left, killed after claiming a notice (or still sending it)
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    _killed_while_sending(services, monkeypatch)

    # WHEN the SLA guard runs a pass half a minute later
    utc_clock.advance(seconds=30)
    result = _sweeps(services)

    # THEN it did not even look at the claim: its holder may still send it
    assert result["orphaned_notices"] == {"sent": 0, "already_sent": 0, "held": 0, "dropped": 0, "stopped": None}
    assert sink.delivered_messages == []


def test_a_retry_that_takes_a_claim_over_after_the_sweep_read_it_is_the_only_sender(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN an orphaned notice, and a sweep reading the index just before the event's retry takes the claim over
    _orphaned(services, utc_clock, monkeypatch)
    read_before = list(services.ledger.lapsed_notice_claims())
    real_deliver = notifier.deliver_notification
    sweeps: list[dict[str, Any]] = []

    def deliver_while_the_sweep_comes(*args: Any, **kwargs: Any) -> Any:
        sweeps.append(send_orphaned_notices(services)[0])
        return real_deliver(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(services.ledger, "lapsed_notice_claims", lambda limit=None: iter(read_before))
        patched.setattr(notifier, "deliver_notification", deliver_while_the_sweep_comes)
        retried = _notify(services)
        # WHEN the sweep comes again with what it read, after the retry sent the notice
        sweeps.append(send_orphaned_notices(services)[0])

    # THEN the sweep left the claim to the retry, then found it sent: one message
    assert retried is True and [(s["held"], s["already_sent"], s["sent"]) for s in sweeps] == [(1, 0, 0), (0, 1, 0)]
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_claim_written_before_claims_kept_their_notice_is_left_to_the_retry(services, sink, ledger_table, utc_clock):
    # GIVEN a lapsed claim written without the notice, as the previous version wrote them
    ledger_table.put_item(
        Item={
            "pk": f"NOTIFIED#{NOTICE}",
            "sk": "NOTIFIED",
            "notice": "claimed",
            "claimed_at": format_time(utc_now()),
            "claim_id": "old-claim",
            "lease_until": format_time(utc_now() + timedelta(seconds=61)),
            "expires_at": 1,
        }
    )
    utc_clock.advance(minutes=5)

    # WHEN the SLA guard runs a pass, and then the event's retry comes
    result = _sweeps(services)
    retried = _notify(services)

    # THEN the pass did not see it and failed on nothing; the retry took it over and sent the notice, as before
    assert result["orphaned_notices"]["sent"] == 0 and result["orphaned_notices"]["stopped"] is None
    assert retried is True and len(sink.delivered_messages) == 1


def test_a_stored_notice_that_cannot_be_read_is_recorded_and_leaves_the_index(
    services, sink, ledger_table, utc_clock, caplog
):
    # GIVEN a lapsed claim whose stored notice is not one, and an orphaned good one
    ledger_table.put_item(
        Item={
            "pk": "NOTIFIED#notification#garbled",
            "sk": "NOTIFIED",
            "notice": "claimed",
            "claimed_at": format_time(utc_now()),
            "claim_id": "garbled-claim",
            "lease_until": format_time(utc_now()),
            "active": "notice",
            "active_sk": format_time(utc_now()),
            "notice_body": '{"notification": {"kind": "lunch", "run_id": "run-1", "stage": null, "reason": "noon"}}',
            "expires_at": 1,
        }
    )
    assert services.ledger.claim_notification(KEY, None, stored_notice(REQUEUED, format_time(utc_now())))
    utc_clock.advance(minutes=16)

    # WHEN the SLA guard runs a pass, and another
    first = _sweeps(services)
    second = _sweeps(services)

    # THEN the garbled one is recorded as refused input and out of the index, and the pass went on to the good one
    assert (first["orphaned_notices"]["dropped"], first["orphaned_notices"]["sent"]) == (1, 1)
    assert second["orphaned_notices"]["dropped"] == 0 and _listed(services.ledger) == []
    (rejection,) = services.ledger.list_rejections()
    assert rejection["source"] == ORPHANED_NOTICES_SOURCE and "lunch" in rejection["reason"]
    assert "lunch" in rejection["detail"]["body"] and rejection["detail"]["event_id"] == "notification#garbled"
    garbled = _record(ledger_table, "notification#garbled")
    assert garbled["notice"] == "claimed" and not {"active", "active_sk", "notice_body"} & set(garbled)
    assert len(sink.delivered_messages) == 1
    assert any("can never be sent" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def _orphans(services: Any, count: int) -> None:
    """`count` notices claimed (for 15 minutes: their claimer's deadline unknown) and never sent; the lease passes."""
    for attempt in range(count):
        notice = dataclasses.replace(REQUEUED, attempt=attempt)
        assert services.ledger.claim_notification(notice.dedupe_key, None, stored_notice(notice, "2026-01-05T06:00Z"))


def test_a_sweep_looks_at_most_at_its_share_of_claims_and_leaves_the_rest_to_the_next_pass(services, sink, utc_clock):
    # GIVEN one more orphaned notice than a pass may send
    _orphans(services, ORPHAN_SWEEP_MAX_NOTICES + 1)
    utc_clock.advance(minutes=16)

    # WHEN the sweep runs (Slack answers at once), and again
    first, _ = send_orphaned_notices(services, clock=lambda: 0.0)
    second, _ = send_orphaned_notices(services, clock=lambda: 0.0)

    # THEN the first sent exactly its share and said why it stopped; the next sent the last
    assert (first["sent"], first["stopped"]) == (ORPHAN_SWEEP_MAX_NOTICES, f"at most {ORPHAN_SWEEP_MAX_NOTICES} a pass")
    assert (second["sent"], second["stopped"]) == (1, None)
    assert len(sink.delivered_messages) == ORPHAN_SWEEP_MAX_NOTICES + 1


def test_a_sweep_stays_within_its_time_budget_and_away_from_the_timeout(services, sink, utc_clock):
    # GIVEN three orphaned notices
    _orphans(services, 3)
    utc_clock.advance(minutes=16)

    # WHEN a guard 30 s from its timeout comes to them, then one with time, each Slack request taking 30 s of its
    # 60 s budget
    near_timeout, _ = send_orphaned_notices(services, remaining_seconds=lambda: 30.0)
    with_time, _ = send_orphaned_notices(
        services, remaining_seconds=lambda: 280.0, clock=lambda: len(sink.requests) * 30.0
    )

    # THEN the first did not even look; the second started a notice only while a whole Slack budget (20 s) fitted
    assert near_timeout["stopped"] == "no time left in this invocation" and near_timeout["sent"] == 0
    assert (with_time["sent"], with_time["stopped"]) == (2, "time budget spent")
    assert len(_listed(services.ledger)) == 1


def test_an_aws_error_stops_the_sweep_keeps_the_notice_and_a_later_pass_sends_it(
    services, sink, ledger_table, utc_clock, monkeypatch
):
    # GIVEN an orphaned notice, and SNS refusing the guard's publish (after the SDK's retries)
    _orphaned(services, utc_clock, monkeypatch)
    real_publish = services.sns.publish

    def refuse(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    # WHEN the SLA guard runs a pass, then another with SNS back
    with monkeypatch.context() as patched:
        patched.setattr(services.sns, "publish", refuse)
        failed = _sweeps(services)
    kept = _record(ledger_table)
    utc_clock.advance(seconds=1)
    monkeypatch.setattr(services.sns, "publish", real_publish)
    later = _sweeps(services)

    # THEN the first pass did not fail, stopped the sweep, and gave the claim back with its notice, lapsed at once
    assert failed["orphaned_notices"]["stopped"] == "AWS error" and failed["orphaned_notices"]["sent"] == 0
    assert kept["notice"] == "claimed" and kept["notice_body"] and kept["active_sk"] == kept["lease_until"]
    assert kept["lease_until"] < format_time(utc_now())
    # AND the next pass sent it, once
    assert later["orphaned_notices"]["sent"] == 1 and len(sink.delivered_messages) == 1


def _settled_run(services: Any) -> Run:
    """RUN in the ledger, its one stage never reached."""
    services.ledger.create_run(RUN, [Stage(RUN.run_id, "postprocess", 0, 1.0, True, 1)])
    return RUN


FAILED = {"run_id": RUN.run_id, "outcome": "failed", "error": {"Error": "StageFailed", "Cause": "exit code 3"}}


def _notifier_died_settling_a_run(services: Any, utc_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notify invocation with a minute left that settled RUN as failed and died sending its notice (no settlement
    returned, nothing counted); then the minute passes (and the lease with it), and no retry of the task comes."""
    _settled_run(services)
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)
    _killed_while_sending(services, monkeypatch, send=lambda svc: finish(svc, FAILED))
    services.invocation_ends_at = None
    utc_clock.advance(seconds=62)


def _throttled_mark(*_: Any, **__: Any) -> bool:
    """DynamoDB refusing the write that marks a notice sent, after the SDK's retries."""
    raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate"}}, "UpdateItem")


def test_a_run_end_notice_the_guard_sends_for_a_dead_notifier_counts_the_run_once(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a notify invocation that settled a run as failed and died sending its notice (no settlement returned,
    # nothing counted), and no retry of the task before the claim lapsed
    _notifier_died_settling_a_run(services, utc_clock, monkeypatch)

    # WHEN the SLA guard runs a pass, another, and the state machine retries the notify task after all
    first = _sweeps(services)
    second = _sweeps(services)
    retried = finish(services, FAILED)

    # THEN the first pass sent the notice and counts the run (its sender counts it), with the run's figures
    (settlement,) = first["settlements"]
    assert settlement.counted is True and settlement.summary()["run_id"] == RUN.run_id
    assert settlement.report["pipeline_status"] == "FAILED"
    (message,) = sink.delivered_messages
    assert "Pipeline failed" in message["text"] and SENDER_DIED in message["text"]
    # AND neither the next pass nor the retry sends it or counts the run again
    assert second["settlements"] == [] and retried.counted is False and len(sink.delivered_messages) == 1


def test_a_run_end_notice_sent_but_not_marked_sent_is_sent_again_by_the_guard_and_the_run_counted_once(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a notify invocation that settled a run as failed and sent its notice, with DynamoDB throttling the write
    # that marks it sent (after the SDK's retries)
    _settled_run(services)
    services.invocation_ends_at = utc_now() + timedelta(seconds=60)

    with monkeypatch.context() as patched:
        patched.setattr(services.ledger, "mark_notification_sent", _throttled_mark)
        settled = finish(services, FAILED)

    # WHEN its lease lapses with no retry (the invocation succeeded), and the SLA guard runs two passes
    services.invocation_ends_at = None
    utc_clock.advance(seconds=62)
    first, second = _sweeps(services), _sweeps(services)

    # THEN the notify invocation did not fail and counted nothing; the guard sent the notice again, late (the cost of
    # a lost mark), and counted the run: once in all
    assert settled.counted is False and settled.summary()["pipeline_status"] == "FAILED"
    (late,) = first["settlements"]
    assert late.counted is True and late.summary()["run_id"] == RUN.run_id
    assert second["settlements"] == [] and second["orphaned_notices"]["sent"] == 0
    assert len(sink.delivered_messages) == 2 and SENDER_DIED in sink.delivered_messages[1]["text"]
    assert services.ledger.notification_sent(notification_dedupe_key(RUN.run_id, None, "failed", None))


def test_a_late_run_end_notice_the_guard_cannot_mark_sent_is_counted_by_the_pass_that_can(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a run-end notice whose notify invocation died sending it, and a guard pass sending it late while DynamoDB
    # throttles the write that marks it sent
    _notifier_died_settling_a_run(services, utc_clock, monkeypatch)

    with monkeypatch.context() as patched:
        patched.setattr(services.ledger, "mark_notification_sent", _throttled_mark)
        unmarked = _sweeps(services)

    # WHEN a pass runs within that pass's lease, and another after it
    utc_clock.advance(minutes=1)
    within = _sweeps(services)
    utc_clock.advance(minutes=15)
    after = _sweeps(services)

    # THEN the pass that could not mark it counted nothing, and the pass after the lease sent it again and counted
    # the run: once in all
    assert unmarked["orphaned_notices"]["sent"] == 1 and unmarked["settlements"] == []
    assert within["orphaned_notices"]["sent"] == 0 and within["settlements"] == []
    (late,) = after["settlements"]
    assert late.counted is True and after["orphaned_notices"]["sent"] == 1 and len(sink.delivered_messages) == 2


def test_a_run_end_notice_of_the_other_outcome_sent_late_counts_nothing(services, sink, utc_clock):
    # GIVEN a run settled as failed, and a late "succeeded" notice for it whose claimer died
    _settled_run(services)
    services.ledger.finish_run(RUN.run_id, "FAILED", "StageFailed")
    late = Notification(kind="succeeded", run_id=RUN.run_id, stage=None, reason="deadline met")
    assert services.ledger.claim_notification(late.dedupe_key, None, stored_notice(late, format_time(utc_now())))
    utc_clock.advance(minutes=16)

    # WHEN the SLA guard runs a pass
    result = _sweeps(services)

    # THEN the notice goes out (it was claimed to), but the run is not counted as the other outcome (as `finish`)
    assert result["orphaned_notices"]["sent"] == 1 and result["settlements"] == []


def test_a_handler_come_back_to_told_work_leaves_a_held_notice_to_its_holder_and_then_to_the_guard(
    services, sink, utc_clock, monkeypatch
):
    # GIVEN a handler with 50 seconds left, killed after claiming a notice and before sending it
    services.invocation_ends_at = utc_now() + timedelta(seconds=50)
    _killed_while_sending(services, monkeypatch)

    # WHEN another handler comes back to the work that notice tells of, while the claim is held
    utc_clock.advance(seconds=2)
    told = notifier.notify(services, "requeued", RUN, "hpc", "deadline at risk", attempt=2)

    # THEN it sends nothing and does not fail (a retry would meet the same claim) ...
    assert told is False and sink.delivered_messages == [] and _sns_notes(services) == 0
    # ... and once the lease lapses the guard's sweep sends the notice, once
    utc_clock.advance(seconds=60)
    summary, _ = send_orphaned_notices(services)
    again = notifier.notify(services, "requeued", RUN, "hpc", "deadline at risk", attempt=2)
    assert summary["sent"] == 1 and again is False
    assert len(sink.delivered_messages) == 1 and _sns_notes(services) == 1


def test_a_late_notice_whose_slack_copy_cannot_be_parked_is_not_published_again_each_pass(
    services, sink, ledger_table, utc_clock, monkeypatch
):
    # GIVEN an orphaned notice, Slack down, and the notifications dead-letter queue refusing its copy
    _orphaned(services, utc_clock, monkeypatch)
    sink.respond_with(*[SinkResponse(503, "service_unavailable")] * 10)
    published: list[str] = []
    real_publish = services.sns.publish

    def publish(**request: Any) -> Any:
        published.append(request["Message"])
        return real_publish(**request)

    def refuse(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "SendMessage")

    monkeypatch.setattr(services.sns, "publish", publish)
    monkeypatch.setattr(services.sqs, "send_message", refuse)
    # WHEN the SLA guard runs two passes
    first, second = _sweeps(services), _sweeps(services)

    # THEN the first published it on SNS, once, and settled it (its Slack copy recorded as undelivered); the second
    # found nothing to send, rather than publishing it again
    assert first["orphaned_notices"]["sent"] == 1 and second["orphaned_notices"]["sent"] == 0
    assert len(published) == 1 and _record(ledger_table)["notice"] == "sent"
    statuses = {(n["channel"], n["status"]) for n in services.ledger.run_notifications(RUN.run_id)}
    assert ("sns", "delivered late") in statuses and ("slack", "undelivered") in statuses
