"""Fixtures for the notification tests: a running Slack webhook sink and a Slack circuit of each test's own (`ledger`,
on moto, and `utc_clock`, a clock the test moves, are for all tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from function_settings import FUNCTION_ENVIRONMENT, function_settings
from spot_hpc import notifier
from spot_hpc.ledger import Ledger
from spot_hpc.services import Services
from spot_hpc.slack import SlackCircuit

from spotctl.offline.webhook_sink import WebhookSink


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as running:
        yield running


@pytest.fixture(autouse=True)
def slack_circuit(monkeypatch: pytest.MonkeyPatch) -> SlackCircuit:
    """A circuit of the test's own: one test's Slack outage does not rest Slack for the next."""
    circuit = SlackCircuit(cool_down_seconds=60.0)
    monkeypatch.setattr(notifier, "SLACK_CIRCUIT", circuit)
    return circuit


@pytest.fixture
def services(ledger: Ledger, sink: WebhookSink) -> Services:
    """What a notifying handler gets, on moto: the ledger, an SNS topic, the notifications dead-letter queue and
    the webhook secret (the sink's URL). Tests swap in stubbed clients where they check exact requests."""
    import boto3

    topic = boto3.client("sns", region_name="us-east-1").create_topic(Name="notifications")["TopicArn"]
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="notifications-dlq")["QueueUrl"]
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    secrets.create_secret(Name=FUNCTION_ENVIRONMENT["SLACK_SECRET_ID"], SecretString=sink.url)
    settings = function_settings(NOTIFICATION_TOPIC_ARN=topic, NOTIFICATIONS_DLQ_URL=queue)
    return Services(
        settings=settings,
        ledger=ledger,
        batch=None,  # type: ignore[arg-type]
        s3=None,
        uploads=None,  # type: ignore[arg-type]
        pipeline=None,  # type: ignore[arg-type]
        sns=boto3.client("sns", region_name="us-east-1"),
        sqs=sqs,
        secrets=secrets,
        prices=None,  # type: ignore[arg-type]
    )
