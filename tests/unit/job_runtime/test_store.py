"""The checkpoint store: atomic checkpoints, fallback past corrupt ones, clear errors, progress, cleanup."""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError
from spot_checkpoint import (
    CheckpointStore,
    CheckpointStoreUnavailable,
    parse_s3_uri,
    part_progress,
    progress,
)

from .conftest import BUCKET, S3Passthrough

URI = f"s3://{BUCKET}/checkpoints/run-1/hpc/"
REPO = Path(__file__).resolve().parents[3]


def keys(s3: Any, prefix: str = "checkpoints/") -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def payload_key(s3: Any, seq: int, name: str = "state", part: str = "main") -> str:
    """The object key of one payload of a committed checkpoint, as its manifest records it."""
    seq_prefix = f"checkpoints/run-1/hpc/{part}/{seq:010d}/"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{seq_prefix}manifest.json")["Body"].read())
    return f"{seq_prefix}{manifest['payloads'][name]['key']}"


class FailingManifestPut(S3Passthrough):
    """An S3 client that dies while committing: payloads are written, the manifest never is."""

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
    key = payload_key(s3, 1)
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
    s3.delete_object(Bucket=BUCKET, Key=payload_key(s3, 0))
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
    # WHEN the request object is garbage, or JSON but no object
    for garbage in (b"[1, 2", b"[1, 2]", b'"request"'):
        s3.put_object(Bucket=BUCKET, Key="checkpoints/run-1/hpc/request.json", Body=garbage)
        # THEN it is ignored rather than crashing the job
        assert store.pending_request() is None


def put_request(s3: Any, **fields: Any) -> None:
    """A checkpoint request with ``fields`` (as json.dumps writes them) at the stage's request key."""
    body = {"request_id": "r-1", "reason": "spot warning", "requested_at": 1.0, **fields}
    s3.put_object(Bucket=BUCKET, Key="checkpoints/run-1/hpc/request.json", Body=json.dumps(body).encode())


_NOT_WHOLE_NUMBERS = [
    " 3",
    "3_0",
    "\u0663",
    "\uff13",
    "x",
    "",
    1.5,
    3.0,
    True,
    -1,
    float("inf"),
    float("nan"),
    [3],
    {"attempt": 3},
]
_NOT_WHOLE_IDS = ["space-before", "underscore", "arabic-indic", "fullwidth", "word", "empty", "fraction", "float",
                  "true", "negative", "infinity", "nan", "list", "object"]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "told"),
    [("attempt", value, f"attempt {value!r} is not a whole number") for value in _NOT_WHOLE_NUMBERS]
    + [("stop", value, "not true or false") for value in ("false", 0, None)],
    ids=[*_NOT_WHOLE_IDS, "stop-text", "stop-zero", "stop-null"],
)
def test_a_request_with_a_field_nobody_can_read_is_no_pending_request(
    s3: Any, caplog: pytest.LogCaptureFixture, field: str, value: Any, told: str
) -> None:
    # GIVEN a checkpoint request whose attempt is not a whole number in ASCII digits (int() read " 3", "3_0" and the
    # Arabic-Indic and fullwidth digits as 3 or 30, truncated 1.5 and true to 1, took -1, and raised OverflowError on
    # Infinity out of pending_request), or whose `stop` is not a JSON true or false (the text "false" would read as
    # a stop)
    put_request(s3, **{field: value})
    # WHEN a job looks for a pending request
    with caplog.at_level(logging.WARNING, logger="spot_checkpoint.store"):
        request = CheckpointStore(s3, URI).pending_request()
    # THEN there is none (which attempt it meant, whether it meant a stop, nobody can tell), and the log says why
    assert request is None
    assert told in caplog.text


@pytest.mark.parametrize(
    ("fields", "attempt"),
    [({"attempt": 3}, 3), ({"attempt": 0}, 0), ({"attempt": "3"}, 3), ({"attempt": None}, None), ({}, None)],
    ids=["integer", "zero", "digits-in-a-string", "null", "absent"],
)
def test_a_request_is_for_the_attempt_it_names_in_ascii_digits_or_for_any(
    s3: Any, fields: dict[str, Any], attempt: int | None
) -> None:
    # GIVEN a checkpoint request naming its attempt as the control plane writes it (a JSON integer), in ASCII digits
    # anyway, or not at all (an older control plane)
    put_request(s3, **fields)
    # WHEN a job reads it
    request = CheckpointStore(s3, URI).pending_request()
    # THEN it is for that attempt, or (None) for any
    assert request is not None and request.attempt == attempt


def test_uri_and_names_are_validated() -> None:
    # GIVEN / WHEN / THEN
    assert parse_s3_uri("s3://bucket/checkpoints/run/hpc") == ("bucket", "checkpoints/run/hpc/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("/local/path")
    for bucket_root in ("s3://bucket", "s3://bucket/", "s3://bucket//"):
        with pytest.raises(ValueError, match="no key prefix"):
            CheckpointStore(object(), bucket_root)
    with pytest.raises(ValueError):
        CheckpointStore(object(), "s3://bucket/x/", part="../escape")


def test_store_at_a_bucket_root_is_refused_so_cleanup_cannot_empty_the_bucket(s3: Any) -> None:
    # GIVEN a bucket holding another run's results
    s3.put_object(Bucket=BUCKET, Key="runs/other/hpc/fields.npy", Body=b"precious")
    # WHEN a store is made for the bucket's root
    with pytest.raises(ValueError, match="no key prefix"):
        CheckpointStore(s3, f"s3://{BUCKET}/")
    # THEN nothing could be cleaned up, and the other run's results are there
    assert keys(s3, "runs/") == ["runs/other/hpc/fields.npy"]


def test_cleanup_deletes_only_the_checkpoint_layout(s3: Any) -> None:
    # GIVEN a stage's checkpoints and request, and objects under its prefix that are not checkpoints
    store = CheckpointStore(s3, URI)
    store.save(b"a", 0.1)
    CheckpointStore(s3, URI, part="node-1", parts_total=2).save({"grid.npy": b"g"}, 0.2)
    store.request_checkpoint("test")
    foreign = [
        "checkpoints/run-1/hpc/notes.txt",
        "checkpoints/run-1/hpc/node-0/fields.npy",
        "checkpoints/run-1/hpc/main/12/state",
        "checkpoints/run-1/hpc/Main/0000000000/state",
        "checkpoints/run-1/hpc/sub/dir/0000000000/x",
    ]
    for key in foreign:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not the store's")
    # WHEN the stage is cleaned up
    deleted = store.cleanup()
    # THEN the checkpoints and request are gone (2 x payload + manifest, request) and nothing else was touched
    assert deleted == 5
    assert keys(s3) == sorted(foreign)


class CommitRacer(S3Passthrough):
    """An S3 client on which another writer commits a checkpoint just before this writer's manifest PUT."""

    def __init__(self, s3: Any, other_writer: Any) -> None:
        super().__init__(s3)
        self._other_writer = other_writer

    def put_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith("manifest.json") and self._other_writer is not None:
            other_writer, self._other_writer = self._other_writer, None
            other_writer()
        return self._s3.put_object(**kwargs)


def test_two_writers_on_one_part_never_commit_the_same_sequence_number(s3: Any) -> None:
    # GIVEN a replacement job (B) and its predecessor (A) on one part, both about to write checkpoint 0
    writer_b = CheckpointStore(s3, URI)
    writer_b.latest()
    writer_a = CheckpointStore(CommitRacer(s3, lambda: writer_b.save(b"B state", 0.3)), URI)
    writer_a.latest()
    # WHEN B writes and commits checkpoint 0 between A's payload and A's manifest
    seq_a = writer_a.save(b"A state", 0.4)
    # THEN B's checkpoint 0 is intact, and A lost the race and committed at the next number
    assert seq_a == 1
    store = CheckpointStore(s3, URI)
    checkpoint_0 = store._load(0)
    assert checkpoint_0 is not None and checkpoint_0.state == b"B state"
    assert store.latest().state == b"A state"  # type: ignore[union-attr]
    # AND A's payload written for the lost number was removed
    assert len(keys(s3, "checkpoints/run-1/hpc/main/0000000000/")) == 2


class RefusingDeletes(S3Passthrough):
    """An S3 client whose DeleteObjects refuses some keys the way S3 does: HTTP 200 with per-key ``Errors``."""

    def __init__(self, s3: Any, refuse: Any) -> None:
        super().__init__(s3)
        self._refuse = refuse
        self.delete_calls: list[list[str]] = []

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        asked = [item["Key"] for item in Delete["Objects"]]
        self.delete_calls.append(asked)
        allowed = [key for key in asked if not self._refuse(key)]
        if allowed:
            self._s3.delete_objects(Bucket=Bucket, Delete={"Objects": [{"Key": key} for key in allowed]})
        errors = [
            {"Key": key, "Code": "AccessDenied", "Message": "Access Denied"} for key in asked if key not in allowed
        ]
        return {"Errors": errors} if errors else {}


def test_refused_deletes_are_not_counted_and_keep_refused_checkpoints_whole(s3: Any) -> None:
    # GIVEN three checkpoints, on a client that may not delete manifests
    client = RefusingDeletes(s3, refuse=lambda key: key.endswith("manifest.json"))
    store = CheckpointStore(client, URI, keep=1)
    for index in range(3):
        store.save(f"state {index}".encode(), index / 3)
    # WHEN the two older ones are pruned
    deleted = store.prune()
    # THEN nothing is reported deleted, and the checkpoints whose manifests stayed still have their payloads
    assert deleted == 0
    assert [store._load(seq).state for seq in (0, 1)] == [b"state 0", b"state 1"]  # type: ignore[union-attr]
    # AND with every delete refused, cleanup reports nothing deleted either
    assert CheckpointStore(RefusingDeletes(s3, refuse=lambda key: True), URI).cleanup() == 0


def test_manifests_are_deleted_in_calls_before_their_payloads(s3: Any) -> None:
    # GIVEN three checkpoints of which two are stale
    client = RefusingDeletes(s3, refuse=lambda key: False)
    store = CheckpointStore(client, URI, keep=1)
    for index in range(3):
        store.save(f"state {index}".encode(), index / 3)
    # WHEN they are pruned
    deleted = store.prune()
    # THEN the manifests went in one call and the payloads in a later one (S3 does not order keys within a call)
    assert deleted == 4
    assert [[key.rsplit("/", 1)[1] for key in call] for call in client.delete_calls] == [
        ["manifest.json", "manifest.json"],
        ["state", "state"],
    ]


class ManifestAnswerLost(S3Passthrough):
    """An S3 client on which the first manifest PUT is applied but its answer is lost: botocore retries the
    conditional PUT, and the retry's If-None-Match fails against the manifest the first try wrote (412)."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.answer_lost = False

    def put_object(self, **kwargs: Any) -> Any:
        result = self._s3.put_object(**kwargs)
        if kwargs["Key"].endswith("manifest.json") and not self.answer_lost:
            self.answer_lost = True
            error = {"Error": {"Code": "PreconditionFailed", "Message": "At least one of the preconditions failed"}}
            raise ClientError(error, "PutObject")
        return result


def test_retried_manifest_put_that_finds_its_own_commit_counts_as_saved(s3: Any) -> None:
    # GIVEN a part with one checkpoint, and a writer whose next manifest PUT lands but whose answer is lost
    CheckpointStore(s3, URI).save(b"state 0", 0.1)
    writer = CheckpointStore(ManifestAnswerLost(s3), URI)
    writer.latest()
    # WHEN it saves
    seq = writer.save(b"state 1", 0.2)
    # THEN the 412 is recognised as its own commit: the save is that checkpoint, whole, and nothing more was written
    store = CheckpointStore(s3, URI)
    assert seq == 1
    assert store.latest().state == b"state 1"  # type: ignore[union-attr]
    assert store._seq_dirs() == ({0, 1}, {0, 1})
    # AND pruning keeps two loadable checkpoints
    store.prune(keep=2)
    assert [store._load(seq).state for seq in (0, 1)] == [b"state 0", b"state 1"]  # type: ignore[union-attr]


class RecordingPuts(S3Passthrough):
    """An S3 client recording the parameters of every PutObject."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.parameters: set[str] = set()

    def put_object(self, **kwargs: Any) -> Any:
        self.parameters.update(kwargs)
        return self._s3.put_object(**kwargs)


# The first boto3 whose PutObject takes IfNoneMatch (S3's conditional writes, August 2024): an older one refuses the
# parameter before sending anything (ParamValidationError), so every checkpoint of a job on it fails.
FIRST_BOTO3_WITH_CONDITIONAL_PUT = (1, 35, 2)


def test_the_runtime_requires_a_boto3_that_takes_the_manifests_commit_condition(s3: Any) -> None:
    # GIVEN a checkpoint saved, with the parameters of its PutObjects recorded
    puts = RecordingPuts(s3)
    CheckpointStore(puts, URI).save(b"state", 0.5)
    # AND the boto3 the runtime's package declares it works with (a job image may have any version it allows)
    project = tomllib.loads((REPO / "jobs" / "runtime" / "pyproject.toml").read_text())
    floors = [
        tuple(int(part) for part in match.group(1).split("."))
        for requirement in project["project"]["dependencies"]
        if (match := re.fullmatch(r"boto3\s*>=\s*([0-9.]+)", requirement.split(";")[0].strip()))
    ]
    # THEN the manifest is written only if absent (the commit that two writers of one part cannot both win)
    assert "IfNoneMatch" in puts.parameters
    # AND no boto3 the package allows refuses that parameter (before, boto3>=1.26 let an image keep one that does)
    assert len(floors) == 1 and floors[0] >= FIRST_BOTO3_WITH_CONDITIONAL_PUT


def test_the_key_layout_the_runtime_readme_documents_is_the_one_the_store_writes(s3: Any) -> None:
    # GIVEN the key layout under <CHECKPOINT_URI> the runtime's README gives (for lifecycle rules, policies, tools),
    # each <name> standing for one path segment
    readme = (REPO / "jobs" / "runtime" / "README.md").read_text()
    block = readme.split("## Key layout and atomicity", 1)[1].split("```", 2)[1]
    documented = [line.split()[0] for line in block.splitlines() if line.startswith("  ")]
    patterns = [re.sub(r"<[a-z_]+>", "[^/]+", re.escape(template)) for template in documented]
    # WHEN a checkpoint of two payloads is saved and the control plane asks for a checkpoint
    store = CheckpointStore(s3, URI, part="node-1", parts_total=2)
    store.save({"fields.npy": b"fields", "rise.npy": b"rise"}, 0.5)
    store.request_checkpoint("spot warning")
    written = [key[len(store.prefix) :] for key in keys(s3)]
    # THEN every key written is one the README documents (before, payloads were under <seq>/<writer>/, not <seq>/)
    assert len(written) == 4
    assert [key for key in written if not any(re.fullmatch(pattern, key) for pattern in patterns)] == []


@pytest.mark.parametrize(
    ("fields", "stop"), [({}, True), ({"stop": True}, True), ({"stop": False}, False)], ids=["absent", "true", "false"]
)
def test_a_request_says_whether_the_job_stops_after_its_checkpoint(s3: Any, fields: dict[str, Any], stop: bool) -> None:
    # GIVEN a checkpoint request that says whether to stop, or (an older control plane) does not
    put_request(s3, **fields)
    # WHEN a job reads it
    request = CheckpointStore(s3, URI).pending_request()
    # THEN it stops after its checkpoint unless told to go on
    assert request is not None and request.stop is stop


def test_a_request_to_go_on_is_written_as_one(s3: Any) -> None:
    # GIVEN / WHEN the control plane asks the stage's jobs to checkpoint and go on working
    request_id = CheckpointStore(s3, URI).request_save("rebalance recommendation", attempt=2)
    # THEN the jobs read that request
    request = CheckpointStore(s3, URI).pending_request()
    assert request is not None and (request.request_id, request.attempt, request.stop) == (request_id, 2, False)


@pytest.mark.parametrize(
    ("stop_attempt", "save_attempt", "replaced"),
    [(2, 2, False), (3, 2, False), (None, 2, False), (2, None, False), (1, 2, True)],
    ids=["same-attempt", "later-attempt", "any-attempt", "save-for-any", "earlier-attempt"],
)
def test_a_request_to_go_on_never_replaces_a_request_to_stop_the_same_attempt(
    s3: Any, stop_attempt: int | None, save_attempt: int | None, replaced: bool
) -> None:
    # GIVEN a request to stop (an interruption warning, a requeue) the jobs may not have seen yet
    store = CheckpointStore(s3, URI)
    stop_id = store.request_checkpoint("interruption warning", attempt=stop_attempt)
    # WHEN a request to checkpoint and go on is made for the stage (a rebalance recommendation handled after it)
    save_id = store.request_save("rebalance recommendation", attempt=save_attempt)
    # THEN it stands in for the request to stop only if that was meant for an attempt before
    request = store.pending_request()
    assert request is not None and request.request_id == (save_id if replaced else stop_id)
    assert (save_id is not None) is replaced


class ActingAfterTheFirstRead:
    """S3 on which `act` runs once, just after the first object read: another writer between this one's read of the
    request object and its write."""

    def __init__(self, s3: Any, act: Callable[[Any, dict[str, Any]], object]) -> None:
        self._s3 = s3
        self._act = act
        self.acted: object = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def get_object(self, **request: Any) -> Any:
        response = self._s3.get_object(**request)
        if self.acted is None:
            self.acted = self._act(self._s3, request)
        return response


def test_a_request_to_go_on_does_not_replace_a_request_to_stop_written_after_it_read_the_request(s3: Any) -> None:
    # GIVEN an earlier attempt's request, and a request to stop for this attempt written by another handler just after
    # the writer of a request to go on read the request object
    CheckpointStore(s3, URI).request_checkpoint("requeue", attempt=1)
    racing = ActingAfterTheFirstRead(
        s3, lambda s3, _: CheckpointStore(s3, URI).request_checkpoint("interruption warning", attempt=2)
    )
    # WHEN the request to go on is written
    save_id = CheckpointStore(racing, URI).request_save("rebalance recommendation", attempt=2)
    # THEN its conditional write fails, it reads the request again, and leaves the request to stop standing
    request = CheckpointStore(s3, URI).pending_request()
    assert save_id is None and request is not None and request.request_id == racing.acted


def test_a_request_to_go_on_whose_read_request_was_deleted_before_its_write_reads_again_and_writes(s3: Any) -> None:
    # GIVEN an earlier attempt's request, deleted (the stage's cleanup) just after the writer of a request to go on
    # read it
    CheckpointStore(s3, URI).request_checkpoint("requeue", attempt=1)
    racing = ActingAfterTheFirstRead(s3, lambda s3, read: s3.delete_object(Bucket=read["Bucket"], Key=read["Key"]))
    # WHEN the request to go on is written
    save_id = CheckpointStore(racing, URI).request_save("rebalance recommendation", attempt=2)
    # THEN its conditional write on the object it read (which S3 answers 404 once it is gone) is a lost race, not a
    # failure: it reads again and writes its request where there is none now
    request = CheckpointStore(s3, URI).pending_request()
    assert racing.acted is not None and save_id is not None
    assert request is not None and (request.request_id, request.stop) == (save_id, False)


class S3ListingOnlyUnderAPrefix(S3Passthrough):
    """S3 as the control plane's roles see it: they may list the bucket under checkpoints/ only (s3:ListBucket with an
    s3:prefix condition), which S3 does not take as leave to list for a read, so the read of a missing object is
    refused (403) where a caller allowed to list would be told it is not there (404)."""

    def get_object(self, **request: Any) -> Any:
        try:
            return self._s3.get_object(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchKey":
                raise
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject") from exc


def test_a_request_to_go_on_is_written_for_a_stage_with_no_request_by_a_caller_that_may_list_only_checkpoints(
    s3: Any,
) -> None:
    # GIVEN a stage with no checkpoint request yet, and S3 refusing the read of a missing object, as it does to the
    # control plane's functions
    store = CheckpointStore(S3ListingOnlyUnderAPrefix(s3), URI)
    # WHEN a rebalance recommendation asks the stage's jobs to checkpoint and go on working
    request_id = store.request_save("rebalance recommendation", attempt=2)
    # THEN the request is written and the jobs read it
    request = CheckpointStore(s3, URI).pending_request()
    assert request is not None and (request.request_id, request.stop) == (request_id, False)


class BeforeConditionalWrites:
    """S3 through an SDK from before S3's conditional writes: PutObject takes no IfMatch or IfNoneMatch."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def put_object(self, **request: Any) -> Any:
        unknown = sorted(set(request) & {"IfMatch", "IfNoneMatch"})
        if unknown:
            raise ParamValidationError(report=f'Unknown parameter in input: "{unknown[0]}"')
        return self._s3.put_object(**request)


@pytest.mark.parametrize("earlier", [None, 1], ids=["no-request-yet", "an-earlier-attempts-request"])
def test_a_request_to_go_on_is_written_by_an_sdk_from_before_conditional_writes(s3: Any, earlier: int | None) -> None:
    # GIVEN an SDK that cannot write conditionally (the Lambda runtime's own boto3 may be that old), and no request
    # or one for an earlier attempt
    if earlier is not None:
        CheckpointStore(s3, URI).request_checkpoint("requeue", attempt=earlier)
    # WHEN a request to checkpoint and go on is made
    save_id = CheckpointStore(BeforeConditionalWrites(s3), URI).request_save("rebalance recommendation", attempt=2)
    # THEN it is written all the same (on what was just read), not lost to a parameter error
    request = CheckpointStore(s3, URI).pending_request()
    assert save_id is not None and request is not None and (request.request_id, request.stop) == (save_id, False)
