"""The adapters a handler needs, built once per cold start from validated settings (or injected in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spot_hpc import aws
from spot_hpc.batch import BatchGateway
from spot_hpc.ledger import Ledger
from spot_hpc.pricing import PriceBook, make_aws_price_book
from spot_hpc.settings import ControlPlaneSettings
from spot_hpc.stepfunctions import PipelineStateMachine
from spot_hpc.uploads import UploadBucket


@dataclass
class Services:
    settings: ControlPlaneSettings
    ledger: Ledger
    batch: BatchGateway
    s3: Any
    uploads: UploadBucket
    pipeline: PipelineStateMachine
    sns: Any
    sqs: Any
    secrets: Any
    prices: PriceBook
    # When the invocation being served must end (its Lambda deadline), set by the handler for each invocation: a
    # notification claimed in it is free to retry from then on (ledger.claim_notification).
    invocation_ends_at: datetime | None = None

    @classmethod
    def from_settings(cls, settings: ControlPlaneSettings) -> Services:
        # In the stack's region: a Lambda's default region is it, but `spotctl report --stack` runs where the user's
        # default region may be another.
        def client(service: str) -> Any:
            return aws.client(service, region_name=settings.region)

        s3 = client("s3")
        table = aws.resource("dynamodb", region_name=settings.region).Table(settings.ledger_table)
        return cls(
            settings=settings,
            ledger=Ledger(table, settings.ledger_retention_days),
            batch=BatchGateway(
                client("batch"),
                client("ecs"),
                client("ec2"),
                submit_client=aws.client_sending_once("batch", region_name=settings.region),
            ),
            s3=s3,
            uploads=UploadBucket(s3),
            pipeline=PipelineStateMachine(client("stepfunctions"), settings.state_machine_arn),
            sns=client("sns"),
            sqs=client("sqs"),
            secrets=client("secretsmanager"),
            prices=make_aws_price_book(settings.region),
        )

    @classmethod
    def from_environ(cls) -> Services:
        """Validates the function's environment (once, at cold start) and builds the real adapters."""
        return cls.from_settings(ControlPlaneSettings.from_environ())
