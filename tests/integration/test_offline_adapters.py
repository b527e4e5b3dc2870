"""Each gap the offline runtime fills over moto, tested on its own (spotctl/offline/adapters.py, eventbus.py,
batch_emulator.py)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from offline_runs import submit_probe
from spot_checkpoint.store import CheckpointStore

from spotctl.offline import adapters
from spotctl.offline.eventbus import (
    EventBus,
    RejectedEntry,
    check_entry,
    check_entry_size,
    make_event,
    schedule_period,
)
from spotctl.offline.runtime import OfflineControlPlane

pytestmark = pytest.mark.integration
REGION = "us-east-1"


# ------------------------------------------------------------------ template adapters (pure)
def test_definition_substitutions_become_a_sub_that_keeps_the_context_prefix():
    # GIVEN a translated state machine with substitutions and a $$ context path
    template = {
        "Resources": {
            "Machine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "DefinitionString": {"Fn::Join": ["\n", ['{"Resource": "${Fn}",', '"Token.$": "$$.Task.Token"}']]},
                    "DefinitionSubstitutions": {"Fn": {"Fn::GetAtt": ["Function", "Arn"]}},
                },
            }
        }
    }
    # WHEN the adapter rewrites it
    adapters.apply_definition_substitutions(template)
    # THEN it is one Fn::Sub with the variable map, and "$$" is parked out of string.Template's reach
    props = template["Resources"]["Machine"]["Properties"]
    body, variables = props["DefinitionString"]["Fn::Sub"]
    assert "DefinitionSubstitutions" not in props
    assert variables == {"Fn": {"Fn::GetAtt": ["Function", "Arn"]}}
    assert "$$" not in body and adapters.CONTEXT_PREFIX_PLACEHOLDER + ".Task.Token" in body


def test_list_parameters_are_inlined_as_lists():
    # GIVEN a CommaDelimitedList parameter referenced by a resource and an output
    template = {
        "Parameters": {"Types": {"Type": "CommaDelimitedList", "Default": "a,b"}},
        "Resources": {"R": {"Properties": {"InstanceTypes": {"Ref": "Types"}}}},
        "Outputs": {"O": {"Value": {"Fn::Select": [0, {"Ref": "Types"}]}}},
    }
    # WHEN inlined with an override
    adapters.inline_list_parameters(template, {"Types": "c6i.large, m6i.large"})
    # THEN every Ref is the list, as CloudFormation resolves it
    assert template["Resources"]["R"]["Properties"]["InstanceTypes"] == ["c6i.large", "m6i.large"]
    assert template["Outputs"]["O"]["Value"]["Fn::Select"][1] == ["c6i.large", "m6i.large"]


def test_compute_environments_without_a_service_role_get_a_stand_in_role():
    # GIVEN one compute environment on Batch's service-linked role and one with a role of its own
    template = {
        "Resources": {
            "Linked": {"Type": "AWS::Batch::ComputeEnvironment", "Properties": {"Type": "MANAGED"}},
            "Own": {"Type": "AWS::Batch::ComputeEnvironment", "Properties": {"ServiceRole": "arn:role/own"}},
        }
    }
    # WHEN it is adapted for moto, which requires a role
    adapters.add_batch_service_role(template)
    # THEN only the first gets the stand-in, which Batch may assume
    resources = template["Resources"]
    assert resources["Linked"]["Properties"]["ServiceRole"] == {
        "Fn::GetAtt": [adapters.BATCH_SERVICE_ROLE_STAND_IN, "Arn"]
    }
    assert resources["Own"]["Properties"]["ServiceRole"] == "arn:role/own"
    trust = resources[adapters.BATCH_SERVICE_ROLE_STAND_IN]["Properties"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "batch.amazonaws.com"}


def test_unemulated_resources_are_removed_listed_and_unreferenced():
    # GIVEN a placement group referenced by a compute environment that also depends on a bucket policy
    template = {
        "Resources": {
            "Group": {"Type": "AWS::EC2::PlacementGroup", "Properties": {}},
            "Policy": {"Type": "AWS::S3::BucketPolicy", "Properties": {}},
            "Env": {
                "Type": "AWS::Batch::ComputeEnvironment",
                "DependsOn": ["Policy"],
                "Properties": {"ComputeResources": {"PlacementGroup": {"Ref": "Group"}}},
            },
        }
    }
    # WHEN the adapter drops what moto cannot create
    dropped = adapters.drop_unemulated_resources(template)
    # THEN both are listed with a reason and nothing points at them any more
    assert {d["logical_id"] for d in dropped} == {"Group", "Policy"} and all(d["reason"] for d in dropped)
    env = template["Resources"]["Env"]
    assert env["DependsOn"] == []
    assert env["Properties"]["ComputeResources"]["PlacementGroup"] == "spot-hpc-offline-placement-group"


# ------------------------------------------------------------------ the Lambda adapter
def _function(tmp_path: Path, body: str) -> adapters.LocalFunction:
    (tmp_path / "app.py").write_text(body)
    return adapters.LocalFunction(logical_id="Probe", code_dir=tmp_path)


def test_handler_runs_under_its_own_environment_with_string_values(tmp_path, monkeypatch):
    # GIVEN a handler that reports an environment variable, and no such variable in this process
    monkeypatch.delenv("PROBE_VALUE", raising=False)
    local = _function(
        tmp_path,
        "import os\ndef handler(event, context):\n"
        "    return {'value': os.environ['PROBE_VALUE'], 'name': context.function_name}\n",
    )
    # WHEN it runs with a numeric value, as moto's CloudFormation leaves resolved Number parameters
    result, errored = adapters.run_local_function(
        local, "probe", "arn:aws:lambda:::function:probe", "app.handler", {"PROBE_VALUE": 25}, {}
    )  # type: ignore[dict-item]
    # THEN it saw the string, and the process environment is as it was
    assert (result, errored) == ({"value": "25", "name": "probe"}, False)
    assert "PROBE_VALUE" not in os.environ
    assert local.invocations == 1


def test_a_running_function_s_environment_is_invisible_to_other_threads(tmp_path, monkeypatch):
    # GIVEN a handler that pauses while it runs (as the stage runner runs on a Step Functions thread)
    monkeypatch.delenv("PROBE_VALUE", raising=False)
    monkeypatch.setenv("PROCESS_ONLY", "kept")
    inside, release = threading.Event(), threading.Event()
    local = _function(
        tmp_path,
        "import os\ndef handler(event, context):\n"
        "    event['inside'].set()\n"
        "    event['release'].wait(5)\n"
        "    return {'value': os.environ['PROBE_VALUE'], 'process': os.environ.get('PROCESS_ONLY')}\n",
    )
    outcome: list[tuple[object, bool]] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            adapters.run_local_function(
                local, "probe", "arn", "app.handler", {"PROBE_VALUE": "fn"}, {"inside": inside, "release": release}
            )
        )
    )
    worker.start()
    assert inside.wait(5)
    # WHEN this thread reads the whole environment while the function runs
    seen_here = dict(os.environ)
    release.set()
    worker.join(5)
    # THEN this thread saw the process environment only, and the function saw its own over the process's
    assert "PROBE_VALUE" not in seen_here
    assert seen_here["PROCESS_ONLY"] == "kept"
    assert outcome == [({"value": "fn", "process": "kept"}, False)]


def test_handler_exception_becomes_a_lambda_error_payload(tmp_path):
    # GIVEN a handler that raises
    local = _function(tmp_path, "def handler(event, context):\n    raise ValueError('bad input')\n")
    # WHEN it runs
    result, errored = adapters.run_local_function(local, "probe", "arn", "app.handler", {}, {})
    # THEN the caller gets Lambda's error shape, and the error is kept for the report
    assert errored and result["errorType"] == "ValueError" and result["errorMessage"] == "bad input"
    assert local.errors == ["ValueError: bad input"]
    assert not adapters.invocation_in_progress()


# ------------------------------------------------------------------ EventBridge schedules (pure)
def test_schedule_rates_are_parsed_and_cron_is_refused():
    assert schedule_period("rate(5 minutes)") == timedelta(minutes=5)
    assert schedule_period("rate(1 hour)") == timedelta(hours=1)
    with pytest.raises(ValueError, match="only rate"):
        schedule_period("cron(0 12 * * ? *)")


@pytest.mark.parametrize("expression", ["rate(0 minutes)", "rate(1 minutes)", "rate(5 minute)", "rate(2 hour)"])
def test_a_rate_eventbridge_refuses_is_refused(expression):
    # GIVEN / WHEN / THEN a rate of nothing (which would fire forever), or a unit whose number does not agree with it
    with pytest.raises(ValueError, match="not a rate EventBridge takes"):
        schedule_period(expression)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"source": 5}, "InvalidArgument", "Parameter Source is not valid. Reason: Source must be a non-empty string"),
        ({"source": ""}, "InvalidArgument", 'Source must be a non-empty string, not "".'),
        ({"detail-type": None}, "InvalidArgument", "Parameter DetailType is not valid. Reason: DetailType must be"),
        ({"detail": "{}"}, "MalformedDetail", "Detail is malformed: not a JSON object"),
        ({"detail": [1]}, "MalformedDetail", "Detail is malformed: not a JSON object"),
        ({"resources": "arn:aws:s3:::b"}, "InvalidArgument", "Resources must be a list of strings"),
        ({"resources": [1]}, "InvalidArgument", "Resources must be a list of strings"),
    ],
)
def test_an_entry_putevents_refuses_is_refused_with_its_error_code(change, code, message):
    # GIVEN an event with one of PutEvents' entry fields of a type PutEvents refuses
    entry = {**make_event("aws.ec2", "Probe", {"n": 1}), **change}
    # WHEN / THEN it is refused with the failed entry's ErrorCode and an ErrorMessage naming the field
    with pytest.raises(RejectedEntry) as refused:
        check_entry(entry)
    assert refused.value.code == code and message in refused.value.message


@pytest.mark.parametrize(("field", "name"), [("source", "Source"), ("detail-type", "DetailType"), ("detail", "Detail")])
def test_an_entry_without_source_detail_type_or_detail_is_refused_as_putevents_refuses_it(field, name):
    # GIVEN an event without one of the three fields PutEvents requires of an entry
    entry = make_event("aws.ec2", "Probe", {"n": 1})
    del entry[field]
    # WHEN / THEN it is refused with the failed entry PutEvents answers: InvalidArgument, naming the field
    with pytest.raises(RejectedEntry) as refused:
        check_entry(entry)
    assert refused.value.code == "InvalidArgument"
    assert refused.value.message == f"Parameter {name} is not valid. Reason: {name} is a required argument."


def test_an_event_of_putevents_shape_is_taken_whatever_it_leaves_out():
    # GIVEN / WHEN / THEN an event with its fields of the right types, and one with only source, detail-type and detail
    check_entry(make_event("aws.ec2", "Probe", {"n": 1}, ["arn:aws:ec2:us-east-1:123456789012:instance/i-1"]))
    check_entry({"source": "aws.ec2", "detail-type": "Probe", "detail": {}})


def test_an_entry_is_taken_up_to_putevents_size_limit_and_refused_over_it():
    # GIVEN entries sized as EventBridge counts them (Time 14 bytes; Source, DetailType, Detail's JSON text and each
    # resource in UTF-8 bytes): one of exactly 256 KB, and one a byte over
    fixed = 14 + len("aws.ec2") + len("Probe") + len('{"b":""}') + len("r")
    at_limit = {**make_event("aws.ec2", "Probe", {"b": "x" * (256 * 1024 - fixed)}), "resources": ["r"]}
    over = {**at_limit, "resources": ["r", "s"]}
    # WHEN / THEN the first is taken, the second refused with its size
    check_entry_size(at_limit)
    with pytest.raises(ValueError, match="262,145 bytes, over the 262,144"):
        check_entry_size(over)


# ------------------------------------------------------------------ against the embedded AWS
@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    # A trace with capacity for 30 minutes, then none: a Spot job there is reclaimed.
    trace = tmp_path_factory.mktemp("trace") / "drop.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1, 1, 1] + [0] * 200}))
    with OfflineControlPlane(trace=trace) as running:
        yield running


def test_event_matching_no_rule_is_delivered_nowhere(plane):
    # GIVEN an event no rule of the template matches
    event = make_event("aws.ec2", "EC2 Instance State-change Notification", {"state": "running"})
    # WHEN / THEN nothing is delivered
    assert plane.put_event(event) == []


@contextmanager
def _rule_with_a_failing_target(plane: OfflineControlPlane, rule: str, source: str) -> Iterator[tuple[str, Any]]:
    """A rule for `source` whose target function does not exist, dead-lettering to the stack's events queue, for the
    time of the block: (that queue's URL, an SQS client)."""
    events, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
    dlq_url = plane.stack.physical_id("EventsDeadLetterQueue")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": [source]}))
    missing = {"Id": "missing", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:missing"}
    events.put_targets(Rule=rule, Targets=[{**missing, "DeadLetterConfig": {"Arn": dlq_arn}}])
    try:
        yield dlq_url, sqs
    finally:
        events.remove_targets(Rule=rule, Ids=["missing"])
        events.delete_rule(Name=rule)


def test_target_that_fails_sends_the_event_to_its_dead_letter_queue(plane):
    # GIVEN a rule whose target function does not exist, with the stack's dead-letter queue
    with _rule_with_a_failing_target(plane, "probe-rule", "probe.source") as (dlq_url, sqs):
        # WHEN a matching event is put
        deliveries = plane.put_event(make_event("probe.source", "Probe", {"n": 1}))
        message = sqs.receive_message(QueueUrl=dlq_url, MessageAttributeNames=["All"])["Messages"][0]
    # THEN the delivery is an error and the event waits in the dead-letter queue with the error
    assert [d.status for d in deliveries] == ["error"]
    assert json.loads(message["Body"])["source"] == "probe.source"
    assert message["MessageAttributes"]["ERROR_MESSAGE"]["StringValue"]


def test_an_entry_putevents_refuses_reaches_no_rule(plane):
    # GIVEN a rule for a source whose target fails, so that an event it took would wait in the dead-letter queue
    with _rule_with_a_failing_target(plane, "refused-rule", "refused.source") as (dlq_url, sqs):
        # WHEN an event of that source whose detail is JSON text, not an object, is put
        with pytest.raises(RejectedEntry, match="MalformedDetail"):
            plane.put_event({"source": "refused.source", "detail-type": "Probe", "detail": '{"n": 1}'})
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10).get("Messages", [])
    # THEN no target was handed it
    assert not [m for m in messages if json.loads(m["Body"])["source"] == "refused.source"]


def test_event_put_with_only_source_and_detail_type_is_completed_as_eventbridge_does(plane):
    # GIVEN a rule whose target fails, so that the event its target was handed waits in the dead-letter queue
    with _rule_with_a_failing_target(plane, "bare-rule", "bare.source") as (dlq_url, sqs):
        # WHEN an event with no id, time, account, region or version is put, with a detail of its own
        deliveries = plane.put_event({"source": "bare.source", "detail-type": "Bare", "detail": {"n": 2}})
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    # THEN it is delivered with the id PutEvents would have assigned, and the target got a whole event
    assert [d.status for d in deliveries] == ["error"]
    delivered = next(e for e in map(json.loads, (m["Body"] for m in messages)) if e["source"] == "bare.source")
    assert delivered["id"] == deliveries[0].event_id and delivered["id"]
    assert delivered["time"] and delivered["version"] == "0"
    assert (delivered["account"], delivered["region"]) == ("123456789012", REGION)
    # AND what the caller gave is kept
    assert (delivered["detail-type"], delivered["detail"]) == ("Bare", {"n": 2})


@pytest.mark.parametrize("given_id", [5, None, "", {"id": "x"}])
def test_event_put_with_an_id_that_is_not_one_gets_an_id_as_eventbridge_gives_it(plane, given_id):
    # GIVEN a rule whose target fails, so that the event its target was handed waits in the dead-letter queue
    with _rule_with_a_failing_target(plane, "id-rule", "id.source") as (dlq_url, sqs):
        # WHEN an event whose id is no event id (not a non-empty string) is put
        deliveries = plane.put_event({"id": given_id, "source": "id.source", "detail-type": "Id", "detail": {}})
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    # THEN the delivery names it by an id of EventBridge's own, a string (the `event_id` of put-events' --json), and
    # the target got the event with that id
    assert [d.status for d in deliveries] == ["error"]
    event_id = deliveries[0].event_id
    assert isinstance(event_id, str) and event_id
    assert any(json.loads(m["Body"])["id"] == event_id for m in messages)


def test_scheduled_rule_fires_once_per_period(plane):
    # GIVEN the SLA guard's rate(5 minutes) rule
    now = plane.clock.now()
    plane.bus.fire_due_schedules(now)  # arms the schedule
    # WHEN five minutes pass, then no time at all
    fired = plane.bus.fire_due_schedules(now + timedelta(minutes=5))
    again = plane.bus.fire_due_schedules(now + timedelta(minutes=5))
    # THEN the guard ran once
    assert len(fired) == 1 and "SlaGuard" in fired[0].rule
    assert again == []


def test_a_rule_on_a_cron_schedule_is_not_emulated_and_stops_no_other_schedule(plane):
    # GIVEN a rule on a cron schedule, which AWS takes and the offline bus does not emulate, with a target
    events = boto3.client("events", region_name=REGION)
    events.put_rule(Name="nightly-rule", ScheduleExpression="cron(0 2 * * ? *)")
    missing = {"Id": "missing", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:missing"}
    events.put_targets(Rule="nightly-rule", Targets=[missing])
    bus = EventBus()  # schedules armed afresh
    now = plane.clock.now()
    try:
        # WHEN the schedules are armed, then five minutes pass
        armed = bus.fire_due_schedules(now)
        fired = bus.fire_due_schedules(now + timedelta(minutes=5))
    finally:
        events.remove_targets(Rule="nightly-rule", Ids=["missing"])
        events.delete_rule(Name="nightly-rule")
    # THEN the cron rule fires nothing, and the SLA guard's rate(5 minutes) rule still runs on the virtual clock
    assert armed == []
    assert [d.rule for d in fired if "nightly" in d.rule] == []
    assert len(fired) == 1 and "SlaGuard" in fired[0].rule


def test_multinode_job_on_a_spot_queue_is_refused(plane):
    # GIVEN the multi-node HPC job definition and the Spot queue
    batch = boto3.client("batch", region_name=REGION)
    # WHEN it is submitted there / THEN Batch's own rule is enforced
    with pytest.raises(ClientError, match="Spot"):
        batch.submit_job(
            jobName="probe-mnp",
            jobQueue=plane.stack.physical_id("SpotJobQueue"),
            jobDefinition=plane.stack.physical_id("HpcJobDefinition"),
        )


def test_multinode_job_tells_each_node_s_instance_of_the_node_only(plane):
    # GIVEN a 2-node job of the multi-node HPC definition on the HPC queue, outside any pipeline
    batch = boto3.client("batch", region_name=REGION)
    job_id = submit_probe(plane, "probe-mnp-nodes", "HpcJobQueue", "HpcJobDefinition", nodeOverrides={"numNodes": 2})
    # WHEN it runs
    for _ in range(10):
        if batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING":
            break
        plane.step()
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    nodes = batch.describe_jobs(jobs=[f"{job_id}#0", f"{job_id}#1", f"{job_id}#2", f"{job_id}#²"])["jobs"]
    # THEN the job names no container instance, as in AWS Batch; each of its two nodes (no third, and no node "²")
    # names its own, on an On-Demand instance of its own
    assert job["status"] == "RUNNING" and job["nodeProperties"]["numNodes"] == 2
    assert "containerInstanceArn" not in job["container"]
    assert [(n["jobId"], n["nodeDetails"]["nodeIndex"], n["status"]) for n in nodes] == [
        (f"{job_id}#0", 0, "RUNNING"),
        (f"{job_id}#1", 1, "RUNNING"),
    ]
    arns = [node["container"]["containerInstanceArn"] for node in nodes]
    ecs = boto3.client("ecs", region_name=REGION)
    described = ecs.describe_container_instances(cluster="spot-hpc-on-demand", containerInstances=arns)
    instance_ids = {ci["ec2InstanceId"] for ci in described["containerInstances"]}
    instances = boto3.client("ec2", region_name=REGION).describe_instances(InstanceIds=sorted(instance_ids))
    assert len(instance_ids) == 2
    assert all("InstanceLifecycle" not in i for r in instances["Reservations"] for i in r["Instances"])


def test_spot_job_is_warned_then_reclaimed_when_the_trace_drops(plane):
    # GIVEN a container job on the Spot queue, outside any pipeline (the control plane ignores it)
    batch = boto3.client("batch", region_name=REGION)
    job_id = submit_probe(plane, "probe-spot", "SpotJobQueue", "PreprocessJobDefinition")
    # WHEN virtual time passes the trace's drop at 30 minutes
    for _ in range(40):
        plane.step()
    # THEN the job ran on a Spot instance, was warned two minutes ahead, and failed as Batch reports a reclaim
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED"
    assert job["statusReason"].startswith("Host EC2 (instance i-") and job["statusReason"].endswith("terminated.")
    timeline = [line for _, line in plane.batch.timeline]
    assert any("Spot interruption notice" in line for line in timeline)
    instance_id = plane.batch.jobs[job_id].instance_id
    instances = boto3.client("ec2", region_name=REGION).describe_instances(InstanceIds=[instance_id])
    instance = instances["Reservations"][0]["Instances"][0]
    assert instance["InstanceLifecycle"] == "spot"
    # AND EC2 describes the instance as it does one it took back
    assert (instance["State"]["Name"], instance["StateReason"]["Code"]) == (
        "terminated",
        "Server.SpotInstanceTermination",
    )


@pytest.mark.parametrize(
    ("checkpoint_uri", "exit_code"),
    [("s3://{bucket}/checkpoints/probe-terminate/", 86), (None, 87)],
    ids=["with-a-checkpoint-store", "without"],
)
def test_a_running_job_terminated_stops_as_the_job_runtime_does_on_sigterm(plane, checkpoint_uri, exit_code):
    # GIVEN a container job running on On-Demand, outside any pipeline, with or without a checkpoint store
    batch = boto3.client("batch", region_name=REGION)
    environment = (
        [{"name": "CHECKPOINT_URI", "value": checkpoint_uri.format(bucket=plane.bucket)}] if checkpoint_uri else []
    )
    job_id = submit_probe(
        plane,
        f"probe-terminate-{exit_code}",
        "OnDemandJobQueue",
        "PreprocessJobDefinition",
        containerOverrides={"environment": environment},
    )
    for _ in range(15):
        plane.step()
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
    # WHEN it is terminated, as the control plane does on a requeue
    batch.terminate_job(jobId=job_id, reason="spot-hpc: requeued to On-Demand (probe)")
    plane.step()
    # THEN Batch's SIGTERM stopped it as the job runtime stops: exit 86 after writing a checkpoint, 87 with nowhere
    # to write one; the reason is the one given
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert (job["status"], job["statusReason"], job["container"]["exitCode"]) == (
        "FAILED",
        "spot-hpc: requeued to On-Demand (probe)",
        exit_code,
    )
    if checkpoint_uri:
        store = CheckpointStore(boto3.client("s3", region_name=REGION), checkpoint_uri.format(bucket=plane.bucket))
        latest = store.latest()
        assert latest is not None and latest.progress > 0


def test_a_job_running_past_its_attempt_timeout_is_ended_by_batch_and_not_retried(plane):
    # GIVEN a container job on On-Demand, outside any pipeline, whose work (an hour) outlasts the ten-minute attempt
    # timeout it is submitted with; its definition's retryStrategy gives it a second attempt
    batch = boto3.client("batch", region_name=REGION)
    checkpoint_uri = f"s3://{plane.bucket}/checkpoints/probe-timeout/"
    job_id = submit_probe(
        plane,
        "probe-timeout",
        "OnDemandJobQueue",
        "PreprocessJobDefinition",
        containerOverrides={"environment": [{"name": "CHECKPOINT_URI", "value": checkpoint_uri}]},
        timeout={"attemptDurationSeconds": 600},
    )
    # WHEN virtual time passes its start and ten minutes more
    for _ in range(20):
        plane.step()
    # THEN Batch ended the attempt as it ends one that timed out: SIGTERM, on which the job runtime checkpoints and
    # exits 86, the reason Batch gives a timeout, and no retry (Batch retries no attempt that timed out)
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert (job["status"], job["statusReason"], job["container"].get("exitCode")) == (
        "FAILED",
        "Job attempt duration exceeded timeout",
        86,
    )
    assert len(job["attempts"]) == 1
    assert job["stoppedAt"] - job["startedAt"] == 600 * 1000
    latest = CheckpointStore(boto3.client("s3", region_name=REGION), checkpoint_uri).latest()
    assert latest is not None and latest.progress > 0


@pytest.mark.parametrize(
    ("retry_strategy", "terminated", "attempts"),
    [
        ({"attempts": 2}, False, 2),
        ({"attempts": 2, "evaluateOnExit": [{"onExitCode": "1", "action": "EXIT"}]}, False, 2),
        ({"attempts": 2, "evaluateOnExit": [{"onExitCode": "3", "action": "EXIT"}]}, False, 1),
        ({"attempts": 2}, True, 1),
    ],
    ids=["no-rules", "no-rule-matches", "a-rule-exits", "terminated"],
)
def test_batch_retries_a_failed_attempt_as_the_submitted_retry_strategy_says(
    plane, monkeypatch, retry_strategy, terminated, attempts
):
    # GIVEN a container job on On-Demand, outside any pipeline, submitted with a retry strategy of its own in place of
    # its definition's; its workload exits 3 after its first step of work, or runs on until it is terminated
    stage = f"probe-retry-{len(plane.batch.jobs)}"
    if not terminated:
        monkeypatch.setitem(plane.batch.failing_stages, stage, 3)
    batch = boto3.client("batch", region_name=REGION)
    job_id = submit_probe(
        plane,
        stage,
        "OnDemandJobQueue",
        "PreprocessJobDefinition",
        containerOverrides={"environment": [{"name": "STAGE", "value": stage}]},
        retryStrategy=retry_strategy,
    )
    # WHEN it runs to its end, or is terminated once running
    for _ in range(20):
        if terminated and batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING":
            batch.terminate_job(jobId=job_id, reason="spot-hpc: probe terminated")
        plane.step()
    # THEN Batch retried it while attempts remained unless a rule said EXIT: a failure no rule matches is retried, a
    # terminated job never is
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert (job["status"], len(job["attempts"])) == ("FAILED", attempts)
    assert job["statusReason"] == ("spot-hpc: probe terminated" if terminated else "Essential container in task exited")


def test_send_task_failure_keeps_its_cause(plane):
    # GIVEN moto's Step Functions response layer, with the adapter the plane installs, over a recording backend
    from moto.stepfunctions.responses import StepFunctionResponse

    received: dict[str, object] = {}

    class RecordingBackend:
        def send_task_failure(self, token, error=None, cause=None):
            received.update(token=token, error=error, cause=cause)

    class Probe(StepFunctionResponse):
        stepfunction_backend = RecordingBackend()  # type: ignore[assignment]

        def _get_param(self, name, if_none=None):  # type: ignore[override]
            return {"taskToken": "t-1", "error": "StageFailed", "cause": "exit code 3"}.get(name, if_none)

    # WHEN SendTaskFailure arrives with a cause
    Probe.__new__(Probe).send_task_failure()
    # THEN the backend gets the cause too
    assert received == {"token": "t-1", "error": "StageFailed", "cause": "exit code 3"}


def _next_task_token(sqs, queue_url: str) -> str:
    for _ in range(400):  # Step Functions runs the execution on a thread of its own (up to 20 s under load)
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0).get("Messages", [])
        if messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
            return str(json.loads(messages[0]["Body"])["token"])
        time.sleep(0.05)
    raise AssertionError("the task never sent its token")


def _until_a_retry_waits(plane: OfflineControlPlane) -> None:
    """Returns once an execution waits for a retry on the virtual clock (it fails on a thread of its own)."""
    for _ in range(400):
        if plane.clock_waits.retries_due():
            return
        time.sleep(0.05)
    raise AssertionError("no execution waits for a retry")


def _callback_task(name: str, **task_fields: Any) -> tuple[Any, Any, str, str]:
    """A state machine of one waitForTaskToken task (with `task_fields`, a Retry or a TimeoutSeconds) that hands its
    token to a queue; (sqs, stepfunctions, queue URL, state machine ARN)."""
    sqs = boto3.client("sqs", region_name=REGION)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    task = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": queue_url, "MessageBody": {"token.$": "$$.Task.Token"}},
        "End": True,
        **task_fields,
    }
    machine = sfn.create_state_machine(
        name=name,
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": task}}),
        roleArn="arn:aws:iam::123456789012:role/probe",
    )["stateMachineArn"]
    return sqs, sfn, queue_url, machine


def _retried_once(after_seconds: int) -> list[dict[str, Any]]:
    """A retrier trying a task failed with "Probe" once more, `after_seconds` later."""
    return [{"ErrorEquals": ["Probe"], "MaxAttempts": 1, "IntervalSeconds": after_seconds}]


def test_each_retry_of_a_callback_task_gets_a_token_of_its_own(plane):
    # GIVEN a waitForTaskToken task that hands its token to a queue and is retried once when it fails
    sqs, sfn, queue_url, machine = _callback_task("task-token-probe", Retry=_retried_once(after_seconds=1))
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    # WHEN the first attempt is failed through its token, and the retry (a virtual second later) answered through its
    # own
    first = _next_task_token(sqs, queue_url)
    sfn.send_task_failure(taskToken=first, error="Probe", cause="first attempt")
    _until_a_retry_waits(plane)
    plane.step(minutes=1)
    second = _next_task_token(sqs, queue_url)
    sfn.send_task_success(taskToken=second, output="{}")
    for _ in range(400):
        status = sfn.describe_execution(executionArn=execution)["status"]
        if status != "RUNNING":
            break
        time.sleep(0.05)
    # THEN the retry had a token of its own, and answering it ended the execution
    assert first != second
    assert status == "SUCCEEDED"


def test_ingest_bucket_is_versioned_as_the_template_says(plane):
    # GIVEN the deployed ingest bucket (VersioningConfiguration: Enabled in the template)
    s3 = boto3.client("s3", region_name=REGION)
    # WHEN an object is put / THEN it gets a version id: one pipeline run per object version
    assert s3.get_bucket_versioning(Bucket=plane.bucket)["Status"] == "Enabled"
    assert s3.put_object(Bucket=plane.bucket, Key="incoming/v.csv", Body=b"a\n")["VersionId"] != "null"


def test_a_handler_s_context_tells_the_time_and_memory_its_function_was_given(plane, tmp_path):
    # GIVEN the SLA guard (Timeout 300, the global MemorySize 256) running a handler that reports its context
    probe = _function(
        tmp_path,
        "def lambda_handler(event, context):\n"
        "    return {'remaining_ms': context.get_remaining_time_in_millis(), 'memory': context.memory_limit_in_mb}\n",
    )
    guard = plane.stack.physical_id("SlaGuardFunction")
    real = plane.stack.functions[guard]
    plane.stack.functions[guard] = probe
    try:
        # WHEN it is invoked
        result, errored = plane.invoke("SlaGuardFunction", {})
    finally:
        plane.stack.functions[guard] = real
    # THEN its time left is its own function's timeout (less what the invocation took so far), as Lambda tells it
    assert not errored
    assert 295_000 < result["remaining_ms"] <= 300_000, result
    assert result["memory"] == 256


def test_a_retry_waits_its_interval_on_the_virtual_clock(plane):
    # GIVEN a waitForTaskToken task retried a minute after it fails (IntervalSeconds 60)
    sqs, sfn, queue_url, machine = _callback_task("retry-wait-probe", Retry=_retried_once(after_seconds=60))
    sfn.start_execution(stateMachineArn=machine)
    # WHEN its first attempt fails, and virtual time stands still for a while, then moves on a minute
    sfn.send_task_failure(taskToken=_next_task_token(sqs, queue_url), error="Probe", cause="first attempt")
    _until_a_retry_waits(plane)
    time.sleep(0.5)
    early = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0).get("Messages", [])
    plane.step(minutes=1)
    # THEN the retry came once the virtual minute had passed, and not before
    assert early == []
    assert _next_task_token(sqs, queue_url)


def test_a_state_times_out_on_the_virtual_clock(plane):
    # GIVEN a waitForTaskToken task that times out after 10 minutes, whose token is never answered
    sqs, sfn, queue_url, machine = _callback_task("timeout-probe", TimeoutSeconds=600)
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    assert _next_task_token(sqs, queue_url)
    # WHEN virtual time stands still for a while, then moves on ten minutes
    time.sleep(0.5)
    before = sfn.describe_execution(executionArn=execution)["status"]
    plane.step(minutes=10)
    # THEN the task timed out once the virtual ten minutes had passed, and not before
    assert before == "RUNNING"
    history = [event["type"] for event in plane.history(execution)]
    assert "TaskTimedOut" in history and sfn.describe_execution(executionArn=execution)["status"] == "FAILED"


def test_a_task_answered_before_its_timeout_is_not_timed_out_by_time_moved_on_after(plane, monkeypatch):
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    # GIVEN a waitForTaskToken task that times out after 10 minutes, whose execution's thread is slow to take an
    # answer (as on a loaded machine: moto hands the answer to that thread, which runs when it is scheduled)
    real_wait = CallbackEndpoint.wait

    def slow_to_take(self, timeout=None):
        outcome = real_wait(self, timeout)
        time.sleep(0.3)
        return outcome

    monkeypatch.setattr(CallbackEndpoint, "wait", slow_to_take)
    sqs, sfn, queue_url, machine = _callback_task("answered-probe", TimeoutSeconds=600)
    # (the plane settles this state machine's executions as it does the pipeline's)
    monkeypatch.setattr(plane, "executions", lambda: sfn.list_executions(stateMachineArn=machine)["executions"])
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    # WHEN it is answered, the plane settles, and virtual time moves on ten minutes
    sfn.send_task_success(taskToken=_next_task_token(sqs, queue_url), output="{}")
    plane.settle()
    plane.step(minutes=10)
    # THEN the task succeeded with its answer, given well before its timeout, as AWS records an answer when it is given
    history = [event["type"] for event in plane.history(execution)]
    assert "TaskTimedOut" not in history, history
    assert sfn.describe_execution(executionArn=execution)["status"] == "SUCCEEDED"


def test_a_task_tokens_own_wait_does_not_time_out_on_the_wall_clock(plane):
    # GIVEN a waitForTaskToken task that times out after 2 seconds, whose token is never answered
    sqs, sfn, queue_url, machine = _callback_task("short-timeout-probe", TimeoutSeconds=2)
    execution = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    assert _next_task_token(sqs, queue_url)
    # WHEN 3 real seconds pass, virtual time standing still
    time.sleep(3)
    # THEN the task is still waiting: its 2 seconds are virtual ones, as its state's are
    assert sfn.describe_execution(executionArn=execution)["status"] == "RUNNING"
    plane.step(minutes=1)
    assert "TaskTimedOut" in [event["type"] for event in plane.history(execution)]
