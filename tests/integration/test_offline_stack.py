"""The real template.yaml deployed into the embedded AWS: every resource comes from it."""

from __future__ import annotations

import json

import boto3
import pytest
from sample_events import load_event
from spot_hpc.guard import PASS_PERIOD
from spot_hpc.intake import NOT_THIS_STACKS_INSTANCE
from spot_hpc.metrics import FOREIGN_INSTANCE_SIGNALS, record_event_outcome

from spotctl.offline.adapters import CONTEXT_PREFIX_PLACEHOLDER
from spotctl.offline.runtime import OfflineControlPlane
from spotctl.offline.stack import TemplateError, load_template

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plane():
    with OfflineControlPlane() as running:
        yield running


def test_every_template_resource_is_deployed_or_listed_as_not_emulated(plane):
    # GIVEN the translated template and the stack created from it
    translated = set(plane.stack.translated["Resources"])
    deployed = set(plane.stack.resources)
    listed = {r["logical_id"] for r in plane.stack.not_emulated}
    # WHEN / THEN every resource of the translated template is in the stack, or listed with its reason
    assert translated <= deployed | listed
    assert listed and all(r["reason"] for r in plane.stack.not_emulated)
    assert {"IngestBucket", "Ledger", "SpotJobQueue", "HpcJobDefinition", "PipelineStateMachine"} <= deployed


def test_multinode_job_definition_and_spot_environment_come_from_the_template(plane):
    # GIVEN the deployed Batch resources
    batch = boto3.client("batch", region_name="us-east-1")
    hpc = batch.describe_job_definitions(jobDefinitions=[plane.stack.physical_id("HpcJobDefinition")])
    spot = batch.describe_compute_environments(computeEnvironments=[plane.stack.physical_id("SpotComputeEnvironment")])
    # THEN the HPC definition is multi-node and the Spot environment is SPOT with price-capacity allocation
    assert hpc["jobDefinitions"][0]["type"] == "multinode"
    resources = spot["computeEnvironments"][0]["computeResources"]
    assert resources["type"] == "SPOT"
    assert resources["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert len(resources["instanceTypes"]) > 1


def test_state_machine_definition_has_substituted_arns_and_context_paths(plane):
    # GIVEN the state machine the template created
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    definition = sfn.describe_state_machine(stateMachineArn=plane.stack.physical_id("PipelineStateMachine"))[
        "definition"
    ]
    # THEN every ${...} was substituted and the ASL context prefix survived
    assert "${" not in definition and CONTEXT_PREFIX_PLACEHOLDER not in definition
    task = json.loads(definition)["States"]["Preprocess"]
    assert task["Parameters"]["FunctionName"].startswith("arn:aws:lambda:")
    assert task["Parameters"]["Payload"]["task_token.$"] == "$$.Task.Token"
    # AND the runner is told which attempt of the state gave the token, to keep a later one's
    assert task["Parameters"]["Payload"]["task_entered_at.$"] == "$$.State.EnteredTime"
    assert task["Parameters"]["Payload"]["task_retry.$"] == "$$.State.RetryCount"


def test_foreign_instance_warning_is_ignored_and_recorded(plane):
    # GIVEN a Spot warning for an instance that runs none of this stack's jobs
    event = load_event("spot_interruption_warning")
    # WHEN it is put on the bus
    deliveries = plane.put_event(event)
    result, errored = plane.invoke("SpotInterruptionFunction", event)
    # THEN the rule delivered it and the handler ignored it
    assert [d.status for d in deliveries] == ["ok"]
    assert not errored and result["status"] == "ignored"
    # and recorded it as what it is, which the handler counts as a ForeignInstanceSignals metric
    assert result["reason"] == NOT_THIS_STACKS_INSTANCE
    assert result["instance_id"] == event["detail"]["instance-id"]
    counted: list[str] = []
    record_event_outcome(type("Recorder", (), {"add_metric": lambda self, name, **_: counted.append(name)})(), result)
    assert counted == [FOREIGN_INSTANCE_SIGNALS]


def test_upload_outside_incoming_or_not_csv_is_rejected_and_recorded(plane):
    # GIVEN an S3 event for a key that is not a CSV under incoming/
    event = load_event("s3_object_created")
    event["detail"]["bucket"]["name"] = plane.bucket
    event["detail"]["object"]["key"] = "incoming/notes.txt"
    # WHEN the start-pipeline handler gets it
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is rejected with the reason, and the rejection is in the ledger
    assert not errored and result["status"] == "rejected" and "not a CSV" in result["reason"]
    ledger = boto3.resource("dynamodb", region_name="us-east-1").Table(plane.stack.physical_id("Ledger"))
    items = ledger.query(KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": "REJECTION"})["Items"]
    assert any("not a CSV" in item["reason"] for item in items)


def test_template_that_is_not_yaml_is_a_clear_error(tmp_path):
    # GIVEN a broken template
    broken = tmp_path / "template.yaml"
    broken.write_text("Resources: [unclosed")
    # WHEN / THEN loading it says what is wrong
    with pytest.raises(TemplateError, match="not valid YAML"):
        load_template(broken)


def test_dashboard_is_deployed_and_alarms_watch_failures_dlqs_and_deadlines(plane):
    from spot_hpc import metrics

    # GIVEN the translated template and the deployed dashboard
    resources = plane.stack.translated["Resources"]
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    dashboard = boto3.client("cloudwatch", region_name="us-east-1").get_dashboard(
        DashboardName=plane.stack.physical_id("OperationsDashboard")
    )
    body = json.loads(dashboard["DashboardBody"])
    # THEN the dashboard charts the metrics the control plane emits, under the same namespace and service
    charted = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"] if m[0] == metrics.NAMESPACE}
    emitted = {metrics.RUN_COST_USD, metrics.SAVINGS_USD, metrics.REQUEUES_TO_ON_DEMAND, metrics.DEADLINES_MISSED}
    assert emitted <= charted
    # AND five alarms watch failed executions, both dead-letter queues, missed deadlines, guard passes out of
    # time and guard passes that cannot read what they guard, all to the alarm topic
    assert set(alarms) == {
        "FailedPipelinesAlarm",
        "DeadLetterQueueDepthAlarm",
        "DeadlineMissedAlarm",
        "GuardOutOfTimeAlarm",
        "GuardReadsFailingAlarm",
    }
    for name, metric in (
        ("DeadlineMissedAlarm", metrics.DEADLINES_MISSED),
        ("GuardOutOfTimeAlarm", metrics.DEFERRED_STAGES),
        ("GuardReadsFailingAlarm", metrics.GUARD_UNREAD),
    ):
        assert alarms[name]["MetricName"] == metric and alarms[name]["Namespace"] == metrics.NAMESPACE
    # AND a failed read alarms after three guard passes in a row (one pass a period, each period a breach)
    reads_failing = alarms["GuardReadsFailingAlarm"]
    assert reads_failing["Period"] == PASS_PERIOD.total_seconds() and reads_failing["EvaluationPeriods"] == 3
    queues = {
        d["Value"]["Fn::GetAtt"][0]
        for q in alarms["DeadLetterQueueDepthAlarm"]["Metrics"]
        if "MetricStat" in q
        for d in q["MetricStat"]["Metric"]["Dimensions"]
    }
    assert queues == {"EventsDeadLetterQueue", "NotificationsDeadLetterQueue"}
    assert all(a["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms.values())
