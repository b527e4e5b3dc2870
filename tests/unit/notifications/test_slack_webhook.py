"""The webhook sender against the real loopback sink: retries on 429 / 5xx / timeouts, and giving up cleanly."""

from __future__ import annotations

import pytest
from spot_hpc.slack import Notification, SlackDeliveryError, SlackWebhook, build_message

from spotctl.offline.webhook_sink import SinkResponse, WebhookSink

NOTIFICATION = Notification(kind="interrupted", run_id="run-7", stage="hpc", reason="Spot warning", cost_usd=1.5)


class RecordingSleep:
    """Records the waits instead of waiting (no test sleeps for real)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _webhook(sink: WebhookSink, sleep: RecordingSleep, **kwargs: object) -> SlackWebhook:
    options: dict = {"allow_loopback_http": True, "sleep": sleep, "jitter": lambda: 0.5, "timeout_seconds": 2.0}
    options.update(kwargs)
    return SlackWebhook(sink.url, **options)


def test_message_is_delivered_first_time(sink: WebhookSink) -> None:
    # GIVEN a sink that answers 200
    sleep = RecordingSleep()

    # WHEN a notification is sent
    result = _webhook(sink, sleep).send(NOTIFICATION)

    # THEN it arrives once, as the Block Kit message, with no wait
    assert result.status == 200 and result.attempts == 1
    assert sink.delivered_messages == [build_message(NOTIFICATION)]
    assert sink.requests[0].headers["Content-Type"].startswith("application/json")
    assert sleep.waits == []


def test_429_waits_exactly_retry_after(sink: WebhookSink) -> None:
    # GIVEN a sink that rate-limits twice with Retry-After 1 then 2 seconds
    sink.respond_with(SinkResponse.rate_limited(1), SinkResponse.rate_limited(2))
    sleep = RecordingSleep()

    # WHEN a notification is sent
    result = _webhook(sink, sleep).send(NOTIFICATION)

    # THEN the sender waited what Slack asked for and the third request got through
    assert sleep.waits == [1.0, 2.0]
    assert result.attempts == 3
    assert [r.status for r in sink.requests] == [429, 429, 200]
    assert len(sink.delivered_messages) == 1


def test_500s_are_retried_with_exponential_backoff(sink: WebhookSink) -> None:
    # GIVEN a sink failing twice with 500 / 503 before answering 200
    sink.respond_with(500, 503)
    sleep = RecordingSleep()

    # WHEN a notification is sent (jitter fixed at half the ceiling)
    result = _webhook(sink, sleep, base_backoff_seconds=0.5).send(NOTIFICATION)

    # THEN it was delivered on the third try after backoffs of 0.25 s then 0.5 s
    assert result.attempts == 3
    assert sleep.waits == [0.25, 0.5]
    assert len(sink.delivered_messages) == 1


def test_persistent_500_raises_after_max_attempts(sink: WebhookSink) -> None:
    # GIVEN a sink that keeps failing
    sink.respond_with(*[500] * 10)
    sleep = RecordingSleep()

    # WHEN a notification is sent with 3 tries allowed
    with pytest.raises(SlackDeliveryError) as caught:
        _webhook(sink, sleep, max_attempts=3).send(NOTIFICATION)

    # THEN exactly 3 requests were made, the error is retryable and never names the URL
    assert len(sink.requests) == 3
    assert caught.value.attempts == 3 and caught.value.status == 500 and caught.value.retryable
    assert sink.url not in str(caught.value) and sink.path not in repr(caught.value)
    assert len(sleep.waits) == 2


def test_4xx_is_not_retried(sink: WebhookSink) -> None:
    # GIVEN a sink that says the webhook is gone
    sink.respond_with(404)

    # WHEN a notification is sent
    with pytest.raises(SlackDeliveryError) as caught:
        _webhook(sink, RecordingSleep()).send(NOTIFICATION)

    # THEN there was one request, and the error says why without the URL
    assert len(sink.requests) == 1
    assert not caught.value.retryable
    assert "no_service" in str(caught.value)
    assert sink.path not in str(caught.value)


def test_timeout_is_retried(sink: WebhookSink) -> None:
    # GIVEN a sink that hangs on the first request, then answers
    sink.respond_with(SinkResponse.hang(10))
    sleep = RecordingSleep()

    # WHEN a notification is sent with a short client timeout
    result = _webhook(sink, sleep, timeout_seconds=0.2).send(NOTIFICATION)

    # THEN the hung request timed out and the retry got through
    assert result.attempts == 2
    assert len(sleep.waits) == 1
    assert len(sink.requests) == 2


def test_persistent_timeouts_raise(sink: WebhookSink) -> None:
    # GIVEN a sink that hangs every time
    sink.respond_with(*[SinkResponse.hang(10)] * 2)

    # WHEN a notification is sent with 2 tries
    with pytest.raises(SlackDeliveryError, match="no answer within") as caught:
        _webhook(sink, RecordingSleep(), timeout_seconds=0.2, max_attempts=2).send(NOTIFICATION)

    # THEN the error is retryable (a redrive may succeed)
    assert caught.value.retryable and caught.value.status is None


def test_retry_after_beyond_the_budget_gives_up_without_sleeping(sink: WebhookSink) -> None:
    # GIVEN Slack asks to wait longer than the Lambda has left
    sink.respond_with(SinkResponse.rate_limited(600))
    sleep = RecordingSleep()

    # WHEN a notification is sent with a 20 s budget
    with pytest.raises(SlackDeliveryError, match="budget") as caught:
        _webhook(sink, sleep).send(NOTIFICATION, budget_seconds=20)

    # THEN the sender neither slept nor cut the wait short: it handed the message back for the dead-letter queue
    assert sleep.waits == []
    assert caught.value.status == 429 and caught.value.retryable
    assert len(sink.requests) == 1


def test_waits_stop_when_the_budget_is_spent(sink: WebhookSink) -> None:
    # GIVEN repeated 429s asking for 4 s each and a budget of 15 s with a 2 s request timeout
    sink.respond_with(*[SinkResponse.rate_limited(4)] * 10)
    sleep = RecordingSleep()

    # WHEN a notification is sent with many tries allowed
    with pytest.raises(SlackDeliveryError, match="budget"):
        _webhook(sink, sleep, max_attempts=10).send(NOTIFICATION, budget_seconds=15)

    # THEN it waited while a wait plus one more request (2 s timeout) fitted in the budget, then gave up
    assert sleep.waits == [4.0, 4.0, 4.0]
    assert sum(sleep.waits) + 2.0 <= 15
    assert len(sink.requests) == 4


def test_unreachable_sink_is_a_retryable_error() -> None:
    # GIVEN a sink that was stopped (nothing listens on its port)
    with WebhookSink() as stopped:
        url = stopped.url

    # WHEN a notification is sent there
    webhook = SlackWebhook(url, allow_loopback_http=True, sleep=RecordingSleep(), max_attempts=2, timeout_seconds=1)
    with pytest.raises(SlackDeliveryError) as caught:
        webhook.send(NOTIFICATION)

    # THEN it fails as a retryable delivery error without the URL
    assert caught.value.retryable and url not in str(caught.value)


def test_repr_does_not_show_the_url(sink: WebhookSink) -> None:
    # GIVEN / WHEN a webhook is printed
    text = repr(_webhook(sink, RecordingSleep()))

    # THEN only its host shows
    assert sink.path not in text and "127.0.0.1" in text


def test_sink_rejects_a_body_that_is_not_json(sink: WebhookSink) -> None:
    # GIVEN the sink answers like Slack when no script is queued
    import urllib.error
    import urllib.request

    # WHEN something that is not JSON is posted
    request = urllib.request.Request(sink.url, data=b"not json", method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(request, timeout=2)

    # THEN it answers 400 invalid_payload and records nothing as delivered
    assert caught.value.code == 400
    assert caught.value.read() == b"invalid_payload"
    caught.value.close()
    assert sink.delivered_messages == []


class GarbledOpener:
    """An opener whose answers are not HTTP (a broken proxy or a cut connection): http.client raises, not urllib."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.requests = 0

    def open(self, fullurl: object, data: object = None, timeout: float = 0) -> object:
        self.requests += 1
        raise self.errors.pop(0)


def test_an_answer_that_is_not_http_is_retried_then_a_retryable_error() -> None:
    # GIVEN an opener whose answers are a bad status line, then a body cut short, every time
    import http.client

    opener = GarbledOpener([http.client.BadStatusLine("garbage"), http.client.IncompleteRead(b"o", 1)])
    url = "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/abcdefghijklmnopqrstuvwx"
    webhook = SlackWebhook(url, opener=opener, sleep=RecordingSleep(), jitter=lambda: 0.5, max_attempts=2)

    # WHEN a notification is sent
    with pytest.raises(SlackDeliveryError) as caught:
        webhook.send(NOTIFICATION)

    # THEN both tries were made and the failure is Slack's to retry later (the dead-letter queue), never the URL
    assert opener.requests == 2
    assert caught.value.retryable and caught.value.status is None
    assert "abcdefghij" not in str(caught.value)
