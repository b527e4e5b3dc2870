"""Deploys template.yaml into the embedded AWS, as `sam package` + `sam deploy` would.

Local code and definitions are packaged to a staging bucket (as `sam package` does), the template is translated by
aws-sam-translator, and the result is created by moto's CloudFormation: every resource comes from the template.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from spotctl.offline import adapters
from spotctl.offline.eventbus import schedule_period

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
STACK_NAME = "spot-hpc"
STAGING_BUCKET = "spot-hpc-offline-staging"
REPO_ROOT = Path(__file__).resolve().parents[2]


class TemplateError(Exception):
    """template.yaml cannot be deployed; the message says where."""


@dataclass
class DeployedStack:
    template_path: Path
    resources: dict[str, dict[str, str]]  # logical id -> {"type", "physical_id"}
    outputs: dict[str, str]
    functions: dict[str, adapters.LocalFunction]  # physical function name -> how to run it
    not_emulated: list[dict[str, str]] = field(default_factory=list)  # {"logical_id", "type", "reason"}
    translated: dict[str, Any] = field(default_factory=dict)  # the template as aws-sam-translator made it

    def physical_id(self, logical_id: str) -> str:
        return self.resources[logical_id]["physical_id"]


def load_template(path: Path) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    from spotctl.cli import ToolError
    from spotctl.files import read_text

    try:
        text = read_text(path)
    except ToolError as exc:  # not there, a directory, not UTF-8 text
        raise TemplateError(str(exc)) from exc
    try:
        template = yaml_parse(text)
    except Exception as exc:
        # One line: YAML's own message quotes the offending line under it, with a caret.
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        reason = f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if problem and mark else exc
        raise TemplateError(f"{path}: not valid YAML: {' '.join(str(reason).split())}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError(f"{path}: a template needs a Resources mapping")
    return template


def _zip_dir(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, file.relative_to(directory).as_posix())
    return buffer.getvalue()


def package(template: dict[str, Any], root: Path, s3: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    """Uploads local CodeUri/ContentUri folders and inlines DefinitionUri files, like `sam package`.

    Returns the packaged template and each function's local code folder (logical id -> path).
    """
    s3.create_bucket(Bucket=STAGING_BUCKET)
    code_dirs: dict[str, Path] = {}
    globals_function = template.get("Globals", {}).get("Function", {})
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        kind = resource.get("Type")
        for prop in ("CodeUri", "ContentUri"):
            uri = props.get(prop)
            if kind == "AWS::Serverless::Function" and prop == "CodeUri" and uri is None:
                uri = globals_function.get("CodeUri")
            if isinstance(uri, str) and not uri.startswith("s3://"):
                local = (root / uri).resolve()
                if not local.is_dir():
                    raise TemplateError(f"{logical_id}.{prop}: {uri} is not a folder")
                key = f"{logical_id}.zip"
                s3.put_object(Bucket=STAGING_BUCKET, Key=key, Body=_zip_dir(local))
                props[prop] = f"s3://{STAGING_BUCKET}/{key}"
                if kind == "AWS::Serverless::Function":
                    code_dirs[logical_id] = local
        uri = props.get("DefinitionUri")
        if kind == "AWS::Serverless::StateMachine" and isinstance(uri, str) and not uri.startswith("s3://"):
            path = root / uri
            try:
                props["Definition"] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise TemplateError(f"{logical_id}.DefinitionUri: {uri}: {exc}") from exc
            del props["DefinitionUri"]
    return template, code_dirs


def translate(template: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.public.translator import ManagedPolicyLoader
    from samtranslator.translator.transform import transform

    iam = boto3.client("iam", region_name=REGION)
    try:
        return transform(template, parameters, ManagedPolicyLoader(iam))  # type: ignore[no-any-return]
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause) for cause in exc.causes)
        raise TemplateError(f"template.yaml is not a valid SAM template: {causes}") from exc


def default_network(ec2: Any) -> dict[str, str]:
    """The embedded account's default VPC subnets and security group, as a user would pass their own."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    vpc_id = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    return {
        "SubnetIds": ",".join(s["SubnetId"] for s in subnets[:2]),
        "SecurityGroupIds": groups[0]["GroupId"],
    }


def check_schedules(template: dict[str, Any]) -> None:
    """Refuses a rule on a rate schedule EventBridge refuses, as AWS fails the stack's creation for it; moto creates
    it, and the offline bus could not run it (`rate(0 minutes)` would fire forever). Cron schedules are not run
    offline, and are left to moto."""
    for logical_id, resource in template.get("Resources", {}).items():
        expression = resource.get("Properties", {}).get("ScheduleExpression")
        if (
            resource.get("Type") == "AWS::Events::Rule"
            and isinstance(expression, str)
            and expression.startswith("rate")
        ):
            try:
                schedule_period(expression)
            except ValueError as exc:
                raise TemplateError(f"{logical_id}.ScheduleExpression: {exc}") from None


# The parameters a user must give besides the network: the job image (the Batch emulator runs no image).
OFFLINE_PARAMETERS = {"JobImage": "spot-hpc-jobs:offline"}


def deploy(template_path: Path, parameter_overrides: dict[str, str] | None = None) -> DeployedStack:
    """Deploys the template into the (already started) embedded AWS and returns what was created."""
    root = template_path.resolve().parent
    s3 = boto3.client("s3", region_name=REGION)
    cfn = boto3.client("cloudformation", region_name=REGION)
    template = load_template(template_path)
    packaged, code_dirs = package(template, root, s3)
    network = default_network(boto3.client("ec2", region_name=REGION))
    parameters = {**network, **OFFLINE_PARAMETERS, **(parameter_overrides or {})}
    translated = translate(packaged, parameters)
    # What moto is given: the translation, adapted where moto differs from AWS (the translation itself is kept).
    deployable = copy.deepcopy(translated)
    adapters.apply_definition_substitutions(deployable)
    adapters.inline_list_parameters(deployable, parameters)
    adapters.add_batch_service_role(deployable)
    not_emulated = adapters.drop_unemulated_resources(deployable)
    check_schedules(deployable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfn.create_stack(
            StackName=STACK_NAME,
            TemplateBody=json.dumps(deployable),
            Parameters=[
                {"ParameterKey": k, "ParameterValue": str(v)}
                for k, v in parameters.items()
                if k in deployable.get("Parameters", {})
            ],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    for warning in caught:
        message = str(warning.message)
        if "not supported by moto" in message:
            not_emulated.append(
                {
                    "logical_id": "?",
                    "type": message.split("parse ")[-1].split(" ")[0],
                    "reason": "moto's CloudFormation does not create this type",
                }
            )
    stack = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise TemplateError(f"stack creation ended in {stack['StackStatus']}: {stack.get('StackStatusReason', '')}")
    resources = {
        r["LogicalResourceId"]: {"type": r["ResourceType"], "physical_id": r["PhysicalResourceId"]}
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=STACK_NAME)
        for r in page["StackResourceSummaries"]
    }
    adapters.register_state_machines_for_execution(ACCOUNT_ID, REGION)
    adapters.apply_bucket_versioning(deployable, {k: v["physical_id"] for k, v in resources.items()}, s3)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    functions = {
        resources[logical_id]["physical_id"]: adapters.LocalFunction(logical_id=logical_id, code_dir=code_dir)
        for logical_id, code_dir in code_dirs.items()
        if logical_id in resources
    }
    return DeployedStack(template_path, resources, outputs, functions, not_emulated, translated)
