"""template.yaml as CloudFormation gets it (translated by aws-sam-translator, SAM policy templates expanded), and the
IAM actions it grants each function, for every test: `from template_grants import ...` (tests/ is on pythonpath).

The translation needs no AWS: code locations are replaced by placeholders, as `sam package` would replace them, and
the two AWS managed policies SAM attaches by name are given by ARN."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "template.yaml"

_MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "AWSXrayWriteOnlyAccess": "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
}


class _ManagedPolicies:
    def load(self) -> dict[str, str]:
        return dict(_MANAGED_POLICIES)


@cache
def source_template() -> dict[str, Any]:
    """template.yaml as written (intrinsic tags as their JSON forms)."""
    from spotctl.offline.stack import load_template

    return load_template(TEMPLATE_PATH)


@cache
def _translated() -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(source_template())
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://packaged/{key}.zip"
        if resource.get("Type") == "AWS::Serverless::StateMachine" and "DefinitionUri" in props:
            props["Definition"] = json.loads((REPO / props.pop("DefinitionUri")).read_text())
    parameters = {"SubnetIds": "subnet-0123456789abcdef0", "SecurityGroupIds": "sg-0123456789abcdef0"}
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": "us-east-1"}):
        return transform(template, parameters, _ManagedPolicies())  # type: ignore[no-any-return]


def translated_template() -> dict[str, Any]:
    """The template CloudFormation would create (a fresh copy)."""
    return copy.deepcopy(_translated())


def allowed_statements(template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """The Allow statements of the function's role (inline policies and the stack's own managed policies)."""
    resources = template["Resources"]
    role = resources[f"{function}Role"]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    documents += [
        resources[arn["Ref"]]["Properties"]["PolicyDocument"]
        for arn in role.get("ManagedPolicyArns", [])
        if isinstance(arn, dict) and "Ref" in arn
    ]
    statements = [s for d in documents for s in d["Statement"]]
    return [s for s in statements if s.get("Effect") == "Allow"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed_actions(template: dict[str, Any], function: str) -> list[str]:
    """Every action (or action pattern) the function's role allows."""
    return [a for s in allowed_statements(template, function) for a in as_list(s["Action"])]


def is_allowed(granted: list[str], action: str) -> bool:
    return any(fnmatchcase(action.lower(), pattern.lower()) for pattern in granted)


def refused_calls(template: dict[str, Any], calls: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Of the IAM actions each function's calls need, those its role would refuse (functions with none left out).
    The embedded AWS enforces no IAM: the offline runtime records every call as the action it needs."""
    refused = {
        function: sorted(a for a in set(actions) if not is_allowed(allowed_actions(template, function), a))
        for function, actions in calls.items()
    }
    return {function: actions for function, actions in refused.items() if actions}


def resources_for(template: dict[str, Any], function: str, action: str) -> list[Any]:
    """The Resource entries of the function's statements that allow `action` (as the template writes them)."""
    return [
        r
        for s in allowed_statements(template, function)
        if is_allowed(as_list(s["Action"]), action)
        for r in as_list(s["Resource"])
    ]


def function_timeout_seconds(function: str) -> float:
    """The function's Timeout in template.yaml, or the Globals' when it has none of its own."""
    template = source_template()
    default = template["Globals"]["Function"]["Timeout"]
    return float(template["Resources"][function]["Properties"].get("Timeout", default))
