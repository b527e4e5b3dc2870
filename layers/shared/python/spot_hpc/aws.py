"""Boto3 clients for the control plane, built once per cold start with throttling-aware retries.

Every adapter takes its client as an argument; this module is the one place that builds them for real.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# Standard mode retries throttling errors (TooManyRequestsException, ThrottlingException, ...) with exponential
# backoff and jitter; 8 attempts stay well inside the two-minute Spot warning.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=20)


def client(service: str, **kwargs: Any) -> Any:
    return boto3.client(service, config=RETRY_CONFIG, **kwargs)  # type: ignore[call-overload]


def resource(service: str, **kwargs: Any) -> Any:
    return boto3.resource(service, config=RETRY_CONFIG, **kwargs)  # type: ignore[call-overload]


def account_of(invoked_function_arn: str) -> str:
    """The account a Lambda runs in, read from its own ARN: no STS call on the hot path."""
    parts = invoked_function_arn.split(":")
    return parts[4] if len(parts) > 4 else ""
