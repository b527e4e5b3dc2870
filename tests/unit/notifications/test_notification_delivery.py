"""Delivery: SNS always, Slack when it answers, the dead-letter queue when it does not; the pipeline never fails."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import ANY, Stubber
from spot_hpc.slack import (
    MAX_RATE_LIMIT_REST_SECONDS,
    Notification,
    SlackWebhook,
    deliver_notification,
    notification_text,
    sns_subject,
)

from spotctl.offline.webhook_sink import SinkResponse, WebhookSink

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:spot-hpc-notifications"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/spot-hpc-notifications-dlq"
NOTIFICATION = Notification(kind="requeued", run_id="run-9", stage="hpc", reason="deadline at risk", cost_usd=3.25)


def _client(service: str) -> object:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def sns() -> Iterator[tuple[object, Stubber]]:
    client = _client("sns")
    with Stubber(client) as stubber:
        yield client, stubber


@pytest.fixture
def sqs() -> Iterator[tuple[object, Stubber]]:
    client = _client("sqs")
    with Stubber(client) as stubber:
        yield client, stubber


def _expect_sns_publish(stubber: Stubber) -> None:
    stubber.add_response(
        "publish",
        {"MessageId": "sns-message-1"},
        {
            "TopicArn": TOPIC_ARN,
            "Subject": sns_subject(NOTIFICATION),
            "Message": notification_text(NOTIFICATION),
            "MessageAttributes": {
                "kind": {"DataType": "String", "StringValue": "requeued"},
                "run_id": {"DataType": "String", "StringValue": "run-9"},
            },
        },
    )


def test_delivered_to_slack_and_sns(sns: tuple[object, Stubber], sqs: tuple[object, Stubber]) -> None:
    # GIVEN Slack answering and an SNS topic
    sns_client, sns_stubber = sns
    _expect_sns_publish(sns_stubber)
    with WebhookSink() as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None)

        # WHEN the notification is delivered
        outcome = deliver_notification(
            NOTIFICATION, webhook=webhook, sns_client=sns_client, topic_arn=TOPIC_ARN,
            sqs_client=sqs[0], dead_letter_queue_url=QUEUE_URL,
        )  # fmt: skip

        # THEN Slack got one message, SNS one publish, and nothing went to the dead-letter queue
        assert outcome.slack == "delivered" and outcome.sns_message_id == "sns-message-1"
        assert len(sink.delivered_messages) == 1
    sns_stubber.assert_no_pending_responses()


def test_slack_outage_goes_to_the_dead_letter_queue(sns: tuple[object, Stubber], sqs: tuple[object, Stubber]) -> None:
    # GIVEN Slack failing every time
    sns_client, sns_stubber = sns
    sqs_client, sqs_stubber = sqs
    _expect_sns_publish(sns_stubber)
    sqs_stubber.add_response(
        "send_message",
        {"MessageId": "dlq-1", "MD5OfMessageBody": "x"},
        {
            "QueueUrl": QUEUE_URL,
            "MessageBody": ANY,
            "MessageAttributes": {"dedupe_key": {"DataType": "String", "StringValue": NOTIFICATION.dedupe_key}},
        },
    )
    with WebhookSink([503] * 3) as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None, max_attempts=3)

        # WHEN the notification is delivered
        outcome = deliver_notification(
            NOTIFICATION, webhook=webhook, sns_client=sns_client, topic_arn=TOPIC_ARN,
            sqs_client=sqs_client, dead_letter_queue_url=QUEUE_URL,
        )  # fmt: skip

        # THEN nothing raised: the message was dead-lettered after 3 tries, and SNS still got it
        assert outcome.slack == "dead-lettered"
        assert "503" in (outcome.error or "") and sink.url not in (outcome.error or "")
        assert len(sink.requests) == 3
    sqs_stubber.assert_no_pending_responses()
    sns_stubber.assert_no_pending_responses()


def test_dead_letter_body_restores_the_notification(sqs: tuple[object, Stubber]) -> None:
    # GIVEN a dead-letter queue client that captures the body
    sqs_client, sqs_stubber = sqs
    captured: list[str] = []
    sqs_stubber.add_response("send_message", {"MessageId": "dlq-1"}, None)
    sqs_client.meta.events.register(  # type: ignore[attr-defined]
        "provide-client-params.sqs.SendMessage", lambda params, **_: captured.append(params["MessageBody"])
    )
    with WebhookSink([500]) as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None, max_attempts=1)

        # WHEN the delivery fails
        deliver_notification(NOTIFICATION, webhook=webhook, sqs_client=sqs_client, dead_letter_queue_url=QUEUE_URL)

    # THEN the body holds the notification (for a redrive) and the error, never the URL
    body = json.loads(captured[0])
    assert Notification.from_dict(body["notification"]) == NOTIFICATION
    assert "HTTP 500" in body["error"] and "services" not in captured[0]


def test_report_entries_name_each_channel() -> None:
    # GIVEN a notification published to SNS and dead-lettered for Slack
    from spot_hpc.slack import DeliveryOutcome, notification_report_entries

    outcome = DeliveryOutcome(slack="dead-lettered", sns_message_id="m-1", error="HTTP 500")

    # WHEN its run report entries are made
    entries = notification_report_entries(NOTIFICATION, outcome)

    # THEN there is one per channel, with the kind and the plain text
    assert [(e["channel"], e["kind"], e["status"]) for e in entries] == [
        ("sns", "requeued", "delivered"),
        ("slack", "requeued", "dead-lettered"),
    ]
    assert entries[0]["text"] == notification_text(NOTIFICATION)


class BrokenWebhook(SlackWebhook):
    """A webhook whose sender fails in a way it does not foresee (any error the HTTP stack may raise)."""

    def __init__(self) -> None:
        super().__init__("https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/abcdefghijklmnopqrstuvwx")

    def send(self, notification: Notification, *, budget_seconds: float | None = None) -> object:
        raise RuntimeError("unforeseen")


def test_an_unforeseen_slack_error_is_dead_lettered_not_raised(sqs: tuple[object, Stubber]) -> None:
    # GIVEN a Slack sender that fails unexpectedly, after SNS has been told
    sqs_client, sqs_stubber = sqs
    sqs_stubber.add_response("send_message", {"MessageId": "dlq-1"}, None)

    # WHEN the notification is delivered
    outcome = deliver_notification(
        NOTIFICATION, webhook=BrokenWebhook(), sqs_client=sqs_client, dead_letter_queue_url=QUEUE_URL
    )

    # THEN the message is parked for a redrive: raising would make the event's retry publish to SNS again
    assert outcome.slack == "dead-lettered" and "RuntimeError" in (outcome.error or "")
    sqs_stubber.assert_no_pending_responses()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_after_slack_fails_the_next_notices_are_parked_without_waiting_on_it(sqs: tuple[object, Stubber]) -> None:
    # GIVEN Slack down (503 on every try) and a circuit that rests Slack 60 s after a failure
    from spot_hpc.slack import SlackCircuit

    sqs_client, sqs_stubber = sqs
    for _ in range(2):
        sqs_stubber.add_response("send_message", {"MessageId": "dlq"}, None)
    clock = ManualClock()
    circuit = SlackCircuit(cool_down_seconds=60, clock=clock)
    with WebhookSink([503] * 3) as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None, max_attempts=3)
        channels = {"webhook": webhook, "sqs_client": sqs_client, "dead_letter_queue_url": QUEUE_URL}

        # WHEN three notices follow one another, the third after the rest is over
        first = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]
        tries_after_first = len(sink.requests)
        clock.now += 30
        second = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]
        tries_after_second = len(sink.requests)
        clock.now += 31
        third = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]
        url = sink.url

    # THEN the first spent its tries, the second was parked at once (a handler with jobs to requeue within a Spot
    # warning's two minutes does not wait on Slack again), and the third found Slack back
    assert (first.slack, tries_after_first) == ("dead-lettered", 3)
    assert second.slack == "dead-lettered" and tries_after_second == 3
    assert "not tried" in (second.error or "") and "503" in (second.error or "") and url not in (second.error or "")
    assert third.slack == "delivered" and len(sink.requests) == 4 and circuit.resting(webhook) is None
    sqs_stubber.assert_no_pending_responses()


@pytest.mark.parametrize(("retry_after", "rests"), [(300, 300.0), (20_000, MAX_RATE_LIMIT_REST_SECONDS)])
def test_a_rate_limit_longer_than_the_cool_down_rests_slack_as_long_as_it_asks(
    sqs: tuple[object, Stubber], retry_after: int, rests: float
) -> None:
    # GIVEN Slack rate limiting the webhook for longer than the budget and the circuit's 60 s cool-down
    from spot_hpc.slack import SlackCircuit

    sqs_client, sqs_stubber = sqs
    for _ in range(2):
        sqs_stubber.add_response("send_message", {"MessageId": "dlq"}, None)
    clock = ManualClock()
    circuit = SlackCircuit(cool_down_seconds=60, clock=clock)
    with WebhookSink([SinkResponse.rate_limited(retry_after)]) as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None)
        channels = {"webhook": webhook, "sqs_client": sqs_client, "dead_letter_queue_url": QUEUE_URL}

        # WHEN notices follow after the cool-down, then once the rate limit (at most 15 minutes of it) is over
        first = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]
        clock.now += rests - 1
        second = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]
        tries_before_it_ends = len(sink.requests)
        clock.now += 1
        third = deliver_notification(NOTIFICATION, circuit=circuit, **channels)  # type: ignore[arg-type]

    # THEN none was tried while Slack still refused the webhook (each try would be rate limited again), the third was
    assert (first.slack, second.slack, tries_before_it_ends) == ("dead-lettered", "dead-lettered", 1)
    assert "not tried" in (second.error or "") and "429" in (second.error or "")
    assert third.slack == "delivered" and len(sink.requests) == 2
    sqs_stubber.assert_no_pending_responses()


def test_a_refused_message_does_not_rest_slack(sqs: tuple[object, Stubber]) -> None:
    # GIVEN Slack refusing one message as invalid (a 400 is about that message, not about Slack being down)
    from spot_hpc.slack import SlackCircuit

    sqs_client, sqs_stubber = sqs
    sqs_stubber.add_response("send_message", {"MessageId": "dlq"}, None)
    circuit = SlackCircuit(cool_down_seconds=60, clock=ManualClock())
    with WebhookSink([400]) as sink:
        webhook = SlackWebhook(sink.url, allow_loopback_http=True, sleep=lambda _: None)

        # WHEN two notices follow one another
        first = deliver_notification(NOTIFICATION, webhook=webhook, sqs_client=sqs_client,
                                     dead_letter_queue_url=QUEUE_URL, circuit=circuit)  # fmt: skip
        second = deliver_notification(NOTIFICATION, webhook=webhook, circuit=circuit)

    # THEN the second was tried, and delivered
    assert (first.slack, second.slack) == ("dead-lettered", "delivered")
