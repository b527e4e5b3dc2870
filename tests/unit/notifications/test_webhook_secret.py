"""The webhook URL secret: strict validation, reading through an injected client, and never echoing the value."""

from __future__ import annotations

import json
import logging
import traceback

import boto3
import pytest
from botocore.stub import Stubber
from spot_hpc.slack import (
    InvalidWebhookUrl,
    SlackWebhook,
    WebhookSecretError,
    WebhookSecretUnreadable,
    read_webhook_url,
    validate_webhook_url,
)

GOOD_URL = "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/abcdefghijklmnopqrstuvwx"
SECRET_ID = "spot-hpc/slack-webhook"

HOSTILE_VALUES = {
    "not a url": "definitely-not-a-url-SECRETTOKEN",
    "plain http": "http://hooks.slack.com/services/T0/B0/SECRETTOKEN",
    "other host": "https://evil.example.com/services/T0/B0/SECRETTOKEN",
    "suffix host": "https://hooks.slack.com.evil.example/services/T0/B0/SECRETTOKEN",
    "credentials": "https://user:SECRETTOKEN@hooks.slack.com/services/T0/B0/x",
    "userinfo trick": "https://hooks.slack.com@evil.example/services/SECRETTOKEN",
    "crlf injection": "https://hooks.slack.com/services/T0/B0/SECRETTOKEN\r\nX-Injected: 1",
    "trailing newline": GOOD_URL + "\nSECRETTOKEN",
    "huge": "https://hooks.slack.com/services/" + "SECRETTOKEN" * 20_000,
    "unicode host": "https://hooks.sl\u0430ck.com/services/T0/B0/SECRETTOKEN",  # Cyrillic a
    "odd port": "https://hooks.slack.com:8443/services/T0/B0/SECRETTOKEN",
    "query": "https://hooks.slack.com/services/T0/B0/x?SECRETTOKEN=1",
    "wrong path": "https://hooks.slack.com/api/SECRETTOKEN",
    "path traversal": "https://hooks.slack.com/services/../api/SECRETTOKEN",
    "loopback without offline flag": "http://127.0.0.1:8080/services/SECRETTOKEN",
    "file scheme": "file:///etc/SECRETTOKEN",
    "javascript": "javascript:alert('SECRETTOKEN')",
    "bad port": "https://hooks.slack.com:99999999/SECRETTOKEN",
}


@pytest.mark.parametrize("value", list(HOSTILE_VALUES.values()), ids=list(HOSTILE_VALUES))
def test_hostile_secret_values_are_rejected_without_echo(value: str) -> None:
    # GIVEN a secret value that is not a Slack webhook URL
    # WHEN it is validated
    with pytest.raises(InvalidWebhookUrl) as caught:
        validate_webhook_url(value)

    # THEN the error is clear and never repeats the value
    message = str(caught.value)
    assert message.startswith("the Slack webhook secret is not a valid webhook URL: ")
    assert "SECRETTOKEN" not in message and "SECRETTOKEN" not in repr(caught.value)
    assert "SECRETTOKEN" not in "".join(traceback.format_exception(caught.value))  # what a logger would print
    assert len(message) < 200


@pytest.mark.parametrize("value", [None, 42, b"https://hooks.slack.com/services/x", ""])
def test_non_string_or_empty_values_are_rejected(value: object) -> None:
    # GIVEN / WHEN / THEN anything but a non-empty string is refused
    with pytest.raises(InvalidWebhookUrl):
        validate_webhook_url(value)


def test_slack_url_is_accepted_and_loopback_only_when_offline() -> None:
    # GIVEN a real-shaped Slack URL and a loopback sink URL
    loopback = "http://127.0.0.1:5123/services/T0/B0/x"

    # WHEN / THEN Slack is always accepted, loopback only with the offline flag
    assert validate_webhook_url(GOOD_URL) == GOOD_URL
    assert validate_webhook_url(loopback, allow_loopback_http=True) == loopback
    assert validate_webhook_url("http://[::1]:5123/x", allow_loopback_http=True)
    with pytest.raises(InvalidWebhookUrl):
        validate_webhook_url(loopback)
    with pytest.raises(InvalidWebhookUrl):
        validate_webhook_url("http://10.0.0.1:5123/x", allow_loopback_http=True)


def test_sender_refuses_a_hostile_url() -> None:
    # GIVEN / WHEN a sender is made on a hostile URL
    with pytest.raises(InvalidWebhookUrl) as caught:
        SlackWebhook(HOSTILE_VALUES["other host"])

    # THEN it fails before any request, without the value
    assert "SECRETTOKEN" not in str(caught.value)


def _secrets_client_returning(secret_string: str) -> tuple[object, Stubber]:
    client = boto3.client("secretsmanager", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.add_response(
        "get_secret_value",
        {
            "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
            "Name": SECRET_ID,
            "SecretString": secret_string,
        },
        {"SecretId": SECRET_ID},
    )
    stubber.activate()
    return client, stubber


@pytest.mark.parametrize(
    "secret_string", [GOOD_URL, json.dumps({"webhook_url": GOOD_URL}), json.dumps({"url": GOOD_URL})]
)
def test_read_webhook_url_from_plain_or_json_secret(secret_string: str, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a Secrets Manager client holding the URL, plain or as JSON
    client, stubber = _secrets_client_returning(secret_string)
    caplog.set_level(logging.DEBUG)

    # WHEN the URL is read
    url = read_webhook_url(client, SECRET_ID)

    # THEN it is the URL, read with exactly one GetSecretValue, and nothing logged it
    assert url == GOOD_URL
    stubber.assert_no_pending_responses()
    assert "abcdefghijklmnopqrstuvwx" not in caplog.text


def test_read_webhook_url_rejects_a_hostile_secret() -> None:
    # GIVEN a secret whose value is hostile
    client, _ = _secrets_client_returning(HOSTILE_VALUES["crlf injection"])

    # WHEN / THEN reading it fails with the validation error, not the value
    with pytest.raises(InvalidWebhookUrl) as caught:
        read_webhook_url(client, SECRET_ID)
    assert "SECRETTOKEN" not in str(caught.value)


def test_read_webhook_url_rejects_json_without_the_url_key() -> None:
    # GIVEN a JSON secret with the URL under an unknown key
    client, _ = _secrets_client_returning(json.dumps({"token": "SECRETTOKEN"}))

    # WHEN / THEN it is refused without echo
    with pytest.raises(InvalidWebhookUrl, match="none of the keys") as caught:
        read_webhook_url(client, SECRET_ID)
    assert "SECRETTOKEN" not in str(caught.value)


def test_missing_secret_is_a_typed_error() -> None:
    # GIVEN a client that reports the secret does not exist
    client = boto3.client("secretsmanager", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.add_client_error("get_secret_value", "ResourceNotFoundException", "not found", 400)
    stubber.activate()

    # WHEN / THEN reading fails with WebhookSecretError naming the secret id
    with pytest.raises(WebhookSecretError, match="spot-hpc/slack-webhook"):
        read_webhook_url(client, SECRET_ID)


@pytest.mark.parametrize(
    ("code", "unreadable"),
    [("ResourceNotFoundException", False), ("ThrottlingException", True), ("InternalServiceError", True),
     ("AccessDeniedException", True)],
)  # fmt: skip
@pytest.mark.parametrize("cached", [False, True], ids=["direct", "through Powertools' cache"])
def test_a_secret_that_cannot_be_read_now_is_told_apart_from_one_that_does_not_exist(
    code: str, unreadable: bool, cached: bool
) -> None:
    # GIVEN Secrets Manager answering with `code` (after botocore's retries)
    client = boto3.client("secretsmanager", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.add_client_error("get_secret_value", code, "no", 400)
    stubber.activate()

    # WHEN the URL is read
    with pytest.raises(WebhookSecretError) as caught:
        read_webhook_url(client, SECRET_ID, max_age_seconds=300 if cached else None)

    # THEN only a missing secret means Slack is not set up; any other error is Slack unreachable for now
    assert isinstance(caught.value, WebhookSecretUnreadable) is unreadable
    assert code in str(caught.value)


def test_cached_read_asks_secrets_manager_once() -> None:
    # GIVEN a client stubbed for exactly one GetSecretValue
    client, stubber = _secrets_client_returning(GOOD_URL)

    # WHEN the URL is read twice with Powertools caching
    first = read_webhook_url(client, SECRET_ID, max_age_seconds=300)
    second = read_webhook_url(client, SECRET_ID, max_age_seconds=300)

    # THEN the second read came from the cache (the stub would fail on a second call)
    assert first == second == GOOD_URL
    stubber.assert_no_pending_responses()


def test_an_invalid_url_is_also_a_webhook_secret_error() -> None:
    # GIVEN callers that disable Slack on any webhook secret problem
    # WHEN / THEN an invalid URL is caught by the same except clause (and is still a ValueError)
    with pytest.raises(WebhookSecretError):
        validate_webhook_url("nope")
    with pytest.raises(ValueError):
        validate_webhook_url("nope")
