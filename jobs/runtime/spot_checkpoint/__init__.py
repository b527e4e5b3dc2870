"""Checkpoint/restart runtime for AWS Batch jobs on Spot.

AWS Batch passes the two-minute Spot warning to no container and gives a resubmitted job a new job id, so a job
watches for the end itself and keeps its checkpoints under its pipeline run and stage, never its job id.

Key layout under the stage prefix the control plane passes as ``CHECKPOINT_URI``
(``s3://<bucket>/checkpoints/<run_id>/<stage>/``)::

    <prefix>request.json                          the control plane's checkpoint request (REQUEST_NAME)
    <prefix><part>/<seq>/<writer>/<payload name>  payloads of checkpoint <seq> (10-digit, increasing), written first
    <prefix><part>/<seq>/manifest.json            commit marker (MANIFEST_NAME), written last, only if absent

``<part>`` is ``main`` (single container), ``node-<i>`` (multi-node parallel, AWS_BATCH_JOB_NODE_INDEX) or
``shard-<i>`` (array job, AWS_BATCH_JOB_ARRAY_INDEX). The manifest is JSON: ``format``, ``seq``, ``part``,
``parts_total``, ``progress`` (0..1), ``work_seconds``, ``created_at``, ``request_id`` (the request this checkpoint
honoured), ``final``, ``writer`` (the token of the save that wrote it), ``payloads`` (name -> key, size, sha256) and
the job's ``meta``. A checkpoint is complete only when its manifest exists and every payload matches it; readers fall
back to the previous complete one otherwise.

The checkpoint request (``request.json``): ``{"request_id": "<hex>", "reason": "...", "requested_at": <epoch s>,
"attempt": <stage attempt>, "stop": false}`` (``attempt`` absent: any attempt; ``stop`` absent: true). Every part of
the stage checkpoints when it sees a request id its latest checkpoint has not honoured yet, unless the request is for
an earlier attempt than its own, and then stops, or with ``"stop": false`` (a rebalance recommendation) works on; a
request whose ``attempt`` is not a whole number in ASCII digits, or whose ``stop`` is not a JSON boolean, is
unreadable and ignored.

Exit codes: :data:`EXIT_CHECKPOINTED` (86) = stopped on a Spot notice, a request or SIGTERM after writing a complete
checkpoint, or with no work since the latest one (a SIGTERM before the first unit): resubmit, the next attempt
resumes. :data:`EXIT_STOPPED_WITHOUT_CHECKPOINT` (87) = stopped for the same reasons but the checkpoint could not be
written: resubmit, the next attempt resumes from an older checkpoint. :data:`EXIT_S3_UNAVAILABLE` (88) = S3 stayed
throttled or failing past the start's retries (:class:`StartRetry`), before any work: resubmit, not an interruption.

Control plane / emulator side::

    store = CheckpointStore(s3_client, "s3://bucket/checkpoints/run-1/hpc/")
    progress(s3_client, store.uri)          # stage fraction done from manifests, or None
    part_progress(s3_client, store.uri)     # each part's fraction done, and the stage's part count
    store.request_checkpoint("spot interruption warning for i-0abc")
    store.cleanup()                         # after the stage succeeded

Job side: :class:`CheckpointedJob` (see its docstring), configured from the environment (``ENV_*`` constants).
"""

from .csvfields import column_positions, csv_number
from .entrypoint import EXIT_INPUT_ERROR, fraction, positive_number, run_job, whole_number
from .errors import InputError
from .imds import InstanceMetadata, MetadataUnavailable
from .job import (
    ENV_ARRAY_INDEX,
    ENV_CHECKPOINT_URI,
    ENV_INTERVAL_SECONDS,
    ENV_KEEP,
    ENV_MAX_INTERVAL_SECONDS,
    ENV_MAX_OVERHEAD,
    ENV_METADATA_DISABLED,
    ENV_METADATA_ENDPOINT,
    ENV_MIN_INTERVAL_SECONDS,
    ENV_NODE_INDEX,
    ENV_NUM_NODES,
    ENV_PARTS,
    ENV_POLL_SECONDS,
    EVENT_KEY,
    EXIT_CHECKPOINTED,
    EXIT_S3_UNAVAILABLE,
    EXIT_STOPPED_WITHOUT_CHECKPOINT,
    MAX_POLL_SECONDS,
    MIN_POLL_SECONDS,
    CheckpointedJob,
    CheckpointInterval,
    RuntimeConfig,
    StartRetry,
    Stopped,
    log_event_to_stderr,
)
from .objects import join_uri, list_keys, list_objects, open_object, read_object, write_object
from .store import (
    DEFAULT_PART,
    MANIFEST_NAME,
    REQUEST_NAME,
    STATE_PAYLOAD,
    Checkpoint,
    CheckpointError,
    CheckpointRequest,
    CheckpointStore,
    CheckpointStoreUnavailable,
    parse_s3_uri,
    part_name,
    part_progress,
    progress,
)
from .watch import (
    REASON_CHECKPOINT_REQUEST,
    REASON_S3_UNAVAILABLE,
    REASON_SIGTERM,
    REASON_SPOT_INTERRUPTION,
    InterruptionWatcher,
    SigtermRecorder,
    StopSignal,
    sigterm_recorded,
)

__all__ = [
    "DEFAULT_PART",
    "ENV_ARRAY_INDEX",
    "ENV_CHECKPOINT_URI",
    "ENV_INTERVAL_SECONDS",
    "ENV_KEEP",
    "ENV_MAX_INTERVAL_SECONDS",
    "ENV_MAX_OVERHEAD",
    "ENV_METADATA_DISABLED",
    "ENV_METADATA_ENDPOINT",
    "ENV_MIN_INTERVAL_SECONDS",
    "ENV_NODE_INDEX",
    "ENV_NUM_NODES",
    "ENV_PARTS",
    "ENV_POLL_SECONDS",
    "EVENT_KEY",
    "EXIT_CHECKPOINTED",
    "EXIT_INPUT_ERROR",
    "EXIT_S3_UNAVAILABLE",
    "EXIT_STOPPED_WITHOUT_CHECKPOINT",
    "MANIFEST_NAME",
    "MAX_POLL_SECONDS",
    "MIN_POLL_SECONDS",
    "REASON_CHECKPOINT_REQUEST",
    "REASON_S3_UNAVAILABLE",
    "REASON_SIGTERM",
    "REASON_SPOT_INTERRUPTION",
    "REQUEST_NAME",
    "STATE_PAYLOAD",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInterval",
    "CheckpointRequest",
    "CheckpointStore",
    "CheckpointStoreUnavailable",
    "CheckpointedJob",
    "InputError",
    "InstanceMetadata",
    "InterruptionWatcher",
    "MetadataUnavailable",
    "RuntimeConfig",
    "SigtermRecorder",
    "StartRetry",
    "StopSignal",
    "Stopped",
    "column_positions",
    "csv_number",
    "fraction",
    "join_uri",
    "list_keys",
    "list_objects",
    "log_event_to_stderr",
    "open_object",
    "parse_s3_uri",
    "part_name",
    "part_progress",
    "positive_number",
    "progress",
    "read_object",
    "run_job",
    "sigterm_recorded",
    "whole_number",
    "write_object",
]
