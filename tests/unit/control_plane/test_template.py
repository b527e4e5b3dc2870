"""template.yaml, the pipeline's ASL and samconfig.toml as AWS and the SAM CLI read them: what the embedded AWS
cannot tell (IAM is not enforced offline, resource policies and launch templates are not emulated)."""

from __future__ import annotations

import email
import fnmatch
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any, cast

import pytest
from annotated_types import Ge, Gt, Le
from function_settings import function_settings
from spot_checkpoint.store import MANIFEST_NAME, SEQ_DIGITS, CheckpointStore
from spot_hpc.events import MAIN_NODE_INDEX
from spot_hpc.pipeline import HPC_NODE_VCPUS, INGEST_PREFIX, manifest_key, stage_output_uri
from spot_hpc.placement import checkpoint_uri
from spot_hpc.settings import ControlPlaneSettings
from template_grants import (
    REPO,
    allowed_actions,
    allowed_statements,
    as_list,
    function_timeout_seconds,
    is_allowed,
    refused_calls,
    resources_for,
    source_template,
    translated_template,
)

ASL_PATH = REPO / "statemachines" / "pipeline.asl.json"
# The longest a compute environment's infrastructure update waits for running jobs (UpdatePolicy's
# jobExecutionTimeoutMinutes: 1 to 360, AWS Batch API reference); Batch's default is 30.
BATCH_MAX_UPDATE_WAIT_MINUTES = 360

# ------------------------------------------------------------------ IAM: every call the domain code makes
# The IAM actions behind the AWS calls each handler's code path can make (spot_hpc and spot_checkpoint; HeadObject
# is s3:GetObject, with a VersionId also s3:GetObjectVersion; DeleteObjects is s3:DeleteObject per key).
LEDGER = {
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",  # Ledger.unbilled_among
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
}
NOTIFY = {"sns:Publish", "sqs:SendMessage", "secretsmanager:GetSecretValue"}  # notifier.notify
# notifier.redeliver_parked_notices (the guard): the notifications dead-letter queue's parked Slack notices
PARKED_NOTICES = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibilityBatch"}
PRICES = {"pricing:GetProducts", "ec2:DescribeSpotPriceHistory"}  # placement.node_price, choose_capacity
PROGRESS = {"s3:ListBucket", "s3:GetObject"}  # placement.stage_progress (checkpoint manifests)
INTAKE_READS = {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"}  # ingest: the upload and its manifest
CHECKPOINT_REQUEST = {"s3:PutObject"}  # placement.request_checkpoint
CHECKPOINT_CLEANUP = {"s3:ListBucket", "s3:DeleteObject"}  # job_events._settle -> CheckpointStore.cleanup
PLACE = {"batch:ListJobs", "batch:SubmitJob", "batch:TagResource"}  # placement.submit_claimed (tags on SubmitJob)
TERMINATE = {"batch:TerminateJob"}  # requeue_to_on_demand, a reclaimed shard ending its array, the guard, record_placed
ANSWER = {"states:SendTaskSuccess", "states:SendTaskFailure"}  # job_events.answer_state_machine
INSTANCES = {"ecs:DescribeContainerInstances"}  # job_events: the instances a RUNNING job is on
# The price and bill of the instances a job got (placement.price_on_instances; first_hour.unbilled_instances: their
# launch times), and of a multi-node job's nodes (BatchGateway.multinode_nodes: DescribeJobs of `jobId#N`)
BILLING = {"ec2:DescribeInstances", "batch:DescribeJobs"}

# A job's start acts on the Spot signals kept for its instance (interruptions.act_on_kept_signals): it asks the stage
# to checkpoint, as the signal's own handler would have.
BATCH_EVENT = CHECKPOINT_REQUEST.union(
    LEDGER, NOTIFY, PRICES, PROGRESS, CHECKPOINT_CLEANUP, PLACE, TERMINATE, ANSWER, INSTANCES, BILLING
)

HANDLER_CALLS: dict[str, set[str]] = {
    # The upload's version is headed and its manifest read; S3 tells a missing manifest (404) only to a caller that may
    # list its key, and uploads.read_small lists that key when S3 refuses the read.
    "StartPipelineFunction": LEDGER | NOTIFY | INTAKE_READS | {"states:StartExecution"},
    # A stage settled while its first job was submitted (the run ended) has that job ended (placement.record_placed).
    "StageRunnerFunction": LEDGER | PRICES | PROGRESS | PLACE | TERMINATE | ANSWER,
    "BatchStateChangeFunction": BATCH_EVENT,
    "SpotInterruptionFunction": set().union(LEDGER, NOTIFY, PRICES, PROGRESS, CHECKPOINT_REQUEST, PLACE, TERMINATE),
    # The guard applies what lost Batch events would have (job_events.apply_job_state) and asks for checkpoints.
    # ... and settles runs whose execution ended without them (outcome.finish stops their jobs).
    # Last in each pass it sends the notices whose sender died after claiming them (notifier.send_orphaned_notices:
    # the ledger's index, then NOTIFY), and the Slack notices parked while Slack was down.
    "SlaGuardFunction": (
        BATCH_EVENT | CHECKPOINT_REQUEST | {"batch:DescribeJobs", "states:DescribeExecution"} | PARKED_NOTICES
    ),
    "NotifyFunction": LEDGER | NOTIFY | PRICES | TERMINATE,  # outcome.stop_unfinished_stages
}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translated_template()


@pytest.mark.parametrize("function", sorted(HANDLER_CALLS))
def test_each_role_allows_every_call_its_handler_can_make(translated, function):
    # GIVEN every action the function's code path needs
    # WHEN each is checked against the role the translated template gives the function
    missing = refused_calls(translated, {function: HANDLER_CALLS[function]}).get(function, [])
    # THEN none is refused (a refused call is an outage that the embedded AWS, which enforces no IAM, never shows)
    assert missing == []


def test_the_stage_runner_reads_checkpoints_and_may_not_change_the_ingest_bucket(translated):
    # GIVEN what the stage runner's role allows
    granted = allowed_actions(translated, "StageRunnerFunction")
    # THEN it may read a stage's checkpoints (the placement weighs their progress), which is all it does in S3
    assert all(is_allowed(granted, action) for action in PROGRESS)
    # AND it may not write or delete the uploads, results and checkpoints, nor change the bucket's lifecycle rules
    writes = ["s3:PutObject", "s3:PutObjectAcl", "s3:DeleteObject", "s3:PutLifecycleConfiguration"]
    assert [action for action in writes if is_allowed(granted, action)] == []


# The object ARNs of the ingest bucket as the template writes them, and as SAM's S3 policy templates expand them.
_INGEST_OBJECT_ARNS = ("${IngestBucket.Arn}/", "arn:${AWS::Partition}:s3:::${bucketName}/")


def _object_grants(statements: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The actions `statements` allow on the ingest bucket's objects, by the key pattern of each object ARN (a
    Resource of "*" as the pattern "*")."""
    grants: dict[str, list[str]] = {}
    for statement in statements:
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                grants.setdefault("*", []).extend(as_list(statement["Action"]))
            sub = resource.get("Fn::Sub") if isinstance(resource, dict) else None
            arn, names = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            if names and names != {"bucketName": {"Ref": "IngestBucket"}}:
                continue
            for prefix in _INGEST_OBJECT_ARNS:
                if isinstance(arn, str) and arn.startswith(prefix):
                    grants.setdefault(arn.removeprefix(prefix), []).extend(as_list(statement["Action"]))
    return grants


def _listed_prefixes(statements: list[dict[str, Any]]) -> list[list[str]]:
    """The s3:prefix patterns each statement allowing s3:ListBucket limits listing to (["*"] for one with no limit)."""
    return [
        as_list(s.get("Condition", {}).get("StringLike", {}).get("s3:prefix", "*"))
        for s in statements
        if is_allowed(as_list(s["Action"]), "s3:ListBucket")
    ]


def _granted_on(grants: dict[str, list[str]], key: str) -> list[str]:
    """The actions (or action patterns) `grants` allow on the object `key` (IAM's `*` spans `/`, as fnmatch's does)."""
    return [action for pattern, actions in grants.items() if fnmatch.fnmatchcase(key, pattern) for action in actions]


# Every key the control plane writes or deletes is under this prefix (placement.checkpoint_uri).
CHECKPOINTS_PREFIX = "checkpoints/"


@pytest.mark.parametrize("function", ["BatchStateChangeFunction", "SpotInterruptionFunction", "SlaGuardFunction"])
def test_the_checkpointing_handlers_write_only_checkpoints_and_may_not_change_the_ingest_bucket(translated, function):
    # GIVEN a stage's checkpoint request and one of its manifests: the keys the function's S3 calls put, read, delete
    store = CheckpointStore(None, checkpoint_uri("bucket", "run-1", "hpc"))
    manifest = f"{store.part_prefix}{0:0{SEQ_DIGITS}d}/{MANIFEST_NAME}"
    # WHEN the function's role is read by object key
    statements = allowed_statements(translated, function)
    grants = _object_grants(statements)
    # THEN it may not write or delete anything outside the checkpoints (the uploads, the stages' results), nor set an
    # object's ACL, nor change the bucket's lifecycle rules (which expire the checkpoints left over)
    writes = ["s3:PutObject", "s3:PutObjectAcl", "s3:DeleteObject", "s3:DeleteObjectVersion"]
    outside = {
        pattern: written
        for pattern, actions in grants.items()
        if not pattern.startswith(CHECKPOINTS_PREFIX) and (written := [a for a in writes if is_allowed(actions, a)])
    }
    assert outside == {}
    changes = ["s3:PutObjectAcl", "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucket"]
    assert [action for action in changes if is_allowed(allowed_actions(translated, function), action)] == []
    # AND it may still make the calls its code makes on them: put the request, read and delete checkpoints
    calls = HANDLER_CALLS[function]
    needed = {store.request_key: {"s3:PutObject"}, manifest: {"s3:GetObject", "s3:DeleteObject"}}
    refused = {
        key: sorted(a for a in actions & calls if not is_allowed(_granted_on(grants, key), a))
        for key, actions in needed.items()
    }
    assert refused == {store.request_key: [], manifest: []}


@pytest.mark.parametrize(
    "function", ["StageRunnerFunction", "BatchStateChangeFunction", "SpotInterruptionFunction", "SlaGuardFunction"]
)
def test_the_functions_weighing_progress_read_only_the_ingest_buckets_checkpoints(translated, function):
    # GIVEN the prefix whose manifests the function lists and reads (a stage's checkpoints)
    prefix = CheckpointStore(None, checkpoint_uri("bucket", "run-1", "hpc")).prefix
    # WHEN the function's role is read
    statements = allowed_statements(translated, function)
    # THEN it reads no object outside the checkpoints (the uploads, the stages' results)
    reads = ["s3:GetObject", "s3:GetObjectVersion"]
    outside = {
        pattern: read
        for pattern, actions in _object_grants(statements).items()
        if not pattern.startswith(CHECKPOINTS_PREFIX) and (read := [a for a in reads if is_allowed(actions, a)])
    }
    assert outside == {}
    # AND it lists keys only under the checkpoints, which covers where the code lists
    listed = _listed_prefixes(statements)
    assert listed == [[f"{CHECKPOINTS_PREFIX}*"]]
    assert fnmatch.fnmatchcase(prefix, listed[0][0])


def test_the_intake_reads_only_the_uploads_and_their_manifests(translated):
    # GIVEN an upload and the manifest beside it: the keys the start-pipeline function heads, reads and lists
    upload = f"{INGEST_PREFIX}data.csv"
    manifest = manifest_key(upload)
    # WHEN its role is read by object key
    statements = allowed_statements(translated, "StartPipelineFunction")
    grants = _object_grants(statements)
    # THEN it takes no S3 action beyond the reads its code makes (no bucket settings, no writes)
    granted = allowed_actions(translated, "StartPipelineFunction")
    assert sorted({a for a in granted if a.startswith("s3:")}) == sorted(INTAKE_READS)
    # AND it reads no object outside the uploads (the stages' results, the checkpoints)
    reads = ["s3:GetObject", "s3:GetObjectVersion"]
    outside = {
        pattern: read
        for pattern, actions in grants.items()
        if not pattern.startswith(INGEST_PREFIX) and (read := [a for a in reads if is_allowed(actions, a)])
    }
    assert outside == {}
    # AND it lists keys only under the uploads, which covers the manifest's key
    listed = _listed_prefixes(statements)
    assert listed == [[f"{INGEST_PREFIX}*"]]
    assert fnmatch.fnmatchcase(manifest, listed[0][0])
    # AND it may still head the upload's version (HeadObject with a VersionId) and read the manifest
    refused = {
        key: sorted(a for a in actions if not is_allowed(_granted_on(grants, key), a))
        for key, actions in {upload: {"s3:GetObject", "s3:GetObjectVersion"}, manifest: {"s3:GetObject"}}.items()
    }
    assert refused == {upload: [], manifest: []}


def test_jobs_are_submitted_only_to_the_stacks_queues_and_job_definitions(translated):
    queues = {"SpotJobQueue", "OnDemandJobQueue", "HpcJobQueue"}
    definitions = {"PreprocessJobDefinition", "HpcJobDefinition", "HpcShardJobDefinition", "PostprocessJobDefinition"}
    # The interruption handler only ever places On-Demand work (placement.requeue_to_on_demand).
    expected_queues = {f: queues for f in ("StageRunnerFunction", "BatchStateChangeFunction", "SlaGuardFunction")}
    expected_queues["SpotInterruptionFunction"] = {"OnDemandJobQueue"}
    for function, wanted in expected_queues.items():
        # GIVEN the resources of the function's batch:SubmitJob grant
        granted = resources_for(translated, function, "batch:SubmitJob")
        refs = {r["Ref"] for r in granted if isinstance(r, dict) and set(r) == {"Ref"}}
        # THEN they are the queues it submits to and the stack's four job definitions, nothing wider
        assert refs == wanted | definitions, function
        assert all(isinstance(r, dict) and set(r) == {"Ref"} for r in granted), (function, granted)


def test_the_slack_secret_grant_matches_only_that_secret(translated):
    # GIVEN every function that may send a notification
    for function in sorted(f for f, calls in HANDLER_CALLS.items() if "secretsmanager:GetSecretValue" in calls):
        # WHEN the resources of its GetSecretValue grant are read
        suffixed, bare = (json.dumps(r) for r in resources_for(translated, function, "secretsmanager:GetSecretValue"))
        # THEN they are the named secret with Secrets Manager's six-character suffix, not every name starting alike,
        # and the bare name that IAM checks when the secret does not exist (so that AWS says it does not)
        assert suffixed.endswith('secret:${SlackSecretName}-??????"}'), (function, suffixed)
        assert bare.endswith('secret:${SlackSecretName}"}'), (function, bare)


# ------------------------------------------------------------------ EventBridge: targets, retries, dead letters
def _rules(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in translated["Resources"].items() if v["Type"] == "AWS::Events::Rule"}


def test_every_rule_target_retries_and_dead_letters_to_a_queue_that_lets_that_rule_send(translated):
    # GIVEN the rules of the translated template and the dead-letter queue's policy
    rules = _rules(translated)
    policy = translated["Resources"]["EventsDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    [statement] = policy["Statement"]
    allowed_sources = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert rules
    for logical_id, rule in rules.items():
        for target in rule["Targets"]:
            # THEN each target has a retry policy and the events dead-letter queue
            assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1, logical_id
            assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}, logical_id
        # AND the queue policy names that very rule (a name pattern would not survive CloudFormation shortening
        # generated rule names of long stack names, and EventBridge would drop what it cannot dead-letter)
        assert {"Fn::GetAtt": [logical_id, "Arn"]} in allowed_sources, logical_id


def test_rule_patterns_use_the_fields_aws_sends(translated):
    # GIVEN the rules' event patterns
    patterns = {json.dumps(r["EventPattern"]["detail-type"]): r["EventPattern"] for r in _rules(translated).values()
                if "EventPattern" in r}  # fmt: skip
    # THEN each matches the source, detail-type and detail fields of the real events
    spot = patterns['["EC2 Spot Instance Interruption Warning"]']
    rebalance = patterns['["EC2 Instance Rebalance Recommendation"]']
    batch = patterns['["Batch Job State Change"]']
    s3 = patterns['["Object Created"]']
    assert spot["source"] == rebalance["source"] == ["aws.ec2"]
    assert batch["source"] == ["aws.batch"]
    assert set(batch["detail"]) == {"jobQueue"}  # the queue's ARN, which a Ref to a job queue is
    assert s3["source"] == ["aws.s3"]
    assert s3["detail"]["bucket"]["name"] == [{"Ref": "IngestBucket"}]
    assert s3["detail"]["object"]["key"] == [{"prefix": "incoming/"}]
    # AND the bucket sends its events to EventBridge at all
    bucket = translated["Resources"]["IngestBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_the_ingest_bucket_keeps_nothing_billed_that_no_one_can_use():
    # GIVEN the ingest bucket's lifecycle rules
    rules = _resources("AWS::S3::Bucket")["IngestBucket"]["LifecycleConfiguration"]["Rules"]
    enabled = [rule for rule in rules if rule["Status"] == "Enabled"]
    # THEN an upload cut off is aborted, wherever it was going (its parts are billed, and seen by no listing)
    aborts = [
        r for r in enabled if r.get("Prefix", "") == "" and "Filter" not in r and "AbortIncompleteMultipartUpload" in r
    ]
    assert len(aborts) == 1 and 1 <= aborts[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7
    # AND the checkpoints expire, their old versions too, and the delete markers their expiry leaves are removed
    checkpoints = [rule for rule in enabled if rule.get("Prefix") == "checkpoints/"]
    assert any("ExpirationInDays" in r and "NoncurrentVersionExpiration" in r for r in checkpoints)
    assert any(r.get("ExpiredObjectDeleteMarker") is True for r in checkpoints)
    # AND nothing else of the bucket (the uploads, the results: the users' data) expires
    assert [r["Id"] for r in enabled if "ExpirationInDays" in r and r.get("Prefix") != "checkpoints/"] == []


def _with_stack_names(value: Any, names: dict[str, str]) -> Any:
    """A pattern with its Refs to the stack's bucket and queues replaced by the names a sample event carries."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return names[value["Ref"]]
        return {k: _with_stack_names(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_stack_names(v, names) for v in value]
    return value


@pytest.mark.parametrize(
    "sample",
    ["spot_interruption_warning", "rebalance_recommendation", "batch_job_failed_host_terminated", "s3_object_created"],
)
def test_each_sample_event_is_matched_by_its_rule_once_the_stacks_names_are_its_own(translated, sample):
    from moto.events.models import EventPattern
    from sample_events import load_event

    event = load_event(sample)
    # GIVEN the sample's bucket and job queue taken as the stack's own (the samples name no deployed stack)
    detail = event["detail"]
    queue = detail.get("jobQueue", "")
    names = {"IngestBucket": detail.get("bucket", {}).get("name", "")}
    names |= {q: queue for q in ("SpotJobQueue", "OnDemandJobQueue", "HpcJobQueue")}
    # WHEN the rules' patterns are applied to it as EventBridge would
    matched = [
        logical_id
        for logical_id, rule in _rules(translated).items()
        if "EventPattern" in rule
        and EventPattern(None, _with_stack_names(rule["EventPattern"], names)).matches_event(event)
    ]
    # THEN exactly one rule takes it: the sample has the fields, names and casing AWS sends and the rules expect
    assert len(matched) == 1, matched


def test_every_asynchronously_invoked_function_has_a_failure_destination(translated):
    resources = translated["Resources"]
    targets = {t["Arn"]["Fn::GetAtt"][0] for r in _rules(translated).values() for t in r["Targets"]}
    configs = {
        v["Properties"]["FunctionName"]["Ref"]: v["Properties"]
        for v in resources.values()
        if v["Type"] == "AWS::Lambda::EventInvokeConfig"
    }
    # THEN every function EventBridge invokes sends what it finally fails on to a queue
    assert targets and targets <= set(configs)
    for function in targets:
        assert configs[function]["DestinationConfig"]["OnFailure"]["Destination"], function


# ------------------------------------------------------------------ settings: environment and parameters
def _environment(template: dict[str, Any], function: str) -> dict[str, Any]:
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    own = template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    return {**shared, **own}


def test_every_function_gets_every_variable_settings_requires():
    template = source_template()
    required = {f.alias for f in ControlPlaneSettings.model_fields.values() if f.is_required()}
    # GIVEN the environment each function is deployed with
    for function in HANDLER_CALLS:
        # THEN settings finds every variable it requires (it refuses to start otherwise)
        assert required <= set(_environment(template, function)), function
    assert "STATE_MACHINE_ARN" in _environment(template, "StartPipelineFunction")


def test_every_function_that_places_a_stage_runs_numpy_on_one_thread():
    template = source_template()
    # GIVEN the functions that ask the deadline planner where a stage runs (a numpy dynamic program)
    for function in ("StageRunnerFunction", "SpotInterruptionFunction", "SlaGuardFunction", "BatchStateChangeFunction"):
        # THEN BLAS starts no thread per visible core: the function has a fraction of one CPU
        assert _environment(template, function)["OPENBLAS_NUM_THREADS"] == "1", function


def _bounds(field: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    for item in field.metadata:
        if isinstance(item, Ge):
            found["ge"] = float(cast(float, item.ge))
        elif isinstance(item, Gt):
            found["gt"] = float(cast(float, item.gt))
        elif isinstance(item, Le):
            found["le"] = float(cast(float, item.le))
    return found


def test_parameters_refuse_what_the_functions_would_refuse_at_cold_start():
    template = source_template()
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    fields = {f.alias: f for f in ControlPlaneSettings.model_fields.values()}
    checked = 0
    for variable, value in shared.items():
        if not (isinstance(value, dict) and set(value) == {"Ref"} and variable in fields):
            continue
        parameter = template["Parameters"].get(value["Ref"])
        bounds = _bounds(fields[variable])
        if parameter is None or not bounds:
            continue
        checked += 1
        # GIVEN a numeric parameter the settings bound: THEN the parameter is bounded at least as tightly, so that
        # `sam deploy` refuses the value rather than every function failing at its first cold start
        if "AllowedValues" in parameter:
            allowed = [float(v) for v in parameter["AllowedValues"]]
            assert all(bounds.get("ge", -math.inf) <= v <= bounds.get("le", math.inf) for v in allowed), value["Ref"]
            assert all(bounds.get("gt", -math.inf) < v for v in allowed), value["Ref"]
            continue
        if "ge" in bounds:
            assert float(parameter["MinValue"]) >= bounds["ge"], value["Ref"]
        if "gt" in bounds:
            assert float(parameter["MinValue"]) > bounds["gt"], value["Ref"]
        if "le" in bounds:
            assert float(parameter["MaxValue"]) <= bounds["le"], value["Ref"]
    assert checked >= 3


@pytest.mark.parametrize(
    ("parameter", "variable", "given", "setting", "expected"),
    [
        ("ChangeoverHours", "CHANGEOVER_HOURS", "0.75", "changeover_hours", 0.75),
        ("SpotInterruptionBucket", "SPOT_INTERRUPTION_BUCKET", "1", "spot_interruption_bucket", 1),
    ],
)
def test_the_deadline_policys_inputs_are_the_stacks_parameters(
    parameter: str, variable: str, given: str, setting: str, expected: float
):
    template = source_template()
    # GIVEN the parameters of the stack that describe its capacity to the deadline policy
    spec = template["Parameters"][parameter]
    # THEN every function gets them
    assert template["Globals"]["Function"]["Environment"]["Variables"][variable] == {"Ref": parameter}
    assert "Description" in spec
    # AND a value given at deploy time is what the functions' settings read (as CloudFormation passes it: a string)
    settings = function_settings(**{variable: given})
    assert getattr(settings, setting) == expected
    # AND the stack's default is the settings' own, so that the offline runtime and `sam deploy` agree
    default = ControlPlaneSettings.model_fields[setting].default
    assert float(spec["Default"]) == default


def test_string_parameters_are_constrained():
    parameters = source_template()["Parameters"]
    # THEN every free-text or list parameter says what it accepts
    for name, spec in parameters.items():
        if spec["Type"] in ("String", "CommaDelimitedList"):
            assert "AllowedPattern" in spec or "AllowedValues" in spec, name
            assert "ConstraintDescription" in spec, name
        # AND every default is one the parameter accepts (CloudFormation applies a list's pattern to each item)
        default = spec.get("Default")
        if default is not None and "AllowedPattern" in spec:
            items = str(default).split(",") if spec["Type"] == "CommaDelimitedList" else [str(default)]
            assert all(re.fullmatch(spec["AllowedPattern"], item) for item in items), name
        if default is not None and spec["Type"] == "Number":
            assert float(spec.get("MinValue", "-inf")) <= float(default) <= float(spec.get("MaxValue", "inf")), name
    instance_type = re.compile(parameters["SpotInstanceTypes"]["AllowedPattern"])
    assert instance_type.fullmatch("c6i.4xlarge") and instance_type.fullmatch("m6a.48xlarge")
    assert not instance_type.fullmatch("c6i.4xlarge,") and not instance_type.fullmatch("optimal")
    secret = re.compile(parameters["SlackSecretName"]["AllowedPattern"])
    assert secret.fullmatch("spot-hpc/slack-webhook") and not secret.fullmatch("bad name")


def test_every_function_takes_the_public_powertools_layer_unless_the_deployment_names_its_own(translated):
    # GIVEN the functions CloudFormation would create, and the parameter naming another Powertools layer
    functions = {k: v["Properties"] for k, v in translated["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    layer_arn = re.compile(source_template()["Parameters"]["PowertoolsLayerArn"]["AllowedPattern"])
    # THEN each function's first layer is the commercial partition's public layer while the parameter is empty, and
    # the layer the parameter names otherwise (AWS China and GovCloud (US) publish it under other accounts)
    assert translated["Conditions"]["UsePublicPowertoolsLayer"] == {"Fn::Equals": [{"Ref": "PowertoolsLayerArn"}, ""]}
    for name, properties in functions.items():
        condition, public, own = properties["Layers"][0]["Fn::If"]
        assert condition == "UsePublicPowertoolsLayer" and own == {"Ref": "PowertoolsLayerArn"}, name
        assert ":017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:" in public["Fn::Sub"], name
    # AND the parameter takes an empty value or a layer version ARN of any partition, and nothing else
    china = "arn:aws-cn:lambda:cn-north-1:498634801083:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:18"
    assert layer_arn.fullmatch("") and layer_arn.fullmatch(china)
    assert layer_arn.fullmatch("arn:aws-us-gov:lambda:us-gov-west-1:123456789012:layer:powertools-v3:4")
    assert not layer_arn.fullmatch("AWSLambdaPowertoolsPythonV3") and not layer_arn.fullmatch(china[:-3])


# ------------------------------------------------------------------ the state machine
def test_every_arn_reaches_the_asl_through_definition_substitutions():
    text = ASL_PATH.read_text()
    substitutions = source_template()["Resources"]["PipelineStateMachine"]["Properties"]["DefinitionSubstitutions"]
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    # THEN the ASL holds no literal ARN (nor partition), and its placeholders and the substitutions are one set
    assert not re.search(r"arn:aws[\w-]*:", text)
    assert placeholders == set(substitutions)


def test_every_task_retries_service_errors_catches_to_a_failure_notice_and_cannot_wait_forever():
    states = json.loads(ASL_PATH.read_text())["States"]
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    for name, task in tasks.items():
        retried = {e for r in task.get("Retry", []) if r.get("MaxAttempts", 3) > 0 for e in r["ErrorEquals"]}
        # THEN Lambda's transient errors (throttling included) are retried
        assert retried & {"States.ALL", "Lambda.TooManyRequestsException"}, name
        assert retried & {"States.ALL", "Lambda.ServiceException"}, name
        # AND every failure is caught
        assert any("States.ALL" in c["ErrorEquals"] for c in task.get("Catch", [])), name
        if task["Resource"].endswith(".waitForTaskToken"):
            # a token nobody answers ends the wait, and the run is reported failed
            assert task.get("TimeoutSecondsPath") == "$.stage_timeout_seconds", name
            assert task["Catch"][-1]["Next"] == "NotifyFailed", name
            # a stage that failed for good is not retried by the state machine (the control plane retried it)
            no_retry = [r for r in task["Retry"] if "StageFailed" in r["ErrorEquals"]]
            assert no_retry and no_retry[0]["MaxAttempts"] == 0, name


def _retrier_backoff_seconds(retrier: dict[str, Any]) -> float:
    """How long a retrier waits in all before its last attempt (the ASL's defaults where a field is left out)."""
    interval, rate = retrier.get("IntervalSeconds", 1), retrier.get("BackoffRate", 2.0)
    return float(sum(interval * rate**n for n in range(retrier.get("MaxAttempts", 3))))


def test_a_run_end_notice_whose_claim_is_held_is_retried_past_the_longest_lease_of_that_claim():
    from spot_hpc.ledger import CLAIM_CLOCK_MARGIN, NotificationClaimHeld

    # GIVEN the longest a notify invocation's claim can last: its timeout, the ledger's margin for clocks, and up to
    # 2 s more for whole seconds (the lease is rounded up to one, and compared with the time in whole seconds)
    longest_lease = function_timeout_seconds("NotifyFunction") + CLAIM_CLOCK_MARGIN.total_seconds() + 2
    states = json.loads(ASL_PATH.read_text())["States"]
    notify_tasks = {
        name: state
        for name, state in states.items()
        if state["Type"] == "Task" and state["Parameters"]["FunctionName"] == "${NotifyFunctionArn}"
    }
    assert set(notify_tasks) == {"NotifySucceeded", "NotifyFailed"}
    for name, task in notify_tasks.items():
        retriers = task["Retry"]
        held = [i for i, r in enumerate(retriers) if NotificationClaimHeld.__name__ in r["ErrorEquals"]]
        catch_all = [i for i, r in enumerate(retriers) if "States.ALL" in r["ErrorEquals"]]
        # THEN the error the notifier raises has a retrier of its own, before the catch-all one (the first that
        # matches is taken), with no jitter or cap to shorten its waits
        assert held and catch_all and held[0] < catch_all[0], name
        retrier = retriers[held[0]]
        assert retrier["ErrorEquals"] == ["NotificationClaimHeld"], name
        assert retrier.get("JitterStrategy", "NONE") == "NONE" and "MaxDelaySeconds" not in retrier, name
        # AND its waits add up to more than the lease: a retry comes after the claim of an attempt that died at once
        assert _retrier_backoff_seconds(retrier) >= longest_lease, name
        # AND when they are spent the error is caught as every other: the run still reaches its end state
        assert task["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.notify_error", "Next": task["Next"]}
        ], name


# ------------------------------------------------------------------ Batch
def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in source_template()["Resources"].items() if v["Type"] == kind}


def test_job_retry_strategies_leave_reclaims_to_the_control_plane_and_end_with_a_catch_all():
    definitions = _resources("AWS::Batch::JobDefinition")
    strategies = {name: d["RetryStrategy"]["EvaluateOnExit"] for name, d in definitions.items()}
    for name, rules in strategies.items():
        # THEN a host termination (a Spot reclaim) exits to the control plane, which re-places it from its checkpoint
        assert rules[0] == {"OnStatusReason": "Host EC2*", "Action": "EXIT"}, name
        # AND the last rule matches everything (unmatched failures would be retried by Batch: a double retry of
        # application errors, whose budget the control plane keeps)
        assert rules[-1] == {"OnReason": "*", "Action": "EXIT"}, name
    # AND every definition treats the same infrastructure errors alike
    assert len({json.dumps(rules) for rules in strategies.values()}) == 1


def _job_containers() -> dict[str, dict[str, Any]]:
    """The job definitions' containers, by definition (a multi-node one's by definition and node range)."""
    containers = {}
    for name, definition in _resources("AWS::Batch::JobDefinition").items():
        ranges = definition.get("NodeProperties", {}).get("NodeRangeProperties", [])
        containers.update({f"{name}[{r['TargetNodes']}]": r["Container"] for r in ranges})
        if "ContainerProperties" in definition:
            containers[name] = definition["ContainerProperties"]
    return containers


def test_every_job_runs_under_an_init_that_passes_signals_on():
    # GIVEN the job definitions' containers (a multi-node one's in each node range)
    containers = _job_containers()
    # THEN each runs its command under an init as PID 1: Python as PID 1 ignores a SIGTERM sent before the runtime
    # handles it (while it imports) and reaps no child a job spawns
    assert len(containers) == 4
    for name, container in containers.items():
        assert container.get("LinuxParameters", {}).get("InitProcessEnabled") is True, name


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined and comments left out."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def _job_image_pins() -> dict[str, str]:
    """package -> version of each package the job image's `pip install`s pin."""
    instructions = _dockerfile_instructions(REPO / "jobs" / "Dockerfile")
    installs = " ".join(args for op, args in instructions if op == "RUN" and "pip install" in args)
    return dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", installs))


def test_the_job_image_answers_every_job_definitions_command_with_the_pinned_versions():
    # GIVEN the job definitions' containers (a multi-node one's per node range) and the job image they run
    containers = {
        name: definition.get("ContainerProperties")
        or next(iter(definition["NodeProperties"]["NodeRangeProperties"]))["Container"]
        for name, definition in _resources("AWS::Batch::JobDefinition").items()
    }
    commands = {name: container["Command"] for name, container in containers.items()}
    images = {container["Image"]["Ref"] for container in containers.values()}
    instructions = _dockerfile_instructions(REPO / "jobs" / "Dockerfile")
    workdir = next(args for op, args in instructions if op == "WORKDIR")
    copied = [args.split() for op, args in instructions if op == "COPY"]
    in_workdir = {Path(source).name for *sources, dest in copied if dest.rstrip("/") == workdir for source in sources}
    # THEN every definition runs a module of the one image, which the image holds in its working directory (where
    # `python -m` looks), each copied from the workload's source in jobs/
    assert images == {"JobImage"}
    # AND the stack has no default image: one without the workloads would fail every job as an application error
    assert "Default" not in source_template()["Parameters"]["JobImage"]
    for name, command in commands.items():
        assert command[:2] == ["python", "-m"] and f"{command[2]}.py" in in_workdir, name
    assert all((REPO / "jobs" / source).exists() for *sources, _ in copied for source in sources)
    # AND the image sets no ENTRYPOINT, which would make the job's command mere arguments to it
    assert "ENTRYPOINT" not in {op for op, _ in instructions}
    # AND it installs the versions pinned in requirements.txt
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line)
    for package, version in _job_image_pins().items():
        assert pins[package] == version, package


def test_the_job_image_pins_the_sdk_whole_as_the_control_planes_layer_does():
    # GIVEN the packages the job image's pip installs pin
    pinned = set(_job_image_pins())
    # THEN the SDK is pinned whole, as in the control plane's layer: boto3 takes any botocore of its minor version, so
    # without botocore's own pin the image runs the newest one on the day it is built, not the one the tests ran
    assert {"boto3", "botocore", "numpy"} <= pinned


def test_the_multinode_environment_keeps_to_one_subnet_for_its_cluster_placement_group():
    # GIVEN the HPC compute environment, whose instances share a cluster placement group
    hpc = _resources("AWS::Batch::ComputeEnvironment")["HpcComputeEnvironment"]["ComputeResources"]
    condition, given, default = hpc["Subnets"]["Fn::If"]
    # THEN it launches in one subnet, so one Availability Zone (a cluster placement group cannot span zones): the
    # subnet given for it, else the first of the stack's subnets
    assert hpc["PlacementGroup"] == {"Ref": "HpcPlacementGroup"}
    assert source_template()["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "HpcSubnetId"}, ""]}]}
    assert given == [{"Ref": "HpcSubnetId"}] and default == [{"Fn::Select": [0, {"Ref": "SubnetIds"}]}]


def test_the_jobs_role_reads_the_pinned_upload_and_writes_only_results_and_checkpoints():
    # GIVEN where the control plane tells a job to read and write, and the job role's grants by object prefix
    run, bucket = "run-1", "bucket"
    upload = f"{INGEST_PREFIX}data.csv"
    written = [stage_output_uri(bucket, run, "hpc"), checkpoint_uri(bucket, run, "hpc")]
    statements = _resources("AWS::IAM::Role")["JobRole"]["Policies"][0]["PolicyDocument"]["Statement"]
    grants = _object_grants(statements)

    def granted(key: str) -> set[str]:
        return set(_granted_on(grants, key))

    # THEN a job reads the upload's pinned version (GetObject with a VersionId is s3:GetObjectVersion) and may not
    # change it, and writes and deletes results and checkpoints
    assert {"s3:GetObject", "s3:GetObjectVersion"} <= granted(upload)
    assert not granted(upload) & {"s3:PutObject", "s3:DeleteObject"}
    for uri in written:
        key = uri.removeprefix(f"s3://{bucket}/") + "part/object"
        assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= granted(key), key


def test_multinode_jobs_go_to_an_on_demand_queue_and_containers_can_read_the_spot_notice():
    environments = _resources("AWS::Batch::ComputeEnvironment")
    queues = _resources("AWS::Batch::JobQueue")
    hpc_environments = [o["ComputeEnvironment"]["Ref"] for o in queues["HpcJobQueue"]["ComputeEnvironmentOrder"]]
    # THEN the multi-node queue draws on no Spot environment, and the Spot one allocates by price and capacity
    assert all(environments[e]["ComputeResources"]["Type"] == "EC2" for e in hpc_environments)
    spot = environments["SpotComputeEnvironment"]["ComputeResources"]
    assert spot["Type"] == "SPOT" and spot["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    # AND every environment launches its instances with IMDSv2 reachable from a container (one hop more than the
    # host): the job runtime reads spot/instance-action there, with a session token
    templates = _resources("AWS::EC2::LaunchTemplate")
    for name, environment in environments.items():
        launch = environment["ComputeResources"]["LaunchTemplate"]
        options = templates[launch["LaunchTemplateId"]["Ref"]]["LaunchTemplateData"]["MetadataOptions"]
        assert options["HttpEndpoint"] == "enabled" and options["HttpTokens"] == "required", name
        assert options["HttpPutResponseHopLimit"] >= 2, name


def test_each_hpc_node_asks_for_the_vcpus_the_intake_counts_against_the_hpc_environment():
    # GIVEN the multi-node HPC job definition and its environment
    definition = _resources("AWS::Batch::JobDefinition")["HpcJobDefinition"]
    environment = _resources("AWS::Batch::ComputeEnvironment")["HpcComputeEnvironment"]["ComputeResources"]
    env = source_template()["Globals"]["Function"]["Environment"]["Variables"]
    # WHEN / THEN every node asks for the vCPUs the intake counts per node, and the intake is told the environment's
    # ceiling (a run asking for more nodes than fit is refused at upload, not left RUNNABLE)
    for node_range in definition["NodeProperties"]["NodeRangeProperties"]:
        requirements = {r["Type"]: r["Value"] for r in node_range["Container"]["ResourceRequirements"]}
        assert int(requirements["VCPU"]) == HPC_NODE_VCPUS
    assert environment["MaxvCpus"] == {"Ref": "HpcMaxVcpus"} and env["HPC_MAX_VCPUS"] == {"Ref": "HpcMaxVcpus"}


def test_the_hpc_job_definitions_main_node_is_the_one_the_control_plane_takes_for_it():
    # GIVEN the multi-node HPC job definition
    definition = _resources("AWS::Batch::JobDefinition")["HpcJobDefinition"]
    # WHEN / THEN its main node is the one whose end the control plane leaves to the job's own (a child's failure
    # ends the job at once)
    assert definition["NodeProperties"]["MainNode"] == MAIN_NODE_INDEX


def test_instances_give_a_terminated_job_two_minutes_to_checkpoint_before_the_sigkill():
    # GIVEN the launch template every compute environment takes
    (launch,) = _resources("AWS::EC2::LaunchTemplate").values()
    # WHEN its user data is read as Batch reads it (a MIME multi-part archive; anything else fails the launch)
    archive = email.message_from_string(launch["LaunchTemplateData"]["UserData"]["Fn::Base64"])
    scripts = [part.get_payload() for part in archive.walk() if part.get_content_type() == "text/x-shellscript"]
    # THEN its one script sets the ECS agent's stop timeout to the two minutes a Spot notice gives (30 s unset: a
    # job's step may take longer, and TerminateJob's SIGKILL would then end it before its checkpoint is written)
    assert archive.is_multipart() and len(scripts) == 1
    assert scripts[0].startswith("#!/bin/bash\n")
    assert "echo ECS_CONTAINER_STOP_TIMEOUT=120s >> /etc/ecs/ecs.config" in scripts[0].splitlines()


def test_compute_environments_are_updated_in_place_so_updates_keep_their_jobs():
    environments = _resources("AWS::Batch::ComputeEnvironment")
    # THEN no environment names a service role and none asks to be replaced: together they let CloudFormation update
    # an environment's launch template or instance types in place instead of replacing it under running jobs
    assert environments
    assert all("ServiceRole" not in properties for properties in environments.values())
    assert all(properties.get("ReplaceComputeEnvironment") is False for properties in environments.values())


def test_an_in_place_update_waits_for_running_jobs_as_long_as_batch_allows():
    # GIVEN the compute environments, whose attempts may run for many hours (the job definitions allow 48)
    environments = _resources("AWS::Batch::ComputeEnvironment")
    longest_minutes = max(
        d["Timeout"]["AttemptDurationSeconds"] / 60 for d in _resources("AWS::Batch::JobDefinition").values()
    )
    assert environments and longest_minutes > BATCH_MAX_UPDATE_WAIT_MINUTES
    for name, environment in environments.items():
        policy = environment.get("UpdatePolicy", {})
        # THEN an infrastructure update (a new launch template or instance types) neither ends jobs at once nor after
        # Batch's default 30 minutes: it waits as long as Batch allows before replacing their instances
        assert policy.get("TerminateJobsOnUpdate", False) is False, name
        assert policy.get("JobExecutionTimeoutMinutes", 30) == BATCH_MAX_UPDATE_WAIT_MINUTES, name


def test_compute_environments_launch_amazon_linux_2023_not_the_unsupported_al2_images():
    environments = _resources("AWS::Batch::ComputeEnvironment")
    # THEN every environment names its images (Batch's default for an environment made before 2026 is AL2): AL2023,
    # and AL2023's NVIDIA image for GPU instance types
    assert environments
    for name, environment in environments.items():
        images = [entry["ImageType"] for entry in environment["ComputeResources"].get("Ec2Configuration", [])]
        assert images == ["ECS_AL2023", "ECS_AL2023_NVIDIA"], name


# ------------------------------------------------------------------ sam build / deploy defaults
def test_builds_are_not_cached_while_the_layer_takes_files_from_outside_its_folder():
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    makefile = (REPO / "layers" / "shared" / "Makefile").read_text()
    # GIVEN a layer whose build copies the job runtime from outside its ContentUri (the SAM CLI hashes only that
    # folder to decide whether a cached build is still good)
    assert "jobs/runtime" in makefile
    # THEN no environment builds from the cache, which would deploy a stale checkpoint protocol
    for environment, commands in config.items():
        if isinstance(commands, dict) and "build" in commands:
            assert commands["build"]["parameters"].get("cached") is not True, environment


def test_the_layer_claims_only_the_runtime_its_binary_wheels_are_built_for():
    # GIVEN the functions' runtime, the layer's declared runtimes, and the Python its build fetches wheels for
    runtime = source_template()["Globals"]["Function"]["Runtime"]
    layer = source_template()["Resources"]["ControlPlaneLayer"]["Properties"]
    built_for = re.search(r"--python-version (\d+\.\d+)", (REPO / "layers" / "shared" / "Makefile").read_text())
    # THEN the layer claims that one runtime, the functions': numpy's wheels for one Python import on no other
    assert built_for is not None and runtime == f"python{built_for.group(1)}"
    assert layer["CompatibleRuntimes"] == [runtime]


# ------------------------------------------------------------------ notifications
def test_only_the_guard_takes_parked_notices_and_only_from_the_notifications_dead_letter_queue(translated):
    queue = {"Fn::GetAtt": ["NotificationsDeadLetterQueue", "QueueName"]}
    for function in HANDLER_CALLS:
        for action in sorted(PARKED_NOTICES):
            # GIVEN the resources of the function's grants of the action
            granted = resources_for(translated, function, action)
            # THEN only the guard has it, on that queue alone (the events dead-letter queue is the operators')
            if function != "SlaGuardFunction":
                assert granted == [], (function, action)
                continue
            assert granted and all(r["Fn::Sub"][1] == {"queueName": queue} for r in granted), granted


def test_parked_notices_outlive_an_outage_and_are_hidden_while_a_guard_pass_holds_them():
    from spot_hpc.notifier import REDELIVERY_VISIBILITY_SECONDS

    resources = source_template()["Resources"]
    # GIVEN the notifications dead-letter queue and the guard that sends its notices again
    queue = resources["NotificationsDeadLetterQueue"]["Properties"]
    guard_timeout = resources["SlaGuardFunction"]["Properties"]["Timeout"]
    # THEN a parked notice is kept 14 days (SQS's longest), and one a pass took is not taken by another pass
    # while the taking one may still run
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert guard_timeout <= REDELIVERY_VISIBILITY_SECONDS


def test_a_notification_claim_outlasts_every_function_so_only_a_dead_handlers_claim_is_taken_over():
    from spot_hpc.ledger import NOTIFICATION_LEASE

    template = source_template()
    default = template["Globals"]["Function"]["Timeout"]
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    # GIVEN the timeout of every function (any of them may notify)
    timeouts = [int(f["Properties"].get("Timeout", default)) for f in functions]
    # THEN a claim's lease is longer than each: a handler still sending never loses its claim
    assert functions and max(timeouts) < NOTIFICATION_LEASE.total_seconds()


# ------------------------------------------------------------------ what outlives the stack
def test_uploads_and_the_ledger_outlive_the_stack_and_function_logs_expire(translated):
    resources = source_template()["Resources"]
    # THEN deleting or replacing the stack keeps the uploads and every run's history
    for name in ("IngestBucket", "Ledger"):
        assert resources[name].get("DeletionPolicy") == "Retain", name
        assert resources[name].get("UpdateReplacePolicy") == "Retain", name
    # AND every function logs to the stack's group, whose events expire
    functions = {k: v["Properties"] for k, v in translated["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert functions
    for name, function in functions.items():
        assert function["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}, name
    assert resources["FunctionLogGroup"]["Properties"]["RetentionInDays"] == 90


def test_every_jobs_output_goes_to_a_log_group_of_the_stack_whose_events_expire():
    resources = source_template()["Resources"]
    # GIVEN the job definitions' containers (a multi-node one's in each node range)
    containers = _job_containers()
    assert len(containers) == 4
    # WHEN their log configuration is read as Batch reads it
    groups = {name: container.get("LogConfiguration", {}) for name, container in containers.items()}
    # THEN each sends its output to the stack's job log group with a prefix of its own (left unset, Batch sends it to
    # /aws/batch/job, a group no stack owns and whose events CloudWatch Logs keeps forever)
    for name, config in groups.items():
        assert config.get("LogDriver") == "awslogs", name
        assert config["Options"]["awslogs-group"] == {"Ref": "JobLogGroup"}, name
    prefixes = [config["Options"]["awslogs-stream-prefix"] for config in groups.values()]
    assert len(set(prefixes)) == len(prefixes)
    # AND that group's events expire, as the functions' do
    assert resources["JobLogGroup"]["Type"] == "AWS::Logs::LogGroup"
    assert resources["JobLogGroup"]["Properties"]["RetentionInDays"] == 90


def test_every_log_group_keeps_90_days_under_the_name_the_readme_gives():
    # GIVEN the stack's log groups and the README
    groups = _resources("AWS::Logs::LogGroup")
    readme = (REPO / "README.md").read_text()
    # THEN each keeps its events 90 days, as the README says, under the name it gives (the stack's name as <stack>)
    assert len(groups) == 3
    for name, group in groups.items():
        assert group["RetentionInDays"] == 90, name
        shown = group["LogGroupName"]["Fn::Sub"].replace("${AWS::StackName}", "<stack>")
        assert f"`{shown}`" in readme, name
    assert "Logs are kept 90 days" in readme


# ------------------------------------------------------------------ metrics, alarms and the dashboard
def _custom_metric_services(resources: dict[str, Any]) -> dict[str, Any]:
    """The `service` dimension of every SpotHpc metric the stack's alarms and dashboard watch, by where it is."""
    services: dict[str, Any] = {}
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::CloudWatch::Alarm" and properties.get("Namespace") == "SpotHpc":
            dimensions = {d["Name"]: d["Value"] for d in properties["Dimensions"]}
            services[name] = dimensions["service"]
        if resource["Type"] == "AWS::CloudWatch::Dashboard":
            body = json.loads(properties["DashboardBody"]["Fn::Sub"])
            for widget in body["widgets"]:
                title = widget["properties"]["title"]
                for index, metric in enumerate(widget["properties"].get("metrics", [])):
                    if metric[0] == "SpotHpc":
                        services[f"{name}:{title}[{index}]"] = metric[metric.index("service") + 1]
    return services


def test_each_stacks_alarms_and_dashboard_watch_its_own_runs_not_another_stacks(monkeypatch):
    from spot_hpc.metrics import new_metrics

    template = source_template()
    # GIVEN stacks of this template in one account and region (samconfig.toml has a default and a prod one), whose
    # functions all publish to the SpotHpc namespace
    services = {json.dumps(_environment(template, f)["POWERTOOLS_SERVICE_NAME"]) for f in HANDLER_CALLS}
    watched = _custom_metric_services(template["Resources"])
    # THEN each stack's functions publish under a service dimension of their own, the stack's name
    assert services == {json.dumps({"Ref": "AWS::StackName"})}
    # AND its alarms and dashboard watch that one (a missed deadline of the other stack would raise this one's alarm)
    assert watched and all(v in ({"Ref": "AWS::StackName"}, "${AWS::StackName}") for v in watched.values()), watched
    # AND the metrics are published under the service the function's environment names
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "spot-hpc-prod")
    metrics = new_metrics()
    assert metrics.service == "spot-hpc-prod"
