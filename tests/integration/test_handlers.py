"""Each handler against the embedded AWS, through the template's own rules: bad input, duplicates, foreign
accounts, and the faults of issue-level concern (a lost event, a crash between two AWS calls, throttling)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import boto3
import pytest
from offline_runs import QUICK_STAGES
from sample_events import load_event
from spot_hpc.clock import format_time, parse_time

from spotctl.offline.demo import control_plane_services
from spotctl.offline.runtime import OfflineControlPlane

pytestmark = pytest.mark.integration
REGION = "us-east-1"
SPOT_FROM_THE_START = 75.0  # hour of the default trace with Spot capacity for the first 45 minutes


@pytest.fixture(scope="module")
def plane():
    with OfflineControlPlane(start_hour=SPOT_FROM_THE_START, stage_hours=QUICK_STAGES) as running:
        yield running


def _s3_event(plane: OfflineControlPlane, key: str, version_id: str | None, **changes: object) -> dict:
    event = load_event("s3_object_created")
    event["time"] = format_time(plane.clock.now())  # S3's event is handled as the object is created
    event["detail"]["bucket"]["name"] = plane.bucket
    event["detail"]["object"].update({"key": key, "version-id": version_id})
    event.update(changes)
    return event


def _upload(plane: OfflineControlPlane, key: str, metadata: dict[str, str]) -> str:
    put = boto3.client("s3", region_name=REGION).put_object(
        Bucket=plane.bucket, Key=key, Body=b"a\n1\n", Metadata=metadata
    )
    return str(put["VersionId"])


# ------------------------------------------------------------------ start pipeline
def test_the_same_upload_delivered_twice_starts_one_execution(plane):
    # GIVEN one uploaded object version and its event
    event = _s3_event(plane, "incoming/twice.csv", _upload(plane, "incoming/twice.csv", {"deadline-hours": "6"}))
    # WHEN the event arrives twice
    first, _ = plane.invoke("StartPipelineFunction", event)
    second, _ = plane.invoke("StartPipelineFunction", event)
    # THEN one run, one execution
    assert (first["status"], second["status"]) == ("started", "duplicate")
    assert first["execution_arn"] == second["execution_arn"]
    assert sum(e["name"] == first["run_id"] for e in plane.executions()) == 1


def test_the_state_machine_waits_on_a_stage_past_a_deadline_longer_than_a_week(plane):
    # GIVEN an upload with a ten-day deadline
    key = "incoming/ten-days.csv"
    event = _s3_event(plane, key, _upload(plane, key, {"deadline-hours": "240"}))
    # WHEN it is handled
    result, _ = plane.invoke("StartPipelineFunction", event)
    # THEN the execution waits on each stage until the deadline, the compute and a margin have passed
    run = control_plane_services(plane).ledger.get_run(result["run_id"])
    assert run is not None
    wait = (240 + sum(run.stage_hours.values()) + 24) * 3600
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert json.loads(sfn.describe_execution(executionArn=result["execution_arn"])["input"]) == {
        "run_id": result["run_id"],
        "stage_timeout_seconds": int(wait),
    }
    # AND the state machine took it as the first stage's timeout
    scheduled = [
        e["taskScheduledEventDetails"] for e in plane.history(result["execution_arn"]) if e["type"] == "TaskScheduled"
    ]
    assert scheduled and scheduled[0]["timeoutInSeconds"] == int(wait)


def test_deadline_that_is_not_a_number_is_rejected_and_recorded(plane):
    # GIVEN an upload whose deadline metadata is not a number
    event = _s3_event(plane, "incoming/soon.csv", _upload(plane, "incoming/soon.csv", {"deadline-hours": "soon"}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused with the reason, recorded, and no execution started
    assert not errored and result["status"] == "rejected" and "deadline_hours" in result["reason"]
    rejections = control_plane_services(plane).ledger.list_rejections()
    assert any(r["source"].endswith("incoming/soon.csv") and "deadline_hours" in r["reason"] for r in rejections)
    assert not any(e["name"].startswith("soon-") for e in plane.executions())
    # AND the team hears of it
    texts = [m.get("text") or "" for m in plane.webhook.delivered_messages]
    assert any("upload rejected" in t and "deadline_hours" in t for t in texts)


def test_manifest_next_to_the_csv_sets_the_run_options(plane):
    # GIVEN a manifest with a deadline and stage hours, and the CSV with different metadata
    s3 = boto3.client("s3", region_name=REGION)
    manifest = {"deadline_hours": 30, "stage_hours": {"hpc": 9}, "hpc_nodes": 4}
    s3.put_object(Bucket=plane.bucket, Key="incoming/big.manifest.json", Body=json.dumps(manifest).encode())
    event = _s3_event(plane, "incoming/big.csv", _upload(plane, "incoming/big.csv", {"deadline-hours": "2"}))
    # WHEN it is handled
    result, _ = plane.invoke("StartPipelineFunction", event)
    # THEN the manifest decided
    run = control_plane_services(plane).ledger.get_run(result["run_id"])
    assert run is not None and run.deadline_hours == 30 and run.hpc_nodes == 4 and run.stage_hours["hpc"] == 9


def test_a_notice_is_claimed_for_as_long_as_the_invocation_sending_it_may_run(plane):
    # GIVEN an upload the team is told of (its deadline is not a number)
    event = _s3_event(plane, "incoming/lease.csv", _upload(plane, "incoming/lease.csv", {"deadline-hours": "x"}))
    # WHEN it is handled by an invocation with a minute left
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the notice's claim lapsed with that invocation (a minute and a second), not after 15 minutes
    assert not errored and result["status"] == "rejected"
    table = boto3.resource("dynamodb", region_name=REGION).Table(control_plane_services(plane).settings.ledger_table)
    claim = table.get_item(Key={"pk": f"NOTIFIED#rejected#{event['id']}", "sk": "NOTIFIED"})["Item"]
    lease = parse_time(str(claim["lease_until"])) - parse_time(str(claim["claimed_at"]))
    assert claim["notice"] == "sent" and 61 <= lease.total_seconds() <= 62


@pytest.mark.parametrize("holder", ["sends it", "dies"])
def test_a_duplicate_upload_event_finding_its_notice_claimed_leaves_it_to_the_holder_or_the_guard(plane, holder):
    from spot_hpc.clock import utc_now
    from spot_hpc.pipeline import run_id_for
    from spot_hpc.slack import Notification, stored_notice

    # GIVEN an upload the team is told of (its deadline is not a number), whose notice a first delivery of the same
    # event has claimed with a minute left to run, keeping the notice with its claim as every sender does
    key = f"incoming/duplicate-{holder.replace(' ', '-')}.csv"
    event = _s3_event(plane, key, _upload(plane, key, {"deadline-hours": "x"}), id=str(uuid.uuid4()))
    svc = control_plane_services(plane)
    notice = f"rejected#{event['id']}"
    source = f"s3://{plane.bucket}/{key}"
    held = Notification(
        kind="failed",
        run_id=run_id_for(source, event["id"], None),
        stage=None,
        reason="upload rejected: deadline-hours is not a number",
        details={"source": source},
    )
    claim = svc.ledger.claim_notification(
        notice, utc_now() + timedelta(seconds=60), stored_notice(held, due_at=format_time(utc_now()))
    )
    seen = len(plane.webhook.delivered_messages)
    # WHEN the duplicate delivery is handled meanwhile
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it records the rejection and leaves the notice to its holder: no failure for a notice alone, nothing sent
    assert not errored and result["status"] == "rejected"
    assert len(plane.webhook.delivered_messages) == seen
    # WHEN the first delivery sends the notice, or dies without sending it, and the SLA guard's next pass comes after
    # its lease
    if holder == "sends it":
        assert claim and svc.ledger.mark_notification_sent(notice, claim)
    plane.clock.advance(timedelta(minutes=3))
    guard, guard_errored = plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
    # THEN the team was told once: by the holder, or late by the guard for a holder that died (the guard's pass over
    # this module's other runs tells of them too)
    assert not guard_errored and guard["orphaned_notices"]["stopped"] is None
    late = [m for m in plane.webhook.delivered_messages[seen:] if held.run_id in (m.get("text") or "")]
    assert len(late) == (holder == "dies")
    assert all((message.get("text") or "").startswith("Delayed notice: first due") for message in late)


def test_an_oversized_manifest_is_rejected_not_cut_short(plane):
    # GIVEN a manifest over 64 KiB beside the CSV (valid JSON, padded with a long field)
    s3 = boto3.client("s3", region_name=REGION)
    manifest = {"deadline_hours": 30, "note": "x" * 70_000}
    s3.put_object(Bucket=plane.bucket, Key="incoming/padded.manifest.json", Body=json.dumps(manifest).encode())
    event = _s3_event(plane, "incoming/padded.csv", _upload(plane, "incoming/padded.csv", {}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the upload is refused for its size, and not as invalid JSON from a truncated read
    assert not errored and result["status"] == "rejected"
    assert "longer than 65536 bytes" in result["reason"] and "JSON" not in result["reason"]


def test_an_empty_manifest_is_rejected_as_not_json(plane):
    # GIVEN an empty manifest beside the CSV
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=plane.bucket, Key="incoming/blank.manifest.json", Body=b"")
    event = _s3_event(plane, "incoming/blank.csv", _upload(plane, "incoming/blank.csv", {}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the upload is refused with the reason and recorded (not an error retried into the dead-letter queue)
    assert not errored and result["status"] == "rejected" and "not valid JSON" in result["reason"]
    rejections = control_plane_services(plane).ledger.list_rejections()
    assert any(r["source"].endswith("incoming/blank.csv") for r in rejections)


def test_a_manifest_upload_is_not_a_failed_upload(plane):
    # GIVEN a manifest uploaded under incoming/ (the rule delivers it as it does the CSVs)
    s3 = boto3.client("s3", region_name=REGION)
    key = "incoming/later.manifest.json"
    version = s3.put_object(Bucket=plane.bucket, Key=key, Body=b'{"deadline_hours": 5}')["VersionId"]
    sent_before = len(plane.webhook.delivered_messages)
    # WHEN its event is handled
    result, errored = plane.invoke("StartPipelineFunction", _s3_event(plane, key, version))
    # THEN it is left for its CSV: no run, no rejection, no alert
    assert not errored and result["status"] == "ignored"
    assert not any(r["source"].endswith(key) for r in control_plane_services(plane).ledger.list_rejections())
    assert len(plane.webhook.delivered_messages) == sent_before


def test_a_manifest_uploaded_after_its_csv_is_refused_and_told_not_silently_ignored(plane):
    # GIVEN a CSV whose run started on its metadata, then its manifest uploaded (as `aws s3 sync` orders them)
    s3 = boto3.client("s3", region_name=REGION)
    csv_key, key = "incoming/synced.csv", "incoming/synced.manifest.json"
    started, _ = plane.invoke(
        "StartPipelineFunction", _s3_event(plane, csv_key, _upload(plane, csv_key, {"deadline-hours": "6"}))
    )
    version = s3.put_object(Bucket=plane.bucket, Key=key, Body=b'{"deadline_hours": 48}')["VersionId"]
    # WHEN the manifest's event is handled
    result, errored = plane.invoke("StartPipelineFunction", _s3_event(plane, key, version, id=str(uuid.uuid4())))
    # THEN it is refused naming the run that goes on without it, and recorded
    assert not errored and result["status"] == "rejected"
    assert started["run_id"] in result["reason"] and "options from its metadata (deadline 6 h)" in result["reason"]
    services = control_plane_services(plane)
    assert any(r["source"].endswith(key) for r in services.ledger.list_rejections())
    # AND the run keeps the options it started with
    run = services.ledger.get_run(started["run_id"])
    assert run is not None and (run.deadline_hours, run.options_from) == (6, "metadata")
    # AND the team is told the manifest was not applied, not that a pipeline failed
    told = [json.dumps(m) for m in plane.webhook.delivered_messages if key in json.dumps(m)]
    assert len(told) == 1 and "Manifest not applied" in told[0] and "Pipeline failed" not in told[0]


def test_a_manifest_for_the_next_upload_of_a_csv_whose_run_read_one_is_left_for_that_upload(plane):
    # GIVEN a run that took its options from its manifest, still under way
    s3 = boto3.client("s3", region_name=REGION)
    csv_key, key = "incoming/again.csv", "incoming/again.manifest.json"
    s3.put_object(Bucket=plane.bucket, Key=key, Body=b'{"deadline_hours": 20}')
    started, _ = plane.invoke("StartPipelineFunction", _s3_event(plane, csv_key, _upload(plane, csv_key, {})))
    # WHEN a new manifest is uploaded for the CSV's next upload
    version = s3.put_object(Bucket=plane.bucket, Key=key, Body=b'{"deadline_hours": 30}')["VersionId"]
    result, errored = plane.invoke("StartPipelineFunction", _s3_event(plane, key, version))
    # THEN it waits for that upload: no rejection
    assert not errored and result["status"] == "ignored"
    run = control_plane_services(plane).ledger.get_run(started["run_id"])
    assert run is not None and (run.deadline_hours, run.options_from) == (20, "manifest")


def test_a_manifest_uploaded_long_after_its_csv_is_left_for_the_csvs_next_upload(plane):
    # GIVEN a run that started on its metadata an hour ago, still under way
    s3 = boto3.client("s3", region_name=REGION)
    csv_key, key = "incoming/later-run.csv", "incoming/later-run.manifest.json"
    an_hour_ago = format_time(plane.clock.now() - timedelta(hours=1))
    csv_version = _upload(plane, csv_key, {"deadline-hours": "6"})
    plane.invoke("StartPipelineFunction", _s3_event(plane, csv_key, csv_version, time=an_hour_ago))
    # WHEN a manifest is uploaded for the CSV now (for its next run, not with it)
    version = s3.put_object(Bucket=plane.bucket, Key=key, Body=b'{"deadline_hours": 30}')["VersionId"]
    result, errored = plane.invoke("StartPipelineFunction", _s3_event(plane, key, version, id=str(uuid.uuid4())))
    # THEN it waits for that upload: no rejection, no alarm
    assert not errored and result["status"] == "ignored"
    assert not any(r["source"].endswith(key) for r in control_plane_services(plane).ledger.list_rejections())


@pytest.mark.parametrize(
    ("manifest", "metadata", "told"),
    [
        (b'{"deadline_hours": 7}', {}, "options from its manifest"),
        (None, {"deadline-hours": "7"}, "options from its metadata"),
        (None, {}, "options from the stack's defaults"),
    ],
)
def test_the_started_notice_says_where_the_runs_options_came_from(plane, manifest, metadata, told):
    # GIVEN an upload whose options come from its manifest, its metadata, or neither
    key = f"incoming/told-{uuid.uuid4().hex[:8]}.csv"
    if manifest is not None:
        boto3.client("s3", region_name=REGION).put_object(
            Bucket=plane.bucket, Key=key.replace(".csv", ".manifest.json"), Body=manifest
        )
    # WHEN it is handled
    result, _ = plane.invoke("StartPipelineFunction", _s3_event(plane, key, _upload(plane, key, metadata)))
    # THEN the "started" notice says so
    started = [json.dumps(m) for m in plane.webhook.delivered_messages if result["run_id"] in json.dumps(m)]
    assert len(started) == 1 and told in started[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"account": "999999999999"}, "not this stack's account"),
        ({"detail": {"bucket": {"name": "x"}}}, "malformed"),
        ({"detail-type": None}, "malformed"),
    ],
)
def test_foreign_or_malformed_upload_events_are_rejected_and_recorded(plane, change, reason):
    # GIVEN an event from another account, or one that is not an S3 event
    event = _s3_event(plane, "incoming/odd.csv", "v1", id=str(uuid.uuid4()), **change)  # each a distinct event
    before = len(control_plane_services(plane).ledger.list_rejections())
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused, not crashed on, and the refusal is in the ledger
    assert not errored and result["status"] == "rejected" and reason in result["reason"]
    assert any(reason in r["reason"] for r in control_plane_services(plane).ledger.list_rejections())
    # (this refusal itself: the module's plane keeps the earlier cases' records)
    after = control_plane_services(plane).ledger.list_rejections()
    assert len(after) == before + 1


def test_event_for_an_object_that_is_gone_is_rejected(plane):
    # GIVEN an event for a key that does not exist (deleted since, or forged)
    event = _s3_event(plane, "incoming/gone.csv", None)
    # WHEN / THEN it is refused with a reason
    result, _ = plane.invoke("StartPipelineFunction", event)
    assert result["status"] == "rejected" and "cannot be read" in result["reason"]


# ------------------------------------------------------------------ Batch state change
def test_malformed_batch_event_is_rejected_and_unknown_job_ignored(plane):
    # GIVEN a Batch event with no job id, and a well-formed one for a job nobody here submitted
    malformed = load_event("batch_job_failed_host_terminated", jobId=None)
    unknown = load_event("batch_job_failed_host_terminated")
    before = len(control_plane_services(plane).ledger.list_rejections())
    # WHEN both are handled
    rejected, _ = plane.invoke("BatchStateChangeFunction", malformed)
    ignored, _ = plane.invoke("BatchStateChangeFunction", unknown)
    # THEN the first is refused and recorded, the second ignored
    assert rejected["status"] == "rejected" and "jobId" in rejected["reason"]
    assert ignored == {"status": "ignored", "reason": "unknown job"}
    after = control_plane_services(plane).ledger.list_rejections()
    assert len(after) == before + 1 and any("jobId" in r["reason"] for r in after)


def test_upload_outside_incoming_is_rejected_by_the_handler(plane):
    # GIVEN an S3 event for a key outside incoming/ (the rule filters these; a forged or misrouted event)
    event = _s3_event(plane, "results/out.csv", "v1")
    # WHEN / THEN the handler refuses it with the reason
    result, _ = plane.invoke("StartPipelineFunction", event)
    assert result["status"] == "rejected" and "outside incoming/" in result["reason"]


def test_demo_command_reports_bad_input_clearly(tmp_path, capsys):
    from spotctl.cli import main

    # GIVEN a trace file that does not exist, and a deadline that is not positive
    # WHEN / THEN each is a one-line error with exit code 2, before anything runs
    assert main(["demo", "--trace", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    assert main(["demo", "--deadline-hours", "-3"]) == 2
    assert "deadline_hours" in capsys.readouterr().err


# ------------------------------------------------------------------ notifications
def _run_to_notify(plane: OfflineControlPlane, name: str):
    """A run the notifier can tell about (not in the ledger: notices need only its figures)."""
    from spot_hpc.ledger import Run

    return Run(
        run_id=f"{name}-{uuid.uuid4().hex[:8]}",
        bucket=plane.bucket,
        key=f"incoming/{name}.csv",
        version_id="v1",
        deadline_at="2026-01-05T10:00:00Z",
        deadline_hours=10,
        started_at="2026-01-05T00:00:00Z",
        stage_hours={},
    )


def test_a_notification_sns_refused_is_sent_by_the_retry_and_only_once(plane, monkeypatch):
    from botocore.exceptions import ClientError
    from spot_hpc import notifier

    # GIVEN SNS throttling the first publish (after botocore's own retries)
    svc = control_plane_services(plane)
    real_deliver = notifier.deliver_notification
    refused: list[str] = []

    def throttle_once(notification, **channels):
        if not refused:
            refused.append(notification.kind)
            raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")
        return real_deliver(notification, **channels)

    monkeypatch.setattr(notifier, "deliver_notification", throttle_once)
    run = _run_to_notify(plane, "notify")
    # WHEN the notification is sent, fails, and the event is retried twice
    with pytest.raises(ClientError):
        notifier.notify(svc, "requeued", run, "preprocess", "deadline at risk", attempt=2)
    retried = notifier.notify(svc, "requeued", run, "preprocess", "deadline at risk", attempt=2)
    repeated = notifier.notify(svc, "requeued", run, "preprocess", "deadline at risk", attempt=2)
    # THEN the first retry sends it and the second finds it sent
    assert refused == ["requeued"] and (retried, repeated) == (True, False)
    assert [n["channel"] for n in svc.ledger.run_notifications(run.run_id)].count("sns") == 1


def test_a_notice_parked_while_slack_was_down_reaches_slack_from_the_guard_once_slack_is_back(plane, monkeypatch):
    from spot_hpc import notifier
    from spot_hpc.slack import SlackCircuit, SlackWebhook
    from template_grants import refused_calls

    # GIVEN Slack resting after failing, so that a notice goes to SNS and is parked on the stack's dead-letter queue
    seconds = [0.0]
    circuit = SlackCircuit(cool_down_seconds=60, clock=lambda: seconds[0])
    circuit.failed(SlackWebhook(plane.webhook.url, allow_loopback_http=True), "HTTP 503")
    monkeypatch.setattr(notifier, "SLACK_CIRCUIT", circuit)
    svc = control_plane_services(plane)
    run = _run_to_notify(plane, "parked")
    assert notifier.notify(svc, "requeued", run, "hpc", "deadline at risk", attempt=2)
    seen = len(plane.webhook.requests)
    # WHEN Slack is back and the SLA guard's schedule fires
    seconds[0] += 61
    result, errored = plane.invoke("SlaGuardFunction", load_event("sla_guard_schedule"))
    # THEN the guard sent the notice to Slack, saying it is late and when it was due, and took it off the queue
    late = [r.json["text"] for r in plane.webhook.requests[seen:] if run.run_id in r.json["text"]]
    assert not errored and result["parked_notices"]["redelivered"] == 1
    assert len(late) == 1 and late[0].startswith("Delayed notice: first due 2026-01-05 ")
    queue = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=svc.settings.notifications_dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert queue == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    # AND SNS was told once, and the run's report says Slack got it late
    notes = [(n["channel"], n.get("status")) for n in svc.ledger.run_notifications(run.run_id)]
    assert notes.count(("sns", "delivered")) == 1
    assert ("slack", "dead-lettered") in notes and ("slack", "delivered late") in notes
    # AND the guard's role allows every call it made (the embedded AWS enforces no IAM)
    made = plane.aws_calls.actions["SlaGuardFunction"]
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage"} <= made
    assert refused_calls(plane.stack.translated, {"SlaGuardFunction": made}) == {}


# ------------------------------------------------------------------ stage runner
def test_a_runner_retried_after_its_stage_settled_answers_the_new_token(plane, monkeypatch):
    from spot_hpc import runner

    # GIVEN a stage that has settled (and answered the state machine's first token)
    svc = control_plane_services(plane)
    event = _s3_event(plane, "incoming/settled.csv", _upload(plane, "incoming/settled.csv", {"deadline-hours": "6"}))
    run_id = plane.invoke("StartPipelineFunction", event)[0]["run_id"]
    settled = svc.ledger.update_stage(run_id, "preprocess", status="SUCCEEDED", task_token="first", job_id="job-1")
    answered: list[tuple[str, object]] = []

    def answer(token, output, cause=""):
        answered.append((token, output))
        return True

    monkeypatch.setattr(svc.pipeline, "answer", answer)
    # WHEN the state machine runs the stage runner again, with a token of its own
    result = runner.run_stage(svc, {"run_id": run_id, "stage": "preprocess", "task_token": "second-token"})
    # THEN the new token is answered with the stage's outcome, and nothing is placed again
    assert result["status"] == "already settled"
    assert answered == [("second-token", {"stage": "preprocess", "job_id": "job-1", "attempt": settled.attempt})]
