"""The checkpoint store on S3: atomic checkpoints keyed by pipeline run, stage and part.

Key layout under the stage prefix given by the control plane (``CHECKPOINT_URI``), for example
``s3://bucket/checkpoints/<run_id>/<stage>/``::

    <prefix>request.json                       the control plane's checkpoint request (one per stage)
    <prefix><part>/<seq>/<writer>/<payload>    payload objects of checkpoint <seq>, written first
    <prefix><part>/<seq>/manifest.json         commit marker, written last, only if absent (conditional PUT)

``<part>`` is ``main`` for a single-container job, ``node-<i>`` for a multi-node parallel job and ``shard-<i>`` for
an array job; ``<seq>`` is a zero-padded decimal sequence number. A checkpoint is complete only when its manifest
exists and every payload it lists has the recorded size and SHA-256: a job killed half way through a save leaves
payloads without a manifest, which readers ignore, and a corrupt or truncated object makes readers fall back to the
previous complete checkpoint. ``<writer>`` is a token drawn per save and recorded in the manifest, so two writers
racing for one ``<seq>`` never overwrite each other's payloads; the loser of the manifest PUT retries at the next
``<seq>``, and a writer whose retried PUT finds its own manifest (the first answer was lost) counts it as committed.
The store owns only these keys: :meth:`CheckpointStore.cleanup` deletes nothing else under the prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ParamValidationError

from .csvfields import ascii_whole_number

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
REQUEST_NAME = "request.json"
DEFAULT_PART = "main"
STATE_PAYLOAD = "state"
MANIFEST_FORMAT = "spot-checkpoint/1"
SEQ_DIGITS = 10
DEFAULT_KEEP = 2
COMMIT_ATTEMPTS = 5  # manifest PUTs lost to another writer before a save gives up
REQUEST_WRITE_TRIES = 3  # conditional writes of a request to go on lost to another writer before it gives up
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes

_PAYLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SEQ_DIR = re.compile(rf"^(\d{{{SEQ_DIGITS}}})/")
_MANIFEST_KEY = re.compile(rf"^(\d{{{SEQ_DIGITS}}})/{re.escape(MANIFEST_NAME)}$")
# A checkpoint object of any part, relative to the stage prefix: ``<part>/<seq>/...``.
_CHECKPOINT_KEY = re.compile(rf"^[a-z0-9][a-z0-9-]{{0,63}}/\d{{{SEQ_DIGITS}}}/.+$")
# S3's answers to a conditional PUT whose condition failed (412) or that raced another conditional write (409).
_LOST_RACE_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
MISSING_BUCKET_CODES = {"NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName"}


class CheckpointError(Exception):
    """A checkpoint could not be written or read."""


class CheckpointStoreUnavailable(CheckpointError):
    """The checkpoint bucket is missing or not accessible: a configuration error, not a transient one."""


@dataclass(frozen=True)
class Checkpoint:
    """One complete, verified checkpoint of one part of a stage."""

    seq: int
    part: str
    progress: float
    payloads: Mapping[str, bytes]
    meta: Mapping[str, Any] = field(default_factory=dict)
    work_seconds: float = 0.0
    created_at: float = 0.0
    request_id: str | None = None
    final: bool = False

    @property
    def state(self) -> bytes:
        """The payload saved as a single ``bytes`` state (``save(state=b"...")``)."""
        return self.payloads[STATE_PAYLOAD]


@dataclass(frozen=True)
class CheckpointRequest:
    """The control plane's request that the jobs of a stage checkpoint and stop, or (``stop`` False) checkpoint and
    go on working: their instance is at risk (a rebalance recommendation), not yet going."""

    request_id: str
    reason: str
    requested_at: float
    attempt: int | None = None  # the stage attempt the request is for; None (older writers): any attempt
    stop: bool = True  # absent (older writers): stop


def earlier_attempt(attempt: int | None, than: int | None) -> bool:
    """Whether a request for `attempt` is for an attempt before `than` (None: any attempt, before none)."""
    return attempt is not None and than is not None and attempt < than


def _request_attempt(value: object) -> int | None:
    """The attempt a request's ``attempt`` names: None (null, or absent: older writers) for any attempt, else a whole
    number in ASCII digits, as the job's own ATTEMPT is read; a :class:`ValueError` for anything else, which int() read
    as another attempt (``" 3"``, ``"3_0"``, the digits of any script, ``1.5``, ``true``, ``-1``) or crashed on
    (``Infinity``, an OverflowError)."""
    if value is None:
        return None
    try:
        # str() of a JSON integer is its digits; of a bool, a float or a negative number, no whole number.
        return ascii_whole_number(str(value))
    except ValueError:
        raise ValueError(f"attempt {value!r} is not a whole number in ASCII digits") from None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); the prefix always ends with ``/``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def part_name(*, node_index: int | None = None, shard_index: int | None = None) -> str:
    """The part of a stage a job owns: ``node-<i>``, ``shard-<i>`` or ``main``."""
    if node_index is not None:
        return f"node-{node_index}"
    if shard_index is not None:
        return f"shard-{shard_index}"
    return DEFAULT_PART


def key_listed(s3_client: Any, bucket: str, key: str) -> bool:
    """Whether `key` is in the bucket, by listing it: S3 refuses (403) the read of a missing object to a caller it
    does not take as allowed to list it, where it would answer 404, and the control plane may list some prefixes only.
    A key sorts before every longer key it begins, so the first listed is itself when it is there."""
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    return bool(listed) and str(listed[0]["Key"]) == key


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


# S3's answers that a later try may not get: throttled (SlowDown, 503), busy or failing on its side (500, 503).
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "429",
    "500",
    "502",
    "503",
    "504",
}
TRANSIENT_BUSY = "busy"  # S3 answered throttled or failing, or the connection to it broke or timed out
TRANSIENT_UNREACHABLE = "unreachable"  # no connection to S3 could be made at all


def transient_failure(exc: BaseException) -> str | None:
    """How an S3 call failed if a later try may succeed (:data:`TRANSIENT_BUSY`, :data:`TRANSIENT_UNREACHABLE`), once
    botocore's own retries are spent; None for any other failure (AccessDenied, NoSuchBucket, NoSuchKey...)."""
    try:
        from botocore.exceptions import (
            ConnectionError,
            ConnectTimeoutError,
            EndpointConnectionError,
            HTTPClientError,
            IncompleteReadError,
        )
    except ImportError:  # no botocore, no S3 client either
        return None
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return TRANSIENT_UNREACHABLE
    # A connection reset, a read timed out, a body cut short (ConnectionClosedError, ReadTimeoutError,
    # ResponseStreamingError are HTTPClientErrors).
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return TRANSIENT_BUSY
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    if error_code(exc) in _TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
        return TRANSIENT_BUSY
    return None


class CheckpointStore:
    """Checkpoints of one part of one stage of one pipeline run.

    ``s3_client`` is an injected boto3 S3 client; ``uri`` the stage prefix. ``parts_total`` (how many parts the stage
    has) is recorded in every manifest so that :func:`progress` can weigh parts that have not checkpointed yet.
    """

    def __init__(
        self,
        s3_client: Any,
        uri: str,
        *,
        part: str = DEFAULT_PART,
        parts_total: int = 1,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        if not _PART_NAME.match(part):
            raise ValueError(f"invalid part name {part!r}")
        if parts_total < 1 or keep < 1:
            raise ValueError("parts_total and keep must be at least 1")
        self.s3 = s3_client
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        if not self.prefix:
            # cleanup() deletes the stage's checkpoints under the prefix: at a bucket's root that is far too wide.
            raise ValueError(
                f"checkpoint URI {uri!r} has no key prefix; use a stage prefix such as s3://bucket/checkpoints/<run>/<stage>/"
            )
        self.part = part
        self.parts_total = parts_total
        self.keep = keep
        self._next_seq: int | None = None

    # -- keys ---------------------------------------------------------------------------------------------------
    @property
    def part_prefix(self) -> str:
        return f"{self.prefix}{self.part}/"

    @property
    def request_key(self) -> str:
        return f"{self.prefix}{REQUEST_NAME}"

    def _seq_prefix(self, seq: int) -> str:
        return f"{self.part_prefix}{seq:0{SEQ_DIGITS}d}/"

    # -- S3 access with clear errors --------------------------------------------------------------------------
    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.s3, operation)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            if error_code(exc) in MISSING_BUCKET_CODES:
                raise CheckpointStoreUnavailable(
                    f"checkpoint bucket {self.bucket!r} is missing or not accessible ({error_code(exc)}): "
                    f"check CHECKPOINT_URI={self.uri!r} and the job role"
                ) from exc
            raise

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def _get(self, key: str) -> bytes | None:
        return self._get_with_etag(key)[0]

    def _get_with_etag(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and ETag; (None, None) when it is not there."""
        try:
            response = self._call("get_object", Key=key)
            return bytes(response["Body"].read()), response.get("ETag")
        except CheckpointStoreUnavailable as exc:
            # The control plane may list under checkpoints/ only (`key_listed`).
            if error_code(exc.__cause__ or exc) == "AccessDenied" and not key_listed(self.s3, self.bucket, key):
                return None, None
            raise
        except Exception as exc:
            if error_code(exc) in {"NoSuchKey", "404"}:
                return None, None
            raise

    def _seq_dirs(self) -> tuple[set[int], set[int]]:
        """(all sequence numbers seen, those with a manifest) of this part."""
        seen: set[int] = set()
        committed: set[int] = set()
        for key in self._list(self.part_prefix):
            match = _SEQ_DIR.match(key[len(self.part_prefix) :])
            if not match:
                continue
            seq = int(match.group(1))
            seen.add(seq)
            if _MANIFEST_KEY.match(key[len(self.part_prefix) :]):
                committed.add(seq)
        return seen, committed

    def check_bucket(self) -> None:
        """Raise :class:`CheckpointStoreUnavailable` if the bucket is missing or not accessible."""
        self._call("list_objects_v2", Prefix=self.prefix, MaxKeys=1)

    # -- write --------------------------------------------------------------------------------------------------
    def save(
        self,
        state: bytes | Mapping[str, bytes],
        progress: float,
        *,
        meta: Mapping[str, Any] | None = None,
        work_seconds: float = 0.0,
        request_id: str | None = None,
        final: bool = False,
    ) -> int:
        """Write one checkpoint atomically and return its sequence number.

        ``state`` is one ``bytes`` blob or several named blobs; ``progress`` the fraction of the part's work done
        (0..1) that the control plane reads; ``meta`` small JSON-able facts the job wants back on resume.
        """
        payloads = {STATE_PAYLOAD: state} if isinstance(state, bytes | bytearray) else dict(state)
        for name in payloads:
            if not _PAYLOAD_NAME.match(name) or name == MANIFEST_NAME:
                raise ValueError(f"invalid payload name {name!r}")
        facts = {
            "progress": min(max(float(progress), 0.0), 1.0),
            "work_seconds": float(work_seconds),
            "request_id": request_id,
            "final": final,
            "meta": dict(meta or {}),
        }
        for _ in range(COMMIT_ATTEMPTS):
            seq = self._claim_seq()
            if self._write_checkpoint(seq, payloads, facts):
                return seq
            logger.warning(
                "checkpoint %s seq %d was committed by another writer; retrying at the next one", self.uri, seq
            )
            self._next_seq = None  # re-list: the winner's manifest moves the next free number past it
        raise CheckpointError(
            f"checkpoint {self.uri} part {self.part}: lost {COMMIT_ATTEMPTS} commits to other writers"
        )

    def _claim_seq(self) -> int:
        if self._next_seq is None:
            seen, _ = self._seq_dirs()
            self._next_seq = max(seen, default=-1) + 1
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _write_checkpoint(self, seq: int, payloads: Mapping[str, bytes], facts: Mapping[str, Any]) -> bool:
        """Write payloads, then the manifest if no other writer committed ``seq``; False if one did."""
        base = self._seq_prefix(seq)
        writer = uuid.uuid4().hex[:16]
        listed: dict[str, dict[str, Any]] = {}
        for name, blob in payloads.items():
            blob = bytes(blob)
            relative_key = f"{writer}/{name}"
            self._call("put_object", Key=f"{base}{relative_key}", Body=blob)
            listed[name] = {"key": relative_key, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        manifest = {
            "format": MANIFEST_FORMAT,
            "seq": seq,
            "part": self.part,
            "parts_total": self.parts_total,
            "created_at": time.time(),
            "writer": writer,
            "payloads": listed,
            **facts,
        }
        # The manifest is the commit marker: written last, so a checkpoint is complete or absent; and only if absent,
        # so a second writer on the part (a replacement started before its predecessor stopped) cannot replace it.
        try:
            self._call(
                "put_object",
                Key=f"{base}{MANIFEST_NAME}",
                Body=json.dumps(manifest, sort_keys=True).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except Exception as exc:
            if error_code(exc) not in _LOST_RACE_CODES:
                raise
            committed = self._read_manifest(seq)
            # botocore retries a PUT whose answer was lost; if the first try landed, the retry fails on this save's
            # own manifest, which is a commit like any other.
            if committed is not None and committed.get("writer") == writer:
                return True
            # Another writer's commit: our payloads are garbage. With no manifest readable (409: a write still in
            # flight, perhaps our own) they stay for prune and cleanup rather than risk breaking a commit.
            if committed is not None:
                self._delete([f"{base}{entry['key']}" for entry in listed.values()])
            return False
        return True

    # -- read ---------------------------------------------------------------------------------------------------
    def _read_manifest(self, seq: int) -> dict[str, Any] | None:
        raw = self._get(f"{self._seq_prefix(seq)}{MANIFEST_NAME}")
        if raw is None:
            return None
        try:
            manifest = json.loads(raw)
            if manifest.get("format") != MANIFEST_FORMAT or manifest.get("seq") != seq:
                raise ValueError("unexpected format or sequence number")
            if not isinstance(manifest.get("payloads"), dict):
                raise ValueError("no payload list")
            return dict(manifest)
        except ValueError as exc:
            logger.warning("checkpoint %s seq %d: unreadable manifest (%s), ignoring it", self.uri, seq, exc)
            return None

    def _load(self, seq: int) -> Checkpoint | None:
        manifest = self._read_manifest(seq)
        if manifest is None:
            return None
        payloads: dict[str, bytes] = {}
        for name, expected in manifest["payloads"].items():
            # Manifests written before per-writer keys name the payload object by the payload name alone.
            blob = self._get(f"{self._seq_prefix(seq)}{expected.get('key', name)}")
            if (
                blob is None
                or len(blob) != expected.get("size")
                or hashlib.sha256(blob).hexdigest() != expected.get("sha256")
            ):
                logger.warning("checkpoint %s seq %d: payload %r missing or corrupt, falling back", self.uri, seq, name)
                return None
            payloads[name] = blob
        return Checkpoint(
            seq=seq,
            part=self.part,
            progress=float(manifest.get("progress", 0.0)),
            payloads=payloads,
            meta=dict(manifest.get("meta") or {}),
            work_seconds=float(manifest.get("work_seconds", 0.0)),
            created_at=float(manifest.get("created_at", 0.0)),
            request_id=manifest.get("request_id"),
            final=bool(manifest.get("final", False)),
        )

    def latest(self) -> Checkpoint | None:
        """The newest complete, verified checkpoint of this part, or None when there is none."""
        seen, committed = self._seq_dirs()
        if self._next_seq is None:
            self._next_seq = max(seen, default=-1) + 1
        for seq in sorted(committed, reverse=True):
            checkpoint = self._load(seq)
            if checkpoint is not None:
                return checkpoint
        return None

    # -- housekeeping -------------------------------------------------------------------------------------------
    def prune(self, keep: int | None = None) -> int:
        """Delete this part's checkpoints older than the ``keep`` newest committed ones; returns objects deleted."""
        keep = self.keep if keep is None else keep
        _, committed = self._seq_dirs()
        newest = sorted(committed, reverse=True)[:keep]
        if len(newest) < keep:
            return 0
        oldest_kept = newest[-1]
        stale = [
            key
            for key in self._list(self.part_prefix)
            if (match := _SEQ_DIR.match(key[len(self.part_prefix) :])) and int(match.group(1)) < oldest_kept
        ]
        return self._delete(stale)

    def cleanup(self) -> int:
        """Delete every checkpoint of every part of the stage, and its request; call after the stage succeeded.

        Only the checkpoint layout's keys go (``request.json`` and ``<part>/<seq>/...``): anything else under the
        prefix is not the store's to delete.
        """
        return self._delete([key for key in self._list(self.prefix) if self._is_checkpoint_layout_key(key)])

    def _is_checkpoint_layout_key(self, key: str) -> bool:
        relative = key[len(self.prefix) :]
        return relative == REQUEST_NAME or bool(_CHECKPOINT_KEY.match(relative))

    def _delete(self, keys: list[str]) -> int:
        """Delete ``keys``, manifests first; returns how many S3 reports deleted."""
        manifests = [key for key in keys if key.endswith(f"/{MANIFEST_NAME}")]
        deleted, failed_manifests = self._delete_batches(manifests)
        # S3 does not order deletions within one call: payloads go in later calls, and a checkpoint whose manifest
        # survived keeps its payloads, so an interrupted or refused delete never leaves a manifest without them.
        still_committed = tuple(key[: -len(MANIFEST_NAME)] for key in failed_manifests)
        others = [
            key
            for key in keys
            if not key.endswith(f"/{MANIFEST_NAME}") and not any(key.startswith(seq_dir) for seq_dir in still_committed)
        ]
        deleted_others, _ = self._delete_batches(others)
        return deleted + deleted_others

    def _delete_batches(self, keys: list[str]) -> tuple[int, list[str]]:
        """(deleted count, keys S3 refused): DeleteObjects answers 200 and lists per-key failures in ``Errors``."""
        failed: list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self._call("delete_objects", Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            for error in response.get("Errors", []) or []:
                logger.warning(
                    "could not delete %s from %s: %s %s",
                    error.get("Key"),
                    self.bucket,
                    error.get("Code"),
                    error.get("Message"),
                )
                failed.append(str(error.get("Key")))
        return len(keys) - len(failed), failed

    # -- the control plane's checkpoint request -------------------------------------------------------------------
    def request_checkpoint(self, reason: str, *, attempt: int | None = None) -> str:
        """Ask every job of the stage to checkpoint now and stop; returns the request id recorded in manifests.

        ``attempt`` is the stage attempt the request is for: a job of a later attempt (the replacement the control
        plane places right after asking) ignores it. Without it, the request applies to any attempt.
        """
        request_id, body = self._request_body(reason, attempt)
        self._call("put_object", Key=self.request_key, Body=body, ContentType="application/json")
        return request_id

    def request_save(self, reason: str, *, attempt: int | None = None) -> str | None:
        """Ask every job of the stage to checkpoint now and go on working (the instance at risk, not yet going);
        returns the request id, or None where a request to stop stands for this attempt or a later one: the stage has
        one request, and this one would keep the jobs from seeing that. Written only over the request it read (a
        conditional put), so one to stop written meanwhile by another handler is not replaced either."""
        request_id, body = self._request_body(reason, attempt, stop=False)
        for _ in range(REQUEST_WRITE_TRIES):
            raw, etag = self._get_with_etag(self.request_key)
            pending = self._parse_request(raw) if raw is not None else None
            if pending is not None and pending.stop and not earlier_attempt(pending.attempt, attempt):
                return None
            unchanged = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._call("put_object", Key=self.request_key, Body=body, ContentType="application/json", **unchanged)
                return request_id
            except ParamValidationError:
                # An SDK older than S3's conditional writes (the control plane's layer pins one that has them; another
                # caller's may not): written on what was just read, and a stop written in between is then replaced.
                self._call("put_object", Key=self.request_key, Body=body, ContentType="application/json")
                return request_id
            except Exception as exc:
                # A lost race: the object changed since it was read, or was deleted (the stage's cleanup), which S3
                # answers a write on its ETag with 404.
                if error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"):
                    raise
        return None  # written over again and again meanwhile: the requests of those writers stand

    @staticmethod
    def _request_body(reason: str, attempt: int | None, stop: bool = True) -> tuple[str, bytes]:
        request_id = uuid.uuid4().hex
        body: dict[str, Any] = {"request_id": request_id, "reason": reason, "requested_at": time.time()}
        if attempt is not None:
            body["attempt"] = int(attempt)
        if not stop:
            body["stop"] = False
        return request_id, json.dumps(body, sort_keys=True).encode()

    def pending_request(self) -> CheckpointRequest | None:
        """The stage's checkpoint request, or None (an unreadable request is ignored with a warning). A request whose
        attempt is not a whole number in ASCII digits is unreadable too: which attempt it is for nobody can tell, so it
        stops none rather than one it was not meant for."""
        raw = self._get(self.request_key)
        return None if raw is None else self._parse_request(raw)

    def _parse_request(self, raw: bytes) -> CheckpointRequest | None:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):  # a JSON array has no .get: an AttributeError nobody caught
                raise TypeError("not a JSON object")
            stop = body.get("stop", True)
            if not isinstance(stop, bool):  # "false" would be read as a stop; whether one was meant nobody can tell
                raise TypeError(f"stop is {stop!r}, not true or false")
            return CheckpointRequest(
                str(body["request_id"]),
                str(body.get("reason", "")),
                float(body["requested_at"]),
                _request_attempt(body.get("attempt")),
                stop,
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("unreadable checkpoint request at %s (%s), ignoring it", self.request_key, exc)
            return None


def part_progress(s3_client: Any, uri: str) -> tuple[dict[str, float], int]:
    """Each part's fraction done (0..1) from its newest manifest, and how many parts the stage has.

    Reads manifests only (no payloads), so it is cheap enough for the control plane to call on every SLA check.
    Parts that have not checkpointed yet are absent; the part count comes from the manifests.
    """
    store = CheckpointStore(s3_client, uri)
    newest_per_part: dict[str, int] = {}
    for key in store._list(store.prefix):
        rest = key[len(store.prefix) :]
        part, _, tail = rest.partition("/")
        match = _SEQ_DIR.match(tail)
        if match and tail.endswith(f"/{MANIFEST_NAME}"):
            newest_per_part[part] = max(newest_per_part.get(part, -1), int(match.group(1)))
    fractions: dict[str, float] = {}
    parts_total = len(newest_per_part)
    for part, seq in newest_per_part.items():
        raw = store._get(f"{store.prefix}{part}/{seq:0{SEQ_DIGITS}d}/{MANIFEST_NAME}")
        try:
            manifest = json.loads(raw) if raw is not None else {}
        except ValueError:
            manifest = {}
        fractions[part] = min(max(float(manifest.get("progress", 0.0)), 0.0), 1.0)
        parts_total = max(parts_total, int(manifest.get("parts_total", 1)))
    return fractions, parts_total


def progress(s3_client: Any, uri: str) -> float | None:
    """The stage's fraction done (0..1), or None when no part has checkpointed yet.

    Parts that have not checkpointed yet count as 0 when a manifest says how many parts the stage has.
    """
    fractions, parts_total = part_progress(s3_client, uri)
    if not fractions:
        return None
    return sum(fractions.values()) / parts_total
