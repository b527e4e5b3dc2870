"""Delivery: SNS always, Slack when it answers, the dead-letter queue when it does not; the pipeline never fails."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import ANY, Stubber
from spot_hpc.slack import Notification, SlackWebhook, deliver_notification, notification_text, sns_subject

from spotctl.offline.webhook_sink import WebhookSink

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
