"""Boto3 clients for the control plane, built once per cold start with throttling-aware retries.

Every adapter takes its client as an argument; this module is the one place that builds them for real.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# Standard mode retries throttling errors (TooManyRequestsException, ThrottlingException, ...) and timeouts with
# exponential backoff and jitter (up to 1, 2, 4 s before the 2nd, 3rd, 4th attempt). One call, every attempt of it
# hung to its timeouts, gives up within 4 x (2 + 3) + 7 = 27 s: inside the shortest function timeout (60 s) and the
# time the SLA guard keeps for a stage check, so a call that cannot succeed fails as an error its handler sees
# instead of outliving the invocation. `total_max_attempts` counts the first attempt (`max_attempts`, retries only).
RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 4}, connect_timeout=2, read_timeout=3)
# For a call that is not safe to send again (Batch's SubmitJob takes no idempotency token): a timed-out or failed answer
# may be a call done, which a resend would do twice. Its caller retries only what was refused (throttling).
SEND_ONCE_CONFIG = RETRY_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))


def client(service: str, **kwargs: Any) -> Any:
    return boto3.client(service, config=RETRY_CONFIG, **kwargs)  # type: ignore[call-overload]


def client_sending_once(service: str, **kwargs: Any) -> Any:
    return boto3.client(service, config=SEND_ONCE_CONFIG, **kwargs)  # type: ignore[call-overload]


def resource(service: str, **kwargs: Any) -> Any:
    return boto3.resource(service, config=RETRY_CONFIG, **kwargs)  # type: ignore[call-overload]


def account_of(invoked_function_arn: str) -> str:
    """The account a Lambda runs in, read from its own ARN: no STS call on the hot path."""
    parts = invoked_function_arn.split(":")
    return parts[4] if len(parts) > 4 else ""
