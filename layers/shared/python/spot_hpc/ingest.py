"""Starting a pipeline from an S3 upload: validate, record, and start exactly one execution per object version."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from spot_hpc.clock import format_time, happened_at, parse_time
from spot_hpc.events import UploadEvent
from spot_hpc.intake import Rejected, parse_event, reject
from spot_hpc.ledger import LedgerConflict, Run, Stage
from spot_hpc.notifier import notify, notify_rejected_upload
from spot_hpc.pipeline import (
    HPC_NODE_VCPUS,
    INGEST_PREFIX,
    OPTIONS_FROM_WORDS,
    InvalidRunOptions,
    RunOptions,
    build_run_options,
    manifest_key,
    options_source,
    run_id_for,
    stage_specs,
    stage_timeout_seconds,
)
from spot_hpc.services import Services
from spot_hpc.uploads import UploadTooLarge, UploadUnreadable

logger = logging.getLogger(__name__)
MAX_MANIFEST_BYTES = 64 * 1024
# How long after its CSV a manifest is taken as meant for that CSV's run (a folder's upload sends them minutes apart at
# most); a later one is taken as meant for the CSV's next upload, which reads it.
LATE_MANIFEST_WINDOW = timedelta(minutes=15)


def start_pipeline(svc: Services, event: dict[str, Any], account_id: str) -> dict[str, Any]:
    try:
        return _start(svc, event, account_id)
    except Rejected as exc:
        source = _describe_source(event)
        event_id = str(event.get("id", "")) if isinstance(event, dict) else ""
        notify_rejected_upload(svc, run_id_for(source, event_id, None), source, str(exc), event_id, exc.title)
        return reject(svc, source, str(exc), event)


def _describe_source(event: dict[str, Any]) -> str:
    detail = event.get("detail") if isinstance(event, dict) else None
    if isinstance(detail, dict):
        bucket = (detail.get("bucket") or {}).get("name", "?") if isinstance(detail.get("bucket"), dict) else "?"
        key = (detail.get("object") or {}).get("key", "?") if isinstance(detail.get("object"), dict) else "?"
        return f"s3://{bucket}/{key}"
    return "malformed-event"


def _start(svc: Services, event: dict[str, Any], account_id: str) -> dict[str, Any]:
    parsed = parse_event(UploadEvent, event, account_id)
    bucket, obj = parsed.detail.bucket.name, parsed.detail.object
    if bucket != svc.settings.ingest_bucket:
        raise Rejected(f"bucket {bucket} is not this stack's ingest bucket")
    if not obj.key.startswith(INGEST_PREFIX):
        raise Rejected(f"key {obj.key} is outside {INGEST_PREFIX}")
    if obj.key.lower().endswith(".manifest.json"):
        # A run's options, read when its CSV arrives: not an upload to start, unless its CSV came first.
        _refuse_a_manifest_after_its_csv(svc, obj.key, happened_at(parsed.time))
        logger.info("manifest uploaded", extra={"key": obj.key})
        return {"status": "ignored", "reason": f"{obj.key} is a run manifest, read when its CSV arrives"}
    if not obj.key.lower().endswith(".csv"):
        raise Rejected(f"key {obj.key} is not a CSV (uploads must end in .csv)")

    # The event names the version in a versioned bucket (the template's): a repeated delivery then finds its run
    # without reading the object, which may be gone since the first delivery recorded the run and died before
    # starting it.
    read = None if obj.version_id else _head(svc, bucket, obj.key, None)
    version_id = obj.version_id or (read[1] if read else {}).get("VersionId") or "null"
    run_id = run_id_for(obj.key, version_id, obj.sequencer)
    existing = svc.ledger.get_run(run_id)
    if existing is not None:
        # A repeated delivery: make sure its execution exists and its start was told (a crash may have come between
        # recording the run, starting it and telling of it).
        return _ensure_started(svc, existing, duplicate=True)
    key, head = read or _head(svc, bucket, obj.key, obj.version_id)
    if head.get("ContentLength") == 0:
        raise Rejected(f"s3://{bucket}/{key} is empty: there is nothing to run")
    manifest, metadata = _manifest(svc, bucket, key), head.get("Metadata", {})
    try:
        options = build_run_options(
            manifest,
            metadata,
            svc.settings.default_deadline_hours,
            svc.settings.hpc_nodes,
        )
    except InvalidRunOptions as exc:
        raise Rejected(f"invalid run options: {exc}") from exc
    _refuse_what_the_stack_cannot_run(svc, options)

    # The deadline counts from the upload, not from when its event is handled (EventBridge retries an event for up
    # to an hour, Lambda for hours more).
    uploaded_at = happened_at(parsed.time)
    run = Run(
        run_id=run_id,
        bucket=bucket,
        key=key,
        version_id=version_id,
        deadline_at=format_time(uploaded_at + timedelta(hours=options.deadline_hours)),
        deadline_hours=options.deadline_hours,
        started_at=format_time(uploaded_at),
        stage_hours=options.stage_hours,
        hpc_mode=options.hpc_mode,
        hpc_nodes=options.hpc_nodes,
        options_from=options_source(manifest, metadata),
    )
    stages = [
        Stage(
            run_id=run_id,
            stage=spec.name,
            order=spec.order,
            compute_hours=options.stage_hours[spec.name],
            spot_allowed=spec.spot_allowed,
            nodes=spec.nodes,
            retry_budget=svc.settings.stage_retry_budget,
        )
        for spec in stage_specs(options)
    ]
    try:
        svc.ledger.create_run(run, stages)
    except LedgerConflict:
        existing = svc.ledger.get_run(run_id)
        assert existing is not None
        return _ensure_started(svc, existing, duplicate=True)
    return _ensure_started(svc, run, duplicate=False)


def _refuse_a_manifest_after_its_csv(svc: Services, key: str, uploaded_at: datetime) -> None:
    """A manifest uploaded just after its CSV (`aws s3 sync` sends `data.csv` before `data.manifest.json`) came too late
    for the run that CSV started without it: the run goes on with the options it took, and the team is told, or the
    deadline they meant to set would silently not be the one kept. A run that read a manifest, was uploaded after this
    one, or long before it (`LATE_MANIFEST_WINDOW`: the manifest is then the next upload's), is none of its concern."""
    late = [
        run
        for run in svc.ledger.open_runs()
        if manifest_key(run.key) == key
        and run.options_from in ("metadata", "defaults")
        and timedelta(0) <= uploaded_at - parse_time(run.started_at) <= LATE_MANIFEST_WINDOW
    ]
    if late:
        runs = "; ".join(
            f"run {run.run_id} of {run.key}, uploaded {run.started_at}, goes on with the options from "
            f"{OPTIONS_FROM_WORDS[run.options_from or 'defaults']} (deadline {run.deadline_hours:g} h)"
            for run in late
        )
        raise Rejected(
            f"manifest {key} came after its CSV: {runs}. It applies to the CSV's next upload (upload the CSV again "
            "to run with it)",
            title="Manifest not applied",
        )


def _refuse_what_the_stack_cannot_run(svc: Services, options: RunOptions) -> None:
    """Options valid in themselves that this stack cannot see through: refused now, not found out hours later."""
    # Every ledger item expires the retention after it is written (DynamoDB TTL): a run the state machine may still
    # wait on by then would lose its run, stages and jobs half way, and its jobs' events would settle nothing.
    longest_wait_hours = stage_timeout_seconds(options.deadline_hours, options.stage_hours) / 3600
    if longest_wait_hours > svc.settings.ledger_retention_days * 24:
        raise Rejected(
            f"deadline {options.deadline_hours:g} h: the run may go on for {longest_wait_hours:g} h, longer than the "
            f"ledger keeps its records ({svc.settings.ledger_retention_days} days; raise the stack's "
            "LedgerRetentionDays or set a shorter deadline)"
        )
    # A multi-node job starts only once all its nodes fit in its compute environment: one that cannot fit waits
    # RUNNABLE, and the stage with it, until the stage's timeout, holding up the HPC queue meanwhile.
    vcpus = options.hpc_nodes * HPC_NODE_VCPUS
    if options.hpc_mode == "multinode" and vcpus > svc.settings.hpc_max_vcpus:
        raise Rejected(
            f"HPC on {options.hpc_nodes} nodes needs {vcpus} vCPUs, more than the HPC compute environment's "
            f"{svc.settings.hpc_max_vcpus} (the stack's HpcMaxVcpus): ask for at most "
            f"{svc.settings.hpc_max_vcpus // HPC_NODE_VCPUS} nodes, or raise HpcMaxVcpus"
        )


def _ensure_started(svc: Services, run: Run, duplicate: bool) -> dict[str, Any]:
    """Starts the run's execution and tells of it, each once however often the upload's event comes."""
    execution_arn, _ = svc.pipeline.start(run.run_id, stage_timeout_seconds(run.deadline_hours, run.stage_hours))
    if run.execution_arn != execution_arn:
        svc.ledger.update_run(run.run_id, execution_arn=execution_arn)
    options_from = f"; options from {OPTIONS_FROM_WORDS[run.options_from]}" if run.options_from else ""
    reason = f"{run.key} (deadline {run.deadline_hours:g} h, HPC {run.hpc_mode} x{run.hpc_nodes}{options_from})"
    # A notice another delivery of the event is sending is left to it (or, should that one die, to the SLA guard).
    notify(svc, "started", run, None, reason)
    return {"status": "duplicate" if duplicate else "started", "run_id": run.run_id, "execution_arn": execution_arn}


def _head(svc: Services, bucket: str, key: str, version_id: str | None) -> tuple[str, dict[str, Any]]:
    """The upload's key and metadata. S3 may give the key URL-encoded in its event ("my run.csv" as "my+run.csv", as
    its other notifications do): the key as given is read first, then decoded."""
    unreadable: UploadUnreadable | None = None
    for candidate in dict.fromkeys((key, unquote_plus(key))):
        try:
            return candidate, svc.uploads.head(bucket, candidate, version_id)
        except UploadUnreadable as exc:
            unreadable = unreadable or exc
    assert unreadable is not None
    raise Rejected(f"s3://{bucket}/{key} cannot be read ({unreadable.code})") from unreadable


class _NameGivenTwice(Exception):
    """A JSON object of the manifest names a member twice (the JSON parser would keep the last, silently)."""


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise _NameGivenTwice(name)
        seen.add(name)
    return dict(pairs)


def _manifest(svc: Services, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        raw = svc.uploads.read_small(bucket, manifest_key(key), MAX_MANIFEST_BYTES)
    except UploadTooLarge as exc:
        raise Rejected(f"manifest {manifest_key(key)} is {exc}: a manifest holds run options only") from exc
    if raw is None:
        return None
    try:
        manifest = json.loads(raw, object_pairs_hook=_object_once)
    # ValueError: JSONDecodeError, UnicodeDecodeError, and an integer of more digits than Python converts (4,300).
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"manifest {manifest_key(key)} is not valid JSON: {exc}") from exc
    except _NameGivenTwice as exc:
        raise Rejected(
            f"manifest {manifest_key(key)}: {exc} is given twice (which one was meant is anyone's guess)"
        ) from exc
    if not isinstance(manifest, dict):
        raise Rejected(f"manifest {manifest_key(key)} must be a JSON object")
    return manifest
