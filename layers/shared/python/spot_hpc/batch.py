"""AWS Batch, ECS and EC2 calls of the control plane, each bounded and throttling-aware (clients are injected)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from spot_hpc.clock import as_utc

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids.
DESCRIBE_CONTAINER_INSTANCES = 100  # DescribeContainerInstances takes at most 100 ARNs.
# DescribeInstances refuses more than 200 filter values in one call (FilterLimitExceeded).
DESCRIBE_INSTANCES_FILTER_VALUES = 200
# EC2's StateReason codes for an instance it interrupted for Spot: terminated, or stopped where the interruption
# behaviour is to stop ("Find interrupted Spot Instances", EC2 User Guide).
SPOT_INTERRUPTION_CODES = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
# EC2's states of an instance that is ending or has ended.
ENDED_INSTANCE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
# A SubmitJob Batch refused for its rate (nothing submitted) is sent again, as the clients' standard retries would:
# at most this many times in all, after up to 1, 2, 4 s (a call's whole retry time stays what `spot_hpc.aws` bounds).
SUBMIT_THROTTLED_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling"})
SUBMIT_ATTEMPTS = 4


@dataclass(frozen=True)
class JobRequest:
    name: str
    queue: str
    definition: str
    environment: Mapping[str, str]
    tags: Mapping[str, str]
    parameters: Mapping[str, str]
    array_size: int | None = None
    num_nodes: int | None = None
    # Replaces the job definition's timeout: Batch ends an attempt running longer (a hung job).
    attempt_timeout_seconds: int | None = None


@dataclass(frozen=True)
class Ec2Instance:
    """What the control plane needs of an EC2 instance a job ran on: what it is and where (its price), when it was
    launched and how it ended (whether EC2 interrupted it within its first hour, which AWS does not charge)."""

    instance_type: str
    availability_zone: str
    launched_at: datetime
    state: str = ""  # EC2's name of its state ("running", "terminated", ...); "" where not told
    state_reason: str = ""  # the code of EC2's reason for its last change of state; "" where none

    @property
    def ended(self) -> bool:
        return self.state in ENDED_INSTANCE_STATES

    @property
    def interrupted_by_spot(self) -> bool:
        """EC2 took the instance back: its owner, Batch scaling in, did not end it first."""
        return self.ended and self.state_reason in SPOT_INTERRUPTION_CODES


class BatchGateway:
    def __init__(self, batch_client: Any, ecs_client: Any, ec2_client: Any, submit_client: Any = None) -> None:
        self._batch = batch_client
        # SubmitJob's own client: it must send each call once (`spot_hpc.aws.client_sending_once`).
        self._submit = submit_client or batch_client
        self._ecs = ecs_client
        self._ec2 = ec2_client

    def submit(self, request: JobRequest) -> str:
        env = [{"name": k, "value": v} for k, v in sorted(request.environment.items())]
        kwargs: dict[str, Any] = {
            "jobName": request.name,
            "jobQueue": request.queue,
            "jobDefinition": request.definition,
            "parameters": dict(request.parameters),
            "tags": dict(request.tags),
            "propagateTags": True,
        }
        if request.num_nodes:
            kwargs["nodeOverrides"] = {
                "numNodes": request.num_nodes,
                "nodePropertyOverrides": [{"targetNodes": "0:", "containerOverrides": {"environment": env}}],
            }
        else:
            kwargs["containerOverrides"] = {"environment": env}
        if request.array_size and request.array_size > 1:
            kwargs["arrayProperties"] = {"size": request.array_size}
        if request.attempt_timeout_seconds:
            kwargs["timeout"] = {"attemptDurationSeconds": request.attempt_timeout_seconds}
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return str(self._submit.submit_job(**kwargs)["jobId"])
            except ClientError as exc:
                throttled = exc.response.get("Error", {}).get("Code") in SUBMIT_THROTTLED_CODES or (
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 429
                )
                if not throttled or attempt == SUBMIT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.0, 2.0 ** (attempt - 1)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def find_jobs_named(self, queue: str, name: str) -> list[str]:
        """Jobs of that name on the queue, any status (crash recovery: did the lost call go through?)."""
        paginator = self._batch.get_paginator("list_jobs")
        ids: list[str] = []
        for page in paginator.paginate(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name]}]):
            ids.extend(job["jobId"] for job in page.get("jobSummaryList", []) if job.get("jobName") == name)
        return ids

    def array_children(self, array_job_id: str, *statuses: str) -> list[dict[str, Any]]:
        """The children of an array job in these statuses, described (ListJobs lists children only when asked by
        arrayJobId, and one status at a time)."""
        paginator = self._batch.get_paginator("list_jobs")
        ids: list[str] = []
        for status in statuses:
            for page in paginator.paginate(arrayJobId=array_job_id, jobStatus=status):
                ids.extend(job["jobId"] for job in page.get("jobSummaryList", []))
        return list(self.describe(ids).values())

    def multinode_nodes(self, job_id: str, num_nodes: int) -> list[dict[str, Any]]:
        """The nodes of a multi-node parallel job, described (DescribeJobs of `<job id>#<index>`, 0 to `num_nodes` - 1:
        each node's container instance is told of the node only). A node Batch does not know is left out."""
        return list(self.describe(f"{job_id}#{index}" for index in range(num_nodes)).values())

    def terminate(self, job_id: str, reason: str) -> None:
        self._batch.terminate_job(jobId=job_id, reason=reason[:256])

    def describe(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), DESCRIBE_BATCH):
            for job in self._batch.describe_jobs(jobs=ids[start : start + DESCRIBE_BATCH]).get("jobs", []):
                found[job["jobId"]] = job
        return found

    def instance_ids(self, container_instance_arns: Iterable[str]) -> list[str]:
        """EC2 instance ids behind ECS container instances (one DescribeContainerInstances call per cluster)."""
        return list(self.instances_of(container_instance_arns).values())

    def instances_of(self, container_instance_arns: Iterable[str]) -> dict[str, str]:
        """{container instance ARN: the EC2 instance id behind it} (one DescribeContainerInstances call per cluster,
        of at most DESCRIBE_CONTAINER_INSTANCES ARNs)."""
        by_cluster: dict[str, list[str]] = {}
        for arn in dict.fromkeys(container_instance_arns):
            # arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<id>
            resource = arn.split(":", 5)[-1]
            parts = resource.split("/")
            if len(parts) == 3:
                by_cluster.setdefault(parts[1], []).append(arn)
        found: dict[str, str] = {}
        for cluster, arns in by_cluster.items():
            for start in range(0, len(arns), DESCRIBE_CONTAINER_INSTANCES):
                described = self._ecs.describe_container_instances(
                    cluster=cluster, containerInstances=arns[start : start + DESCRIBE_CONTAINER_INSTANCES]
                )
                found.update(
                    (ci["containerInstanceArn"], ci["ec2InstanceId"])
                    for ci in described.get("containerInstances", [])
                    if ci.get("ec2InstanceId") and ci.get("containerInstanceArn")
                )
        return found

    def describe_instances(self, instance_ids: Iterable[str]) -> dict[str, Ec2Instance]:
        """What EC2 says of each instance it still describes (a terminated one, for about an hour), with its state and
        why it changed last (EC2 names an interruption so: `Ec2Instance.interrupted_by_spot`). Asked by filter,
        not by id: an unknown id then leaves the instance out instead of failing the whole call; at most
        DESCRIBE_INSTANCES_FILTER_VALUES ids a call (an array's shards may have run on many more instances)."""
        ids = sorted(set(instance_ids))
        if not ids:
            return {}
        paginator = self._ec2.get_paginator("describe_instances")
        return {
            instance["InstanceId"]: Ec2Instance(
                instance_type=instance["InstanceType"],
                availability_zone=instance["Placement"]["AvailabilityZone"],
                launched_at=as_utc(instance["LaunchTime"]),
                state=instance.get("State", {}).get("Name", ""),
                state_reason=instance.get("StateReason", {}).get("Code", ""),
            )
            for start in range(0, len(ids), DESCRIBE_INSTANCES_FILTER_VALUES)
            for page in paginator.paginate(
                Filters=[{"Name": "instance-id", "Values": ids[start : start + DESCRIBE_INSTANCES_FILTER_VALUES]}]
            )
            for reservation in page.get("Reservations", [])
            for instance in reservation.get("Instances", [])
            if {"InstanceType", "LaunchTime"} <= instance.keys()
            and instance.get("Placement", {}).get("AvailabilityZone")
        }
