"""The control plane's boto3 clients give up on a call before the Lambda invocation making it is ended: a call that
throttles or hangs fails as an error the handler sees (and its event is retried), never by a killed invocation."""

from __future__ import annotations

from spot_hpc import aws
from spot_hpc.guard import STAGE_CHECK_MARGIN_SECONDS
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
