"""The environment the template gives every function, as unit tests build the functions' settings from it."""

from __future__ import annotations

from spot_hpc.settings import ControlPlaneSettings

# Names of the resources the tests' fixtures create (the ledger, the bucket, the queues, the webhook secret).
FUNCTION_ENVIRONMENT = {
    "LEDGER_TABLE": "ledger",
    "INGEST_BUCKET": "ingest",
    "SPOT_JOB_QUEUE": "spot",
    "ON_DEMAND_JOB_QUEUE": "on-demand",
    "HPC_JOB_QUEUE": "hpc",
    "PREPROCESS_JOB_DEFINITION": "preprocess",
    "HPC_JOB_DEFINITION": "hpc",
    "HPC_SHARD_JOB_DEFINITION": "hpc-shard",
    "POSTPROCESS_JOB_DEFINITION": "postprocess",
    "NOTIFICATION_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:notifications",
    "NOTIFICATIONS_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/notifications-dlq",
    "SLACK_SECRET_ID": "spot-hpc/slack-webhook",
    "DEFAULT_DEADLINE_HOURS": "24",
    "LEDGER_RETENTION_DAYS": "90",
    "HPC_NODES": "2",
    "HPC_MAX_VCPUS": "256",
    "SLACK_ALLOW_LOOPBACK": "true",
}


def function_settings(**environ: str) -> ControlPlaneSettings:
    """A function's settings from the template's environment, with `environ`'s variables given as well."""
    return ControlPlaneSettings.from_environ({**FUNCTION_ENVIRONMENT, **environ})
