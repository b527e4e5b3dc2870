"""The checkpoint store: atomic checkpoints, fallback past corrupt ones, clear errors, progress, cleanup."""

from __future__ import annotations

import json
from typing import Any

import pytest
from spot_checkpoint import (
    CheckpointStore,
    CheckpointStoreUnavailable,
    parse_s3_uri,
    part_progress,
    progress,
)

from .conftest import BUCKET

URI = f"s3://{BUCKET}/checkpoints/run-1/hpc/"


def keys(s3: Any, prefix: str = "checkpoints/") -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


class FailingManifestPut:
    """An S3 client that dies while committing: payloads are written, the manifest never is."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def put_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith("manifest.json"):
            raise ConnectionError("instance reclaimed")
        return self._s3.put_object(**kwargs)


def test_saved_checkpoint_is_read_back_with_progress_and_meta(s3: Any) -> None:
    # GIVEN a store for one part of a stage
    store = CheckpointStore(s3, URI, part="node-1", parts_total=2)
    # WHEN two checkpoints are saved
    store.save(b"first", 0.25, meta={"step": 10}, work_seconds=3.0)
    seq = store.save({"grid.npy": b"\x00" * 10, "position.json": b"{}"}, 0.5, meta={"step": 20})
    # THEN the newest complete one comes back whole, with its progress
    latest = store.latest()
    assert latest is not None
    assert latest.seq == seq == 1
    assert latest.payloads == {"grid.npy": b"\x00" * 10, "position.json": b"{}"}
    assert latest.progress == 0.5
    assert latest.meta == {"step": 20}
    assert latest.part == "node-1"
    assert "checkpoints/run-1/hpc/node-1/0000000001/manifest.json" in keys(s3)


def test_no_checkpoint_means_none(s3: Any) -> None:
    # GIVEN an empty stage prefix
    store = CheckpointStore(s3, URI)
    # WHEN / THEN there is nothing to resume and no progress to read
    assert store.latest() is None
    assert progress(s3, URI) is None


def test_save_that_dies_before_its_manifest_leaves_previous_checkpoint(s3: Any) -> None:
    # GIVEN a complete checkpoint
    CheckpointStore(s3, URI).save(b"complete", 0.4)
    # WHEN the next save dies after its payload but before its commit marker
    with pytest.raises(ConnectionError):
        CheckpointStore(FailingManifestPut(s3), URI).save(b"half written", 0.6)
    # THEN readers see the previous checkpoint, and the next save does not reuse the half-written slot
    store = CheckpointStore(s3, URI)
    latest = store.latest()
    assert latest is not None and latest.state == b"complete"
    assert store.save(b"next", 0.7) == 2
    assert store.latest().state == b"next"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda blob: blob[: len(blob) // 2], id="truncated payload"),
        pytest.param(lambda blob: b"X" + blob[1:], id="corrupt payload"),
    ],
)
def test_damaged_payload_falls_back_to_previous_complete_checkpoint(s3: Any, damage: Any) -> None:
    # GIVEN two checkpoints, the newest of which is damaged after it was committed
    store = CheckpointStore(s3, URI)
    store.save(b"older state", 0.3)
    store.save(b"newer state", 0.6)
    key = "checkpoints/run-1/hpc/main/0000000001/state"
    blob = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=damage(blob))
    # WHEN the job resumes
    latest = CheckpointStore(s3, URI).latest()
    # THEN it resumes from the older, intact checkpoint
    assert latest is not None
    assert (latest.seq, latest.state) == (0, b"older state")


@pytest.mark.parametrize("manifest", [b"{not json", b"", json.dumps({"format": "other"}).encode()])
def test_unreadable_manifest_falls_back(s3: Any, manifest: bytes) -> None:
    # GIVEN a newest checkpoint whose manifest is unreadable
    store = CheckpointStore(s3, URI)
    store.save(b"good", 0.3)
    store.save(b"bad", 0.6)
    s3.put_object(Bucket=BUCKET, Key="checkpoints/run-1/hpc/main/0000000001/manifest.json", Body=manifest)
    # WHEN / THEN the previous checkpoint is used
    assert CheckpointStore(s3, URI).latest().state == b"good"  # type: ignore[union-attr]


def test_missing_payload_and_all_corrupt_mean_no_checkpoint(s3: Any) -> None:
    # GIVEN a single checkpoint whose payload was deleted
    store = CheckpointStore(s3, URI)
    store.save(b"only", 0.3)
    s3.delete_object(Bucket=BUCKET, Key="checkpoints/run-1/hpc/main/0000000000/state")
    # WHEN / THEN there is no complete checkpoint: the job starts over rather than resuming garbage
    assert CheckpointStore(s3, URI).latest() is None


def test_missing_bucket_is_a_clear_error(s3: Any) -> None:
    # GIVEN a checkpoint URI naming a bucket that does not exist
    store = CheckpointStore(s3, "s3://no-such-bucket-here/checkpoints/run-1/hpc/")
    # WHEN / THEN every operation raises the configuration error, naming the bucket
    for operation in (store.check_bucket, store.latest, lambda: store.save(b"x", 0.1)):
        with pytest.raises(CheckpointStoreUnavailable, match="no-such-bucket-here"):
            operation()
    with pytest.raises(CheckpointStoreUnavailable):
        progress(s3, store.uri)


def test_progress_weighs_parts_that_have_not_checkpointed(s3: Any) -> None:
    # GIVEN a four-node stage where two nodes have checkpointed
    CheckpointStore(s3, URI, part="node-0", parts_total=4).save(b"a", 0.5)
    node_1 = CheckpointStore(s3, URI, part="node-1", parts_total=4)
    node_1.save(b"b", 0.2)
    node_1.save(b"c", 1.0)
    # WHEN the control plane reads progress
    fraction = progress(s3, URI)
    # THEN it is the mean over all four parts, from each part's newest manifest
    assert fraction == pytest.approx((0.5 + 1.0) / 4)
    # AND each part's own newest fraction is there for per-instance decisions, with the stage's part count
    assert part_progress(s3, URI) == ({"node-0": 0.5, "node-1": 1.0}, 4)


def test_part_progress_of_a_stage_with_no_checkpoints_is_empty(s3: Any) -> None:
    # GIVEN a stage prefix nothing has been written under
    # WHEN each part's progress is read
    fractions, parts_total = part_progress(s3, URI)
    # THEN there are no parts and no count, and the stage's progress is unknown rather than 0
    assert (fractions, parts_total) == ({}, 0)
    assert progress(s3, URI) is None


def test_prune_keeps_newest_checkpoints_and_cleanup_removes_everything(s3: Any) -> None:
    # GIVEN five checkpoints, a request and a second part
    store = CheckpointStore(s3, URI, keep=2)
    for index in range(5):
        store.save(f"state {index}".encode(), index / 5)
    store.request_checkpoint("test")
    CheckpointStore(s3, URI, part="node-1").save(b"other part", 0.1)
    other_run = CheckpointStore(s3, URI.replace("run-1", "run-2"))
    other_run.save(b"another run", 0.5)
    # WHEN old checkpoints are pruned
    store.prune()
    # THEN only the two newest of the part remain, and they still read back
    assert {key.split("/")[4] for key in keys(s3, "checkpoints/run-1/hpc/main/")} == {"0000000003", "0000000004"}
    assert store.latest().state == b"state 4"  # type: ignore[union-attr]
    assert keys(s3, "checkpoints/run-1/hpc/node-1/")  # another part's checkpoint is not the part's to prune
    # WHEN the stage succeeded and is cleaned up
    deleted = store.cleanup()
    # THEN nothing of the stage is left, other runs untouched
    assert deleted > 0
    assert keys(s3, "checkpoints/run-1/") == []
    assert other_run.latest().state == b"another run"  # type: ignore[union-attr]
    other_run.cleanup()
    assert keys(s3) == []


def test_checkpoint_request_round_trip_and_bad_request_ignored(s3: Any) -> None:
    # GIVEN a stage
    store = CheckpointStore(s3, URI)
    assert store.pending_request() is None
    # WHEN the control plane asks for a checkpoint
    request_id = store.request_checkpoint("spot interruption warning for i-0abc")
    # THEN jobs of any part see it at the documented key
    request = CheckpointStore(s3, URI, part="shard-3").pending_request()
    assert request is not None
    assert (request.request_id, request.reason) == (request_id, "spot interruption warning for i-0abc")
    assert keys(s3) == ["checkpoints/run-1/hpc/request.json"]
    # WHEN the request object is garbage
    s3.put_object(Bucket=BUCKET, Key="checkpoints/run-1/hpc/request.json", Body=b"[1, 2")
    # THEN it is ignored rather than crashing the job
    assert store.pending_request() is None


def test_uri_and_names_are_validated() -> None:
    # GIVEN / WHEN / THEN
    assert parse_s3_uri("s3://bucket/checkpoints/run/hpc") == ("bucket", "checkpoints/run/hpc/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("/local/path")
    with pytest.raises(ValueError):
        CheckpointStore(object(), "s3://bucket/x/", part="../escape")
