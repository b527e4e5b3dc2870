"""Slack notices parked on the notifications dead-letter queue reach Slack once it is back: sent again by the SLA
guard after its stage checks, marked as late, deleted only once Slack took them, never published to SNS again, and
dropped with a record when they can never be sent. The queue's requests are checked exactly (botocore Stubber)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from spot_hpc import notifier
from spot_hpc.clock import utc_now
from spot_hpc.guard import run_guard
from spot_hpc.notifier import redeliver_parked_notices
from spot_hpc.slack import (
    Notification,
    SlackCircuit,
    notification_text,
    parse_parked_notice,
    send_to_dead_letter_queue,
)

from spotctl.offline.webhook_sink import SinkResponse

REQUEUED = Notification(kind="requeued", run_id="run-1", stage="hpc", reason="deadline at risk", attempt=2)
AT_RISK = Notification(kind="sla_at_risk", run_id="run-1", stage="postprocess", reason="2.00 h left")
DUE_AT = "2026-01-05T05:10:00Z"


class ParkingQueue:
    """Takes what `send_to_dead_letter_queue` parks and hands it back as SQS's ReceiveMessage returns it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send_message(self, QueueUrl: str, MessageBody: str, MessageAttributes: dict[str, Any]) -> dict[str, str]:
        number = len(self.messages) + 1
        self.messages.append(
            {
                "MessageId": f"message-{number}",
                "ReceiptHandle": f"receipt-{number}",
                "Body": MessageBody,
                "Attributes": {"SentTimestamp": "1767589800000"},  # 2026-01-05T05:10:00Z
                "MessageAttributes": MessageAttributes,
            }
        )
        return {"MessageId": f"message-{number}"}


def _parked(*notifications: Notification) -> list[dict[str, Any]]:
    queue = ParkingQueue()
    for notification in notifications:
        send_to_dead_letter_queue(queue, "parked", notification, "HTTP 503", due_at=DUE_AT)
    return queue.messages


def _stubbed(service: str) -> tuple[Any, Stubber]:
    client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


@pytest.fixture
def queue(services) -> Iterator[Stubber]:
    """The dead-letter queue's client, stubbed; SNS stubbed with no answers at all, so that a publish would fail."""
    services.sqs, sqs = _stubbed("sqs")
    services.sns, sns = _stubbed("sns")
    with sqs, sns:
        yield sqs
        sqs.assert_no_pending_responses()


def _expect_receive(queue: Stubber, services: Any, messages: list[dict[str, Any]]) -> None:
    request = {
        "QueueUrl": services.settings.notifications_dlq_url,
        "MaxNumberOfMessages": 10,
        "VisibilityTimeout": 300,
        "WaitTimeSeconds": 0,
        "MessageSystemAttributeNames": ["SentTimestamp"],
        "MessageAttributeNames": ["dedupe_key"],
    }
    queue.add_response("receive_message", {"Messages": messages} if messages else {}, request)


def _expect_delete(queue: Stubber, services: Any, message: dict[str, Any]) -> None:
    request = {"QueueUrl": services.settings.notifications_dlq_url, "ReceiptHandle": message["ReceiptHandle"]}
    queue.add_response("delete_message", {}, request)


def _notes(services: Any) -> list[tuple[str, str, str]]:
    return [(n["channel"], n["kind"], n.get("status", "")) for n in services.ledger.run_notifications("run-1")]


def test_parked_notices_reach_slack_once_it_is_back_marked_late_and_leave_the_queue(services, queue, sink, utc_clock):
    # GIVEN two notices parked while Slack was down, and Slack back
    messages = _parked(REQUEUED, AT_RISK)
    _expect_receive(queue, services, messages)
    for message in messages:
        _expect_delete(queue, services, message)
    _expect_receive(queue, services, [])

    # WHEN the guard's pass sends the parked notices
    result = redeliver_parked_notices(services)

    # THEN Slack got both, each saying it is late and when it was first due, and each left the queue after Slack
    # took it (the stub fails on a publish: SNS, which had them, is not told again)
    delivered = sink.delivered_messages
    late = "Delayed notice: first due 2026-01-05 05:10 UTC; Slack could not take it then."
    assert [m["text"] for m in delivered] == [f"{late} {notification_text(n)}" for n in (REQUEUED, AT_RISK)]
    assert delivered[0]["blocks"][1] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": f":hourglass: {late}"}],
    }
    assert result == {"redelivered": 2, "duplicates": 0, "dropped": 0, "left": 0, "stopped": None}
    # AND the run's report says they reached Slack late
    assert ("slack", "requeued", "delivered late") in _notes(services)
    assert ("slack", "sla_at_risk", "delivered late") in _notes(services)


def test_while_slack_is_still_down_the_notices_stay_and_slack_is_not_hammered(
    services, queue, sink, utc_clock, monkeypatch
):
    # GIVEN three parked notices, and Slack still rate limiting for a minute
    seconds = [0.0]
    monkeypatch.setattr(notifier, "SLACK_CIRCUIT", SlackCircuit(cool_down_seconds=60, clock=lambda: seconds[0]))
    sink.respond_with(SinkResponse.rate_limited(60))
    messages = _parked(REQUEUED, AT_RISK, Notification(kind="started", run_id="run-1", stage=None, reason="go"))
    _expect_receive(queue, services, messages)
    # ... the two not tried are handed back at once, for the next pass
    untried = [
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(messages[1:])
    ]
    queue.add_response(
        "change_message_visibility_batch",
        {"Successful": [{"Id": "0"}, {"Id": "1"}], "Failed": []},
        {"QueueUrl": services.settings.notifications_dlq_url, "Entries": untried},
    )

    # WHEN a pass runs, then another 30 s later, then one after the rest (Slack back)
    first = redeliver_parked_notices(services)
    seconds[0] += 30
    second = redeliver_parked_notices(services)
    queue.assert_no_pending_responses()
    seconds[0] += 31
    _expect_receive(queue, services, messages[:1])
    _expect_delete(queue, services, messages[0])
    _expect_receive(queue, services, [])
    third = redeliver_parked_notices(services)

    # THEN the first pass tried one notice and stopped, leaving all three on the queue; the second did not look at
    # the queue while Slack rests; the third delivered the notice the first could not
    assert (first["left"], first["redelivered"]) == (3, 0) and "429" in first["stopped"]
    assert "not tried" in second["stopped"] and second["left"] == 0
    assert third["redelivered"] == 1 and len(sink.requests) == 2 and len(sink.delivered_messages) == 1


def test_what_can_never_be_sent_is_recorded_and_dropped_and_the_pass_goes_on(services, queue, sink, utc_clock, caplog):
    # GIVEN a message that is not a notification, a notice Slack refuses as invalid, and a good one
    garbage = {"MessageId": "garbage-1", "ReceiptHandle": "receipt-garbage", "Body": "{not json"}
    refused, good = _parked(REQUEUED, AT_RISK)
    sink.respond_with(SinkResponse(400, "invalid_payload"))
    _expect_receive(queue, services, [garbage, refused, good])
    for message in (garbage, refused, good):
        _expect_delete(queue, services, message)
    _expect_receive(queue, services, [])

    # WHEN a pass runs
    result = redeliver_parked_notices(services)

    # THEN the first is dropped unsent and recorded as refused input; the second dropped after Slack's refusal (one
    # refused message says nothing of Slack's health) and recorded on its run; the third delivered
    assert result == {"redelivered": 1, "duplicates": 0, "dropped": 2, "left": 0, "stopped": None}
    assert len(sink.requests) == 2 and len(sink.delivered_messages) == 1
    rejection = services.ledger.list_rejections()[0]
    assert rejection["source"] == "notifications dead-letter queue" and rejection["detail"]["body"] == "{not json"
    assert ("slack", "requeued", "undeliverable") in _notes(services)
    assert ("slack", "sla_at_risk", "delivered late") in _notes(services)
    # ... and each drop says why in an error log
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("not a notification" in e for e in errors) and any("Slack refuses it" in e for e in errors)


def test_a_notice_parked_twice_reaches_slack_once(services, queue, sink, utc_clock):
    # GIVEN the same notice parked twice (a retried handler), received in two passes
    first, again = _parked(REQUEUED, REQUEUED)
    _expect_receive(queue, services, [first])
    _expect_delete(queue, services, first)
    _expect_receive(queue, services, [])
    _expect_receive(queue, services, [again])
    _expect_delete(queue, services, again)
    _expect_receive(queue, services, [])

    # WHEN two passes run
    passes = [redeliver_parked_notices(services), redeliver_parked_notices(services)]

    # THEN Slack got it once, and the copy left the queue unsent
    assert [(p["redelivered"], p["duplicates"]) for p in passes] == [(1, 0), (0, 1)]
    assert len(sink.delivered_messages) == 1


def test_a_notice_another_pass_is_sending_again_stays_on_the_queue(services, queue, sink, utc_clock):
    # GIVEN a parked notice that another guard pass (overlapping, or dead before its timeout) has claimed to send
    (message,) = _parked(REQUEUED)
    key = notifier.REDELIVERY_KEY_PREFIX + parse_parked_notice(message).dedupe_key
    assert services.ledger.claim_notification(key, utc_now() + timedelta(seconds=300))
    _expect_receive(queue, services, [message])
    _expect_receive(queue, services, [])

    # WHEN this pass receives it
    result = redeliver_parked_notices(services)

    # THEN it is left on the queue (not deleted: it comes back if that pass dies), and Slack got nothing from here
    assert result == {"redelivered": 0, "duplicates": 0, "dropped": 0, "left": 1, "stopped": None}
    assert sink.delivered_messages == []


def test_a_notice_parked_before_it_said_when_it_was_due_takes_the_time_sqs_got_it(services, queue, sink, utc_clock):
    # GIVEN a message parked in the old form: the notification and the error only
    (message,) = _parked(REQUEUED)
    message["Body"] = json.dumps({"notification": REQUEUED.to_dict(), "error": "HTTP 500"})
    _expect_receive(queue, services, [message])
    _expect_delete(queue, services, message)
    _expect_receive(queue, services, [])

    # WHEN a pass runs
    redeliver_parked_notices(services)

    # THEN the notice says it was first due when SQS got it
    assert sink.delivered_messages[0]["text"].startswith("Delayed notice: first due 2026-01-05 05:10 UTC")


@pytest.mark.parametrize("sent", ["²", "", "1767589800000.5", None])
def test_an_old_form_notice_whose_sent_time_is_not_a_number_is_due_at_an_unknown_time(sent):
    # GIVEN a message parked in the old form, whose SentTimestamp is not ASCII digits ("²" passes str.isdigit)
    (message,) = _parked(REQUEUED)
    message["Body"] = json.dumps({"notification": REQUEUED.to_dict(), "error": "HTTP 500"})
    message["Attributes"] = {"SentTimestamp": sent}
    # WHEN it is read
    parked = parse_parked_notice(message)
    # THEN it is still the notice, due at an unknown time, not a crash
    assert parked.notification == REQUEUED and parked.due_at == "an unknown time"


def test_a_pass_stays_within_its_time_budget(services, queue, sink, utc_clock):
    # GIVEN three parked notices, and each Slack request taking 30 s of the pass's 60 s budget
    messages = _parked(REQUEUED, AT_RISK, Notification(kind="started", run_id="run-1", stage=None, reason="go"))
    _expect_receive(queue, services, messages)
    _expect_delete(queue, services, messages[0])
    _expect_delete(queue, services, messages[1])
    queue.add_response(
        "change_message_visibility_batch",
        {"Successful": [{"Id": "0"}], "Failed": []},
        {
            "QueueUrl": services.settings.notifications_dlq_url,
            "Entries": [{"Id": "0", "ReceiptHandle": messages[2]["ReceiptHandle"], "VisibilityTimeout": 0}],
        },
    )

    # WHEN a pass runs
    result = redeliver_parked_notices(services, clock=lambda: len(sink.requests) * 30.0)

    # THEN a notice is started only while a whole Slack budget (20 s) fits: two went, the third waits
    assert (result["redelivered"], result["left"], result["stopped"]) == (2, 1, "time budget spent")


def test_a_pass_sends_at_most_its_share_and_leaves_the_rest_for_the_next(services, queue, sink, utc_clock):
    # GIVEN one more parked notice than a pass may send
    limit = notifier.REDELIVERY_MAX_NOTICES
    notices = [Notification(kind="requeued", run_id="run-1", stage="hpc", reason="gone", attempt=n) for n in range(51)]
    assert len(notices) == limit + 1
    messages = _parked(*notices)
    for start in range(0, limit, 10):
        _expect_receive(queue, services, messages[start : start + 10])
        for message in messages[start : start + 10]:
            _expect_delete(queue, services, message)

    # WHEN a pass runs (Slack is up and answers at once)
    result = redeliver_parked_notices(services, clock=lambda: 0.0)

    # THEN it sent exactly its share, asked the queue for no more (the stub has no sixth receive), and the last notice
    # stays parked for the next pass
    assert result["redelivered"] == limit
    assert len(sink.delivered_messages) == limit


def test_a_guard_near_its_timeout_leaves_parked_notices_alone(services, queue, sink, utc_clock):
    # GIVEN a guard whose stage checks left it 30 s before its Lambda timeout
    # WHEN its pass comes to the parked notices
    result = redeliver_parked_notices(services, remaining_seconds=lambda: 30.0)

    # THEN it does not even look at the queue (the stub answers no request)
    assert result["stopped"] == "no time left in this invocation" and sink.requests == []


class FakeBatch:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        self.calls.append("stage checks")
        return {}


class FailingQueue:
    """SQS refusing every receive (after the SDK's retries)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def receive_message(self, **_: Any) -> dict[str, Any]:
        self.calls.append("parked notices")
        raise ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"}}, "ReceiveMessage")


def test_the_guard_sends_parked_notices_after_its_stage_checks_and_never_fails_over_them(services, utc_clock):
    # GIVEN a guard whose dead-letter queue refuses every request
    calls: list[str] = []
    services.batch, services.sqs = FakeBatch(calls), FailingQueue(calls)

    # WHEN it runs a pass
    result = run_guard(services, remaining_seconds=lambda: 280.0)

    # THEN the stages came first, the notices last, and the queue's failure did not fail the pass
    assert calls == ["stage checks", "parked notices"]
    assert result["parked_notices"]["stopped"] == "AWS error" and result["active_stages"] == 0


def test_sending_a_parked_notice_again_claims_it_without_a_copy_the_queue_holds_it_already(
    services, queue, sink, utc_clock, monkeypatch
):
    # GIVEN a parked notice, and the ledger's claims watched
    (message,) = _parked(REQUEUED)
    _expect_receive(queue, services, [message])
    _expect_delete(queue, services, message)
    _expect_receive(queue, services, [])
    claims: list[tuple[str, str | None]] = []
    real_claim = services.ledger.claim_notification

    def watched(key: str, holder_ends_at: Any = None, notice: str | None = None) -> Any:
        claims.append((key, notice))
        return real_claim(key, holder_ends_at, notice)

    monkeypatch.setattr(services.ledger, "claim_notification", watched)

    # WHEN a pass sends it to Slack again
    redeliver_parked_notices(services)

    # THEN its claim keeps no notice: should the pass die, the queue gives the message back, and the guard's sweep of
    # orphaned claims never sends it a second time
    assert [(key.startswith(notifier.REDELIVERY_KEY_PREFIX), notice) for key, notice in claims] == [(True, None)]
