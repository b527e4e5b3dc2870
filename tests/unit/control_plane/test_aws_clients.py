"""The control plane's boto3 clients give up on a call before the Lambda invocation making it is ended: a call that
throttles or hangs fails as an error the handler sees (and its event is retried), never by a killed invocation; and a
call that is not safe to send again is sent once."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from function_settings import function_settings
from spot_hpc import aws
from spot_hpc.batch import JobRequest
from spot_hpc.guard import STAGE_CHECK_MARGIN_SECONDS
from spot_hpc.services import Services
from template_grants import source_template

# botocore's standard retry mode: before attempt i + 1 (i from 0) it waits up to min(2 ** i, 20) seconds on a
# throttling error (botocore.retries.standard.ExponentialBackoff).
STANDARD_MAX_BACKOFF_SECONDS = 20


def _shortest_function_timeout_seconds() -> int:
    template = source_template()
    default = template["Globals"]["Function"]["Timeout"]
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    return min(int(f["Properties"].get("Timeout", default)) for f in functions)


def test_one_call_with_all_its_retries_ends_within_the_time_a_handler_keeps_for_it():
    # GIVEN a client as the control plane builds it
    client = aws.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    config = client.meta.config
    attempts = config.retries["total_max_attempts"]  # botocore's own count: the first attempt and its retries
    # WHEN every attempt of one call waits its whole connect and read timeouts, with the longest backoff between them
    per_attempt = config.connect_timeout + config.read_timeout
    backoffs = sum(min(2**i, STANDARD_MAX_BACKOFF_SECONDS) for i in range(attempts - 1))
    longest_call = attempts * per_attempt + backoffs
    # THEN the call has given up before the shortest function's invocation is ended, and within what the SLA guard
    # keeps for a stage check it starts
    assert config.retries["mode"] == "standard"
    assert longest_call < _shortest_function_timeout_seconds()
    assert longest_call <= STAGE_CHECK_MARGIN_SECONDS


def test_a_job_submission_whose_answer_is_lost_is_sent_to_batch_once(monkeypatch):

    # GIVEN the control plane's adapters, and Batch that takes every SubmitJob it is sent but whose answer never
    # arrives (a read timeout: the job is submitted, the caller cannot tell)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.setup_default_session()
    submitted = []

    def answer_lost(request, **kwargs):
        submitted.append(request)
        raise ReadTimeoutError(endpoint_url=request.url)

    boto3.DEFAULT_SESSION.events.register("before-send.batch.SubmitJob", answer_lost)
    services = Services.from_settings(function_settings())
    request = JobRequest(name="run-1-hpc-1", queue="q", definition="d", environment={}, tags={}, parameters={})
    # WHEN a stage's job is submitted
    with pytest.raises(ReadTimeoutError):
        services.batch.submit(request)
    # THEN it was sent once: SubmitJob has no idempotency token, so each resend is one more job doing the stage's work
    # (billed, unknown to the ledger); the placement's own recovery looks the job up by its name before submitting again
    assert len(submitted) == 1
