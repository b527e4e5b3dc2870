"""Bad and unusual uploads at the intake, through the start-pipeline handler on the offline stack: every refusal is
recorded and answered, never a crash; every good upload starts its run, against the deadline its user set."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from offline_runs import QUICK_STAGES
from sample_events import load_event
from spot_hpc.clock import format_time, parse_time
from spot_hpc.ledger import Ledger
from spot_hpc.pipeline import stage_timeout_seconds

from spotctl.offline.demo import control_plane_services
from spotctl.offline.runtime import REGION, OfflineControlPlane

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plane():
    with OfflineControlPlane(start_hour=75.0, stage_hours=QUICK_STAGES) as running:
        yield running


def _event(plane: OfflineControlPlane, key_in_event: str, version_id: str | None, **changes: object) -> dict:
    """S3's "Object Created" event for a key of the plane's bucket, as EventBridge hands it over now."""
    event = load_event("s3_object_created")
    event.update({"id": str(uuid.uuid4()), "time": format_time(plane.clock.now())})
    event["detail"]["bucket"]["name"] = plane.bucket
    event["detail"]["object"].update({"key": key_in_event, "version-id": version_id})
    event.update(changes)
    return event


def _put(plane: OfflineControlPlane, key: str, body: bytes = b"a\n1\n", metadata: dict | None = None) -> str:
    s3 = boto3.client("s3", region_name=REGION)
    return str(s3.put_object(Bucket=plane.bucket, Key=key, Body=body, Metadata=metadata or {})["VersionId"])


def _rejections(plane: OfflineControlPlane) -> list[dict]:
    return control_plane_services(plane).ledger.list_rejections()


@pytest.mark.parametrize("encoded", [True, False], ids=["URL-encoded in the event", "as is"])
@pytest.mark.parametrize("key", ["incoming/my run.csv", "incoming/données été.csv", "incoming/a+b (2).csv"])
def test_an_upload_whose_key_has_spaces_plus_signs_or_accents_starts_its_run_on_that_object(plane, key, encoded):
    # GIVEN an upload whose key S3's notifications may give URL-encoded ("my run.csv" as "my+run.csv")
    version = _put(plane, key, metadata={"deadline-hours": "6"})
    event = _event(plane, quote_plus(key, safe="/") if encoded else key, version)
    # WHEN its event is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN its run starts, reading the object by its real key
    assert not errored and result["status"] == "started", result
    assert control_plane_services(plane).ledger.get_run(result["run_id"]).key == key


@pytest.mark.parametrize("detail_type", ["Object Created", "Object Deleted"])
def test_an_event_for_a_deleted_upload_is_refused_and_recorded(plane, detail_type):
    # GIVEN an upload deleted since (a delete marker in the versioned bucket), and an event naming the marker: S3's
    # "Object Deleted" (which the rule does not send, but a hand may), or a created event pointing at the marker
    key = f"incoming/deleted-{detail_type.split()[1].lower()}.csv"
    _put(plane, key)
    marker = boto3.client("s3", region_name=REGION).delete_object(Bucket=plane.bucket, Key=key)["VersionId"]
    before = len(_rejections(plane))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", _event(plane, key, marker, **{"detail-type": detail_type}))
    # THEN it is refused with its reason, and the refusal recorded
    assert not errored and result["status"] == "rejected", result
    assert len(_rejections(plane)) == before + 1


def test_an_empty_csv_is_refused_not_run(plane):
    # GIVEN an empty CSV (a client's upload that failed or was aborted)
    key = "incoming/empty.csv"
    event = _event(plane, key, _put(plane, key, body=b""))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused, rather than started as a pipeline whose first job fails on no input, retries and all
    assert not errored and result["status"] == "rejected" and "empty" in result["reason"], result


def test_a_deeply_nested_manifest_is_refused_not_crashed_on(plane):
    # GIVEN a manifest within the 64 KiB a manifest may take, nested deeper than a JSON parser goes
    key = "incoming/nested.csv"
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=plane.bucket, Key="incoming/nested.manifest.json", Body=b"[" * 30000 + b"]" * 30000)
    # WHEN its CSV's event is handled
    result, errored = plane.invoke("StartPipelineFunction", _event(plane, key, _put(plane, key)))
    # THEN the upload is refused with the reason
    assert not errored and result["status"] == "rejected" and "not valid JSON" in result["reason"], result


def test_a_manifest_number_longer_than_python_parses_is_refused_not_crashed_on(plane):
    # GIVEN a manifest within the 64 KiB a manifest may take whose deadline is a number of 5,000 digits (Python parses
    # no integer of more than 4,300, and says so with a ValueError that is no JSONDecodeError)
    key = "incoming/long-number.csv"
    s3 = boto3.client("s3", region_name=REGION)
    manifest = b'{"deadline_hours": ' + b"1" * 5000 + b"}"
    s3.put_object(Bucket=plane.bucket, Key="incoming/long-number.manifest.json", Body=manifest)
    # WHEN its CSV's event is handled
    result, errored = plane.invoke("StartPipelineFunction", _event(plane, key, _put(plane, key)))
    # THEN the upload is refused with the reason and recorded, rather than the handler failing until the event is
    # dead-lettered
    assert not errored and result["status"] == "rejected" and "not valid JSON" in result["reason"], result
    assert any(rejection["source"].endswith(key) for rejection in _rejections(plane))


def test_a_refused_upload_with_a_long_key_is_recorded(plane):
    # GIVEN an upload with a long key (S3 takes 1,024 bytes; a DynamoDB sort key as many) and a deadline in words
    key = "incoming/" + "run-" * 230 + ".csv"
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": "soon"}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused and the refusal recorded, naming the upload
    assert not errored and result["status"] == "rejected", result
    assert any(rejection["source"].endswith(key) for rejection in _rejections(plane))


def test_the_deadline_counts_from_the_upload_not_from_when_its_event_is_handled(plane):
    # GIVEN an upload with a 3-hour deadline whose event is handled two hours after it (EventBridge retries an event
    # for up to an hour, Lambda for hours more)
    key = "incoming/late.csv"
    uploaded_at = plane.clock.now() - timedelta(hours=2)
    version = _put(plane, key, metadata={"deadline-hours": "3"})
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", _event(plane, key, version, time=format_time(uploaded_at)))
    # THEN the run is due three hours after the upload, as its user asked, and started then
    run = control_plane_services(plane).ledger.get_run(result["run_id"])
    assert not errored and result["status"] == "started", result
    assert (parse_time(run.started_at), parse_time(run.deadline_at)) == (uploaded_at, uploaded_at + timedelta(hours=3))


def test_an_upload_event_whose_time_has_no_zone_counts_it_as_utc(plane):
    # GIVEN an upload's event given by hand with a time without a zone (EventBridge always says "Z")
    key = "incoming/no-zone.csv"
    uploaded_at = plane.clock.now() - timedelta(minutes=30)
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": "6"}))
    event["time"] = uploaded_at.replace(tzinfo=None).isoformat(timespec="seconds")
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the run starts, as of that time in UTC
    assert not errored and result["status"] == "started", result
    assert parse_time(control_plane_services(plane).ledger.get_run(result["run_id"]).started_at) == uploaded_at


def test_an_upload_whose_first_handling_failed_writing_its_stages_has_them_all_once_retried(plane, monkeypatch):
    # GIVEN an upload whose first handling has DynamoDB throttle the write of one of its run's stages (after the
    # SDK's retries), so that the handler fails and its event is delivered again
    key = "incoming/throttled.csv"
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": "6"}))
    real_put = Ledger._put
    throttled: list[str] = []

    def throttle_a_stage_once(self, item, *args, **kwargs):
        if str(item["sk"]) == "STAGE#hpc" and not throttled:
            throttled.append(item["pk"])
            error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded"}}
            raise ClientError(error, "PutItem")
        return real_put(self, item, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "_put", throttle_a_stage_once)
        _, first_errored = plane.invoke("StartPipelineFunction", event)
    # WHEN its event is handled again
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the run is started with every one of its stages in the ledger, for the state machine to run
    stages = control_plane_services(plane).ledger.get_stages(result["run_id"])
    assert throttled and first_errored and not errored, result
    assert [stage.stage for stage in stages] == ["preprocess", "hpc", "postprocess"]


def test_a_run_that_could_outlast_the_ledgers_retention_is_refused_not_lost_half_way(plane):
    settings = control_plane_services(plane).settings
    retention_hours = settings.ledger_retention_days * 24
    # GIVEN an upload whose deadline the stack accepts, but whose stages the state machine may wait on for longer than
    # the ledger keeps what it writes (LedgerRetentionDays): DynamoDB would delete the run, its stages and jobs while
    # they still run, and their Batch events would then find nothing to settle
    key = "incoming/outlasts-the-ledger.csv"
    hours = retention_hours - 1
    assert stage_timeout_seconds(hours, {}) > retention_hours * 3600
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": str(hours)}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused, the reason naming the retention to raise, and nothing of it starts
    assert not errored and result["status"] == "rejected", result
    assert "LedgerRetentionDays" in result["reason"], result
    # AND a run that ends well within the retention starts as before
    key = "incoming/within-the-ledger.csv"
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": str(retention_hours / 2)}))
    result, errored = plane.invoke("StartPipelineFunction", event)
    assert not errored and result["status"] == "started", result


@pytest.mark.parametrize(
    ("metadata", "status"),
    [
        ({"hpc-nodes": "9"}, "rejected"),  # 288 vCPUs: more than the HPC environment's 256 (HpcMaxVcpus)
        ({"hpc-nodes": "8"}, "started"),  # 256: fits
        ({"hpc-nodes": "9", "hpc-mode": "shards"}, "started"),  # shards run one by one on the Spot queue
    ],
    ids=["multinode-too-many", "multinode-fits", "shards"],
)
def test_a_multinode_run_whose_nodes_cannot_fit_the_hpc_environment_is_refused(plane, metadata, status):
    # GIVEN an upload asking for HPC nodes of 32 vCPUs each, on the stack's HPC environment of 256 vCPUs
    key = f"incoming/nodes-{metadata['hpc-nodes']}-{metadata.get('hpc-mode', 'multinode')}.csv"
    event = _event(plane, key, _put(plane, key, metadata={"deadline-hours": "12", **metadata}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN a multi-node job that could never start is refused at once, naming the parameter to raise
    assert not errored and result["status"] == status, result
    if status == "rejected":
        assert "needs 288 vCPUs" in result["reason"] and "HpcMaxVcpus" in result["reason"], result


@pytest.mark.parametrize(
    "manifest",
    [
        b'{"deadline_hours": 6, "hpc_nodes": 4, "deadline_hours": 48}',
        b'{"deadline_hours": 12, "stage_hours": {"hpc": 2, "preprocess": 1, "hpc": 8}}',
    ],
    ids=["option", "stage"],
)
def test_a_manifest_giving_an_option_twice_is_refused_not_read_as_its_last(plane, manifest):
    # GIVEN a manifest beside the CSV that gives an option, or a stage's hours, twice (an edit that added a line and
    # left the old one): which one was meant is anyone's guess
    key = f"incoming/twice-in-manifest-{uuid.uuid4().hex[:8]}.csv"
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=plane.bucket, Key=key.replace(".csv", ".manifest.json"), Body=manifest)
    event = _event(plane, key, _put(plane, key))
    # WHEN its CSV's event is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN the upload is refused, naming the option given twice, rather than run with whichever came last
    assert not errored and result["status"] == "rejected", result
    assert "given twice" in result["reason"], result


@pytest.mark.parametrize("name", ["deadline_hours", "stage_hours", "hpc_mode", "hpc_nodes"])
def test_metadata_naming_an_option_as_the_manifest_spells_it_is_refused_not_ignored(plane, name):
    # GIVEN an upload whose metadata names an option as a manifest does (`deadline_hours`, not `deadline-hours`)
    value = {"deadline_hours": "2", "stage_hours": "hpc=1", "hpc_mode": "shards", "hpc_nodes": "4"}[name]
    key = f"incoming/underscored-{name}.csv"
    event = _event(plane, key, _put(plane, key, metadata={name: value}))
    # WHEN it is handled
    result, errored = plane.invoke("StartPipelineFunction", event)
    # THEN it is refused, naming the metadata's spelling, rather than run on the stack's defaults as if not given
    assert not errored and result["status"] == "rejected", result
    assert name.replace("_", "-") in result["reason"], result


def test_a_manifest_with_thousands_of_unknown_options_is_refused_and_recorded_not_crashed_on(plane):
    # GIVEN a manifest within the 64 KiB a manifest may take that is no manifest at all: thousands of short members,
    # each of them an unknown option
    key = "incoming/many-members.csv"
    members = ",".join(f'"{index:x}":0' for index in range(7700))
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=plane.bucket, Key="incoming/many-members.manifest.json", Body=f"{{{members}}}".encode())
    # WHEN its CSV's event is handled
    result, errored = plane.invoke("StartPipelineFunction", _event(plane, key, _put(plane, key)))
    # THEN the upload is refused and the refusal recorded and told, its reason short enough for every channel (SNS
    # takes 256 KB), rather than the handler failing on the notice until the event is dead-lettered
    assert not errored and result["status"] == "rejected", result
    assert any(rejection["source"].endswith(key) for rejection in _rejections(plane))
    assert "Extra inputs are not permitted" in result["reason"] and len(result["reason"]) < 10_000, result
