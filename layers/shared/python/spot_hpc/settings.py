"""Environment of every Lambda, validated once at cold start: a misconfigured stack fails loudly, not mid-run."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spot_hpc.validation import describe_validation_error


class SettingsError(RuntimeError):
    """The function's environment is missing or malformed (a deployment error, not bad input)."""


class ControlPlaneSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    ledger_table: str = Field(alias="LEDGER_TABLE", min_length=1)
    ingest_bucket: str = Field(alias="INGEST_BUCKET", min_length=3)
    spot_job_queue: str = Field(alias="SPOT_JOB_QUEUE", min_length=1)
    on_demand_job_queue: str = Field(alias="ON_DEMAND_JOB_QUEUE", min_length=1)
    hpc_job_queue: str = Field(alias="HPC_JOB_QUEUE", min_length=1)
    preprocess_job_definition: str = Field(alias="PREPROCESS_JOB_DEFINITION", min_length=1)
    hpc_job_definition: str = Field(alias="HPC_JOB_DEFINITION", min_length=1)
    hpc_shard_job_definition: str = Field(alias="HPC_SHARD_JOB_DEFINITION", min_length=1)
    postprocess_job_definition: str = Field(alias="POSTPROCESS_JOB_DEFINITION", min_length=1)
    notification_topic_arn: str = Field(alias="NOTIFICATION_TOPIC_ARN", min_length=1)
    notifications_dlq_url: str = Field(alias="NOTIFICATIONS_DLQ_URL", min_length=1)
    slack_secret_id: str = Field(alias="SLACK_SECRET_ID", min_length=1)
    default_deadline_hours: float = Field(alias="DEFAULT_DEADLINE_HOURS", gt=0, le=24 * 365)
    ledger_retention_days: int = Field(alias="LEDGER_RETENTION_DAYS", ge=1)
    hpc_nodes: int = Field(alias="HPC_NODES", ge=2)
    hpc_max_vcpus: int = Field(alias="HPC_MAX_VCPUS", ge=1)
    region: str = Field(default="us-east-1", alias="AWS_REGION")
    spot_instance_type: str = Field(default="c6i.4xlarge", alias="SPOT_INSTANCE_TYPE")
    on_demand_instance_type: str = Field(default="c6i.4xlarge", alias="ON_DEMAND_INSTANCE_TYPE")
    hpc_instance_type: str = Field(default="c6i.8xlarge", alias="HPC_INSTANCE_TYPE")
    # Time from asking for new capacity to a job making progress on it (scale-up, image pull, restore).
    changeover_hours: float = Field(default=0.1, alias="CHANGEOVER_HOURS", ge=0, le=24)
    # The Spot Instance Advisor's interruption bucket of the Spot types (0: <5% .. 4: >20% a month): the deadline
    # policy's prior of Spot capacity before a stage has seen its own.
    spot_interruption_bucket: int = Field(default=4, alias="SPOT_INTERRUPTION_BUCKET", ge=0, le=4)
    # Application errors a stage may retry before it fails for good (Spot reclaims never spend it).
    stage_retry_budget: int = Field(default=2, alias="STAGE_RETRY_BUDGET", ge=0, le=20)
    # A job RUNNABLE on the Spot queue this long means there is no Spot capacity for it.
    spot_wait_signal_minutes: float = Field(default=10.0, alias="SPOT_WAIT_SIGNAL_MINUTES", gt=0)
    state_machine_arn: str | None = Field(default=None, alias="STATE_MACHINE_ARN")
    # Offline only: the loopback webhook sink may be plain http.
    slack_allow_loopback: bool = Field(default=False, alias="SLACK_ALLOW_LOOPBACK")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ControlPlaneSettings:
        try:
            return cls.model_validate(dict(os.environ if environ is None else environ))
        except ValidationError as exc:
            problems = describe_validation_error(exc, "environment")
            raise SettingsError(f"invalid or missing environment variables: {problems}") from exc
