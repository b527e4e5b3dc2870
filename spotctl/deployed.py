"""The control plane's domain services for a deployed stack (in an AWS account, or the offline one): found through
CloudFormation, configured with the deployed functions' own environment."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
from spot_hpc.services import Services
from spot_hpc.settings import ControlPlaneSettings, SettingsError

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
        # A function without an environment has none of the control plane's settings either.
        variables = {k: str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()}
        try:
            settings = ControlPlaneSettings.from_environ({**variables, "AWS_REGION": region, **(extra_env or {})})
        except SettingsError as exc:
            raise StackNotFound(f"stack {stack_name!r} in {region}: not a Spot HPC control plane stack: {exc}") from exc
        return Services.from_settings(settings)


def run_reports(svc: Services) -> list[dict[str, Any]]:
    """Every run in the stack's ledger, as run reports (the design's contract). A run the ledger holds in no run's
    shape (a field missing, a time that is not one) is a ValueError, naming the run where its item could be read."""
    from spot_hpc.outcome import run_report

    with aws_errors(f"reading its ledger (table {svc.settings.ledger_table!r})"):
        try:
            runs = svc.ledger.list_runs()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a run in its ledger cannot be read: {exc}") from None
        reports = []
        for run in runs:
            try:
                reports.append(run_report(svc, run))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"run {run.run_id!r} cannot be reported: {exc}") from None
        return reports
