"""The events the control plane reacts to, as Powertools Parser models.

A payload that does not fit its model is rejected with the validation message and recorded, never guessed at.
"""

from __future__ import annotations

from typing import Literal

from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
)
from pydantic import BaseModel, ConfigDict, Field
from spot_checkpoint.csvfields import ascii_digits

__all__ = [
    "BatchJobStateChangeEvent",
    "EventBridgeModel",
    "JobStatus",
    "RebalanceRecommendationEvent",
    "S3EventNotificationEventBridgeModel",
    "SpotInterruptionEvent",
    "UploadEvent",
]

JobStatus = Literal["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]

# Batch events arrive out of order; a job's state only ever moves forward along this rank.
STATUS_RANK: dict[str, int] = {
    "SUBMITTED": 0,
    "PENDING": 1,
    "RUNNABLE": 2,
    "STARTING": 3,
    "RUNNING": 4,
    "SUCCEEDED": 5,
    "FAILED": 5,
}
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED"})
# The main node of the stack's multi-node parallel job definition (its MainNode): Batch ends the job with it.
MAIN_NODE_INDEX = 0


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class BatchContainerDetail(_Lenient):
    exit_code: int | None = Field(default=None, alias="exitCode")
    reason: str | None = None
    container_instance_arn: str | None = Field(default=None, alias="containerInstanceArn")
    task_arn: str | None = Field(default=None, alias="taskArn")


class BatchAttemptDetail(_Lenient):
    container: BatchContainerDetail | None = None
    started_at: int | None = Field(default=None, alias="startedAt")
    stopped_at: int | None = Field(default=None, alias="stoppedAt")
    status_reason: str | None = Field(default=None, alias="statusReason")


class BatchArrayProperties(_Lenient):
    """An array job's parent carries its size and its children's statuses; a child carries its index."""

    size: int | None = None
    index: int | None = None
    status_summary: dict[str, int] = Field(default_factory=dict, alias="statusSummary")


class BatchNodeProperties(_Lenient):
    """A multi-node parallel job's nodes: how many (Batch describes node `i` as the job `<job id>#<i>`)."""

    num_nodes: int | None = Field(default=None, alias="numNodes")


class BatchNodeDetails(_Lenient):
    """What a node of a multi-node parallel job carries: which node it is."""

    node_index: int | None = Field(default=None, alias="nodeIndex")
    is_main_node: bool | None = Field(default=None, alias="isMainNode")


class BatchJobDetail(_Lenient):
    job_id: str = Field(alias="jobId", min_length=1)
    job_name: str = Field(alias="jobName", min_length=1)
    job_queue: str = Field(alias="jobQueue", min_length=1)
    status: JobStatus
    status_reason: str | None = Field(default=None, alias="statusReason")
    created_at: int | None = Field(default=None, alias="createdAt")
    started_at: int | None = Field(default=None, alias="startedAt")
    stopped_at: int | None = Field(default=None, alias="stoppedAt")
    attempts: list[BatchAttemptDetail] = Field(default_factory=list)
    container: BatchContainerDetail | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, str] = Field(default_factory=dict)
    job_definition: str | None = Field(default=None, alias="jobDefinition")
    array_properties: BatchArrayProperties | None = Field(default=None, alias="arrayProperties")
    node_properties: BatchNodeProperties | None = Field(default=None, alias="nodeProperties")
    node_details: BatchNodeDetails | None = Field(default=None, alias="nodeDetails")

    @property
    def array_parent_id(self) -> str | None:
        """The array job this job is a child of (Batch names a child `<parent id>:<index>`); None otherwise."""
        parent, colon, index = self.job_id.partition(":")
        return parent if colon and ascii_digits(index) else None

    @property
    def multinode_parent_id(self) -> str | None:
        """The multi-node parallel job this job is a child node of (Batch names node `i` `<job id>#<i>`); None for
        any other job, and for the main node, whose end is the job's."""
        parent, hash_sign, index = self.job_id.partition("#")
        if not (hash_sign and ascii_digits(index)):
            return None
        main = self.node_details.is_main_node if self.node_details else None
        return None if (main if main is not None else int(index) == MAIN_NODE_INDEX) else parent

    @property
    def is_array_parent(self) -> bool:
        """Whether this is the parent of an array job (it carries the array's size and its children's statuses)."""
        return bool(self.array_properties and self.array_properties.size)

    @property
    def multinode_nodes(self) -> int:
        """The nodes of this multi-node parallel job, each run on an instance of its own that Batch tells of the node,
        not of the job (which names no container instance); 0 for any other job, and for a node itself."""
        if self.node_properties is None or self.node_details is not None:
            return 0
        return self.node_properties.num_nodes or 0

    @property
    def shards_running(self) -> int:
        """Children of this array job running now (an array's parent itself stays PENDING while they run)."""
        return self.array_properties.status_summary.get("RUNNING", 0) if self.array_properties else 0

    @property
    def shards_waiting(self) -> int:
        """Children of this array job queued for capacity now."""
        return self.array_properties.status_summary.get("RUNNABLE", 0) if self.array_properties else 0

    @property
    def exit_code(self) -> int | None:
        if self.container and self.container.exit_code is not None:
            return self.container.exit_code
        for attempt in reversed(self.attempts):
            if attempt.container and attempt.container.exit_code is not None:
                return attempt.container.exit_code
        return None

    @property
    def container_instance_arns(self) -> list[str]:
        arns = []
        if self.container and self.container.container_instance_arn:
            arns.append(self.container.container_instance_arn)
        return arns


class BatchJobStateChangeEvent(EventBridgeModel):
    source: Literal["aws.batch"]
    detail_type: Literal["Batch Job State Change"] = Field(alias="detail-type")
    detail: BatchJobDetail  # type: ignore[assignment]


class _InstanceDetail(_Lenient):
    """What both EC2 signals carry: the instance they are about."""

    instance_id: str = Field(alias="instance-id", pattern=r"^i-[0-9a-f]{8,17}$")


class SpotInterruptionDetail(_InstanceDetail):
    instance_action: str = Field(default="terminate", alias="instance-action")


class SpotInterruptionEvent(EventBridgeModel):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Spot Instance Interruption Warning"] = Field(alias="detail-type")
    detail: SpotInterruptionDetail  # type: ignore[assignment]


class RebalanceDetail(_InstanceDetail):
    pass


class RebalanceRecommendationEvent(EventBridgeModel):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance Rebalance Recommendation"] = Field(alias="detail-type")
    detail: RebalanceDetail  # type: ignore[assignment]


class UploadEvent(S3EventNotificationEventBridgeModel):
    """An object created in the ingest bucket (the rule sends no other S3 event; a deletion given by hand is refused
    here, not taken for an upload)."""

    source: Literal["aws.s3"]
    detail_type: Literal["Object Created"] = Field(alias="detail-type")
