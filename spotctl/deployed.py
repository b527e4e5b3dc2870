"""The control plane's domain services for a deployed stack (in an AWS account, or the offline one): found through
CloudFormation, configured with the deployed functions' own environment."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
from spot_hpc.services import Services
from spot_hpc.settings import ControlPlaneSettings

from spotctl.cli import ToolError


class StackNotFound(LookupError):
    """No such stack, or not a Spot HPC control plane stack."""


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """botocore's own errors (no credentials, no endpoint, an invalid region) and refused calls, as ToolErrors."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise ToolError(f"{what}: {exc.response['Error']['Message']}") from exc
    except BotoCoreError as exc:
        raise ToolError(f"{what}: {exc}") from exc


def stack_region(region: str | None) -> str:
    """`region`, else AWS_REGION, else the region boto3 would use (AWS_DEFAULT_REGION, then the profile's), else
    us-east-1: a region given the usual AWS ways is not silently replaced by us-east-1."""
    if region:
        return region
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    with aws_errors("finding the AWS region"):  # an AWS_PROFILE that is not configured, an unreadable config
        return boto3.session.Session().region_name or "us-east-1"


def services_for_stack(stack_name: str, region: str, extra_env: Mapping[str, str] | None = None) -> Services:
    from botocore.exceptions import ClientError

    with aws_errors(f"stack {stack_name!r} in {region}"):
        cfn = boto3.client("cloudformation", region_name=region)
        try:
            function = cfn.describe_stack_resource(StackName=stack_name, LogicalResourceId="StageRunnerFunction")
        except ClientError as exc:
            raise StackNotFound(f"stack {stack_name!r} in {region}: {exc.response['Error']['Message']}") from exc
        name = function["StackResourceDetail"]["PhysicalResourceId"]
        config = boto3.client("lambda", region_name=region).get_function_configuration(FunctionName=name)
        variables = {k: str(v) for k, v in config["Environment"]["Variables"].items()}
        settings = ControlPlaneSettings.from_environ({**variables, "AWS_REGION": region, **(extra_env or {})})
        return Services.from_settings(settings)


def run_reports(svc: Services) -> list[dict[str, Any]]:
    """Every run in the stack's ledger, as run reports (the design's contract)."""
    from spot_hpc.outcome import run_report

    with aws_errors("reading the stack's ledger"):
        return [run_report(svc, run) for run in svc.ledger.list_runs()]
