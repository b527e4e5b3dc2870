"""The upload bucket adapter (spot_hpc.uploads) against botocore's Stubber: the exact requests, and which S3 errors
mean an upload cannot be read (rejected) and which are for the handler to retry."""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from spot_hpc.uploads import UploadBucket, UploadTooLarge, UploadUnreadable


@pytest.fixture
def stubbed() -> tuple[UploadBucket, Stubber]:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.activate()
    return UploadBucket(client), stubber


def test_head_asks_for_the_exact_version_uploaded(stubbed):
    # GIVEN S3 that knows version v2 of the upload
    uploads, stubber = stubbed
    request = {"Bucket": "ingest", "Key": "incoming/a.csv", "VersionId": "v2"}
    stubber.add_response("head_object", {"VersionId": "v2", "Metadata": {"deadline-hours": "12"}}, request)
    # WHEN its metadata is read
    head = uploads.head("ingest", "incoming/a.csv", "v2")
    # THEN that version's metadata comes back
    assert head["Metadata"] == {"deadline-hours": "12"}
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("code", ["404", "NoSuchBucket", "AccessDenied"])
def test_an_upload_that_cannot_be_read_says_why(stubbed, code):
    # GIVEN S3 that cannot give the object (unversioned bucket: no VersionId is sent)
    uploads, stubber = stubbed
    stubber.add_client_error("head_object", code, expected_params={"Bucket": "ingest", "Key": "incoming/a.csv"})
    # WHEN its metadata is read
    with pytest.raises(UploadUnreadable) as caught:
        uploads.head("ingest", "incoming/a.csv", None)
    # THEN the error carries S3's code
    assert caught.value.code == code


def test_throttling_is_raised_for_a_retry(stubbed):
    # GIVEN S3 throttling the request
    uploads, stubber = stubbed
    stubber.add_client_error("head_object", "SlowDown", http_status_code=503)
    # WHEN the metadata is read
    # THEN the error reaches the caller unchanged (the event is retried, not rejected)
    with pytest.raises(ClientError) as caught:
        uploads.head("ingest", "incoming/a.csv", None)
    assert not isinstance(caught.value, UploadUnreadable)
    assert caught.value.response["Error"]["Code"] == "SlowDown"


def test_a_small_read_asks_for_a_bounded_range(stubbed):
    # GIVEN a manifest beside the upload
    uploads, stubber = stubbed
    request = {"Bucket": "ingest", "Key": "incoming/a.json", "Range": "bytes=0-65536"}
    stubber.add_response("get_object", {"Body": io.BytesIO(b'{"deadline_hours": 12}')}, request)
    # WHEN it is read
    raw = uploads.read_small("ingest", "incoming/a.json", 65536)
    # THEN its bytes come back, from one ranged request
    assert raw == b'{"deadline_hours": 12}'
    stubber.assert_no_pending_responses()


def test_a_small_read_of_an_object_over_the_limit_is_refused(stubbed):
    # GIVEN an object longer than the limit: the ranged read returns one byte more than the limit
    uploads, stubber = stubbed
    request = {"Bucket": "ingest", "Key": "incoming/a.json", "Range": "bytes=0-16"}
    stubber.add_response("get_object", {"Body": io.BytesIO(b"x" * 17)}, request)
    # WHEN it is read with a 16-byte limit
    # THEN it is refused as too large, not cut short
    with pytest.raises(UploadTooLarge, match="longer than 16 bytes"):
        uploads.read_small("ingest", "incoming/a.json", 16)


def test_a_small_read_of_an_object_exactly_at_the_limit_is_whole(stubbed):
    # GIVEN an object of exactly the limit
    uploads, stubber = stubbed
    stubber.add_response("get_object", {"Body": io.BytesIO(b"x" * 16)})
    # WHEN / THEN it comes back whole
    assert uploads.read_small("ingest", "incoming/a.json", 16) == b"x" * 16


def test_a_small_read_of_a_missing_object_is_none(stubbed):
    # GIVEN no manifest beside the upload
    uploads, stubber = stubbed
    stubber.add_client_error("get_object", "NoSuchKey")
    # WHEN it is read
    # THEN there is nothing, and no error
    assert uploads.read_small("ingest", "incoming/a.json", 65536) is None


def test_a_small_read_of_an_empty_object_is_empty(stubbed):
    # GIVEN an empty object: S3 answers any ranged read of it with 416 InvalidRange
    uploads, stubber = stubbed
    stubber.add_client_error("get_object", "InvalidRange", http_status_code=416)
    # WHEN it is read
    # THEN it is empty (for the caller to refuse as it sees fit), not an error to retry
    assert uploads.read_small("ingest", "incoming/a.json", 65536) == b""


@pytest.mark.parametrize(
    "listing",
    [{"KeyCount": 0}, {"KeyCount": 1, "Contents": [{"Key": "incoming/a.json.bak"}]}],
    ids=["no key", "only a longer key"],
)
def test_a_small_read_s3_refuses_of_an_object_that_is_not_there_is_none(stubbed, listing):
    # GIVEN no manifest beside the upload, and S3 refusing its read (403) where it would say 404 to a caller that may
    # list the whole bucket: the function may list the uploads' prefix only
    uploads, stubber = stubbed
    stubber.add_client_error("get_object", "AccessDenied", http_status_code=403)
    stubber.add_response("list_objects_v2", listing, {"Bucket": "ingest", "Prefix": "incoming/a.json", "MaxKeys": 1})
    # WHEN it is read
    # THEN listing its key finds it is not there: there is nothing, and no error
    assert uploads.read_small("ingest", "incoming/a.json", 65536) is None
    stubber.assert_no_pending_responses()


def test_a_small_read_s3_refuses_of_an_object_that_is_there_is_raised(stubbed):
    # GIVEN a manifest beside the upload whose read S3 refuses (its key lists, so it is there)
    uploads, stubber = stubbed
    stubber.add_client_error("get_object", "AccessDenied", http_status_code=403)
    stubber.add_response("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": "incoming/a.json"}]})
    # WHEN it is read
    # THEN the refusal reaches the caller (the event is retried), rather than the manifest being taken for absent
    with pytest.raises(ClientError, match="AccessDenied"):
        uploads.read_small("ingest", "incoming/a.json", 65536)
