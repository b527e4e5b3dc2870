"""AWS Batch on a virtual clock, with Spot capacity taken from a real trace.

What AWS Batch does and this emulator reproduces: jobs go SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING ->
SUCCEEDED | FAILED and every change after SUBMITTED is a "Batch Job State Change" event; a Spot job starts only
when the trace has capacity for all its nodes; two minutes before a reclaim EC2 sends a "Spot Instance Interruption
Warning" for the instance, and then terminates it (DescribeInstances gives the StateReason
Server.SpotInstanceTermination) whether or not its job stopped first; a job still running there fails with
statusReason "Host EC2 (instance i-...) terminated.";
TerminateJob fails a job with the given reason (a running one checkpoints on the SIGTERM and exits 86, as the
job runtime does); an attempt running past its timeout (attemptDurationSeconds, the submission's or else the job
definition's, from the attempt's startedAt) is ended the same way with statusReason "Job attempt duration exceeded
timeout", and never retried; neither is a terminated job. Any other failure Batch retries while the retry strategy
(the submission's, else the job definition's) has attempts left, unless the first evaluateOnExit rule it matches says
EXIT: a failure no rule matches is retried.
Each job runs a workload model: it needs `stage_hours` of compute, resumes from the stage's newest complete
checkpoint (the job runtime's own store, spot_checkpoint), checkpoints periodically, on the interruption notice (it
polls instance metadata) and when the control plane asks (then stopping, or working on when asked to), and exits
with the runtime's codes.
Each job launches an instance of its own, unless a test has Batch place jobs on the idle instances their compute
environment keeps (`reuses_idle_instances`), as AWS Batch does: an instance whose job ended without a warning.
A multi-node parallel job runs each node on an instance of its own. As in AWS Batch, the job's description names no
container instance (its container details do not apply); DescribeJobs of `<job id>#<index>` describes a node, with
its instance. Its nodes start and stop with the job, and send no events of their own, except a child node a test has
fail at its start (`failing_nodes`): its FAILED event is sent, and the job runs on without progress, its main node
waiting for that node's part, until it is terminated or times out.
moto's Batch runs jobs in Docker (or marks them succeeded at once); this emulator replaces its job methods.
"""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from spot_checkpoint import EXIT_CHECKPOINTED, EXIT_STOPPED_WITHOUT_CHECKPOINT
from spot_checkpoint.csvfields import ascii_digits
from spot_checkpoint.store import CheckpointRequest, CheckpointStore, part_name

from spotctl.cli import ToolError
from spotctl.offline.eventbus import ACCOUNT_ID, REGION, make_event
from spotctl.policy_sim.traces import load_trace

WARNING_LEAD = timedelta(minutes=2)
CONTAINER_EXITED = "Essential container in task exited"  # Batch's statusReason when the container's process ends
TIMED_OUT = "Job attempt duration exceeded timeout"  # Batch's statusReason for an attempt it ended at its timeout
DEFAULT_INSTANCE_TYPE = "c6i.4xlarge"  # for a compute environment that lists no instance types
SPOT_TERMINATION = "Server.SpotInstanceTermination"  # EC2's StateReason code for an instance it took back
START_DELAY = timedelta(minutes=4)  # instance launch + image pull + restore: the changeover the policy assumes


class TraceError(ValueError):
    """The Spot trace cannot be used."""


@dataclass
class SpotTrace:
    """Spot capacity over time from a trace file (`{"metadata": {"gap_seconds": N}, "data": [...]}`)."""

    path: Path
    gap_seconds: float
    data: list[int]
    start_index: int

    @classmethod
    def load(cls, path: Path, start_hour: float) -> SpotTrace:
        try:
            raw = load_trace(str(path))
        except ToolError as exc:
            raise TraceError(str(exc)) from exc
        # Compared before int(): a start past any trace (1e308 h) is out of range, not an OverflowError.
        start = start_hour * 3600 / raw.gap_seconds
        if not 0 <= start < len(raw.values):
            raise TraceError(f"{path}: start hour {start_hour} is outside the trace ({raw.hours:.0f} h)")
        return cls(path, raw.gap_seconds, list(raw.values), int(start))

    @property
    def hours(self) -> float:
        """The whole trace's length."""
        return len(self.data) * self.gap_seconds / 3600

    def capacity_at(self, hours: float) -> int:
        index = self.start_index + int(hours * 3600 / self.gap_seconds)
        return self.data[min(index, len(self.data) - 1)]

    def hours_available(self) -> float:
        return (len(self.data) - self.start_index) * self.gap_seconds / 3600


@dataclass
class EmulatedJob:
    job_id: str
    name: str
    queue: str
    definition: str
    capacity: str  # spot | on-demand
    nodes: int
    environment: dict[str, str]
    tags: dict[str, str]
    parameters: dict[str, str]
    created_at: datetime
    retry_strategy: dict[str, Any]
    is_multinode: bool = False
    array_size: int | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    # How long an attempt may run before Batch ends it; an array's children each have the whole of it.
    attempt_timeout: timedelta | None = None
    # An array job is a parent that never runs and one child per index ("<parent id>:<index>"), as in AWS Batch.
    parent_id: str | None = None
    array_index: int | None = None
    children: list[str] = field(default_factory=list)
    # The instances of the job's nodes by index once it started, (EC2 instance id, ECS container instance ARN) each:
    # one for every node of a multi-node job, one for any other job.
    node_instances: list[tuple[str, str]] = field(default_factory=list)
    status: str = "SUBMITTED"
    status_reason: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    runnable_since: datetime | None = None
    work_hours: float = 1.0
    progress: float = 0.0
    last_checkpoint: float = 0.0
    last_checkpoint_at: datetime | None = None
    instance_id: str | None = None
    container_instance_arn: str | None = None
    warned_at: datetime | None = None
    reclaim_at: datetime | None = None
    terminate_reason: str | None = None
    # A checkpoint request made before this job started was for an earlier job of the stage.
    seen_request_id: str | None = None
    # A multi-node job's child node that failed at its start: its index and exit code. The main node then waits for
    # its part, the job running on until it is terminated or times out, as in AWS Batch.
    failed_node: tuple[int, int] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.environment.get("STAGE") or self.parameters.get("stage", "")

    @property
    def capacity_needed(self) -> int:
        """Spot nodes the trace must have for this job to run: child `i` of an array holds the (i+1)-th node."""
        return self.array_index + 1 if self.array_index is not None else self.nodes

    def describe(self, status_summary: dict[str, int] | None = None) -> dict[str, Any]:
        def ms(value: datetime | None) -> int | None:
            return int(value.timestamp() * 1000) if value else None

        container: dict[str, Any] = {"environment": [{"name": k, "value": v} for k, v in self.environment.items()]}
        if self.container_instance_arn and not self.is_multinode:  # a multi-node job's nodes tell theirs
            container["containerInstanceArn"] = self.container_instance_arn
            container["taskArn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/batch/{self.job_id[:8]}"
        if self.exit_code is not None:
            container["exitCode"] = self.exit_code
        described = {
            "jobArn": f"arn:aws:batch:{REGION}:{ACCOUNT_ID}:job/{self.job_id}",
            "jobName": self.name,
            "jobId": self.job_id,
            "jobQueue": self.queue,
            "status": self.status,
            "statusReason": self.status_reason,
            "jobDefinition": self.definition,
            "createdAt": ms(self.created_at),
            "startedAt": ms(self.started_at),
            "stoppedAt": ms(self.stopped_at),
            "attempts": self.attempts,
            "container": container,
            "tags": self.tags,
            "parameters": self.parameters,
            "dependsOn": [],
            "propagateTags": True,
            "platformCapabilities": ["EC2"],
        }
        if self.is_multinode:
            described["nodeProperties"] = {"numNodes": self.nodes, "mainNode": 0}
        if self.array_size:
            described["arrayProperties"] = {"size": self.array_size, "statusSummary": status_summary or {}}
        elif self.array_index is not None:
            described["arrayProperties"] = {"index": self.array_index}
        return {k: v for k, v in described.items() if v is not None}

    def describe_node(self, index: int) -> dict[str, Any]:
        """Node `index` of a multi-node job, as DescribeJobs tells `<job id>#<index>`: the job's status and times (its
        nodes start and stop with it here) and the instance the node runs on, once it has one."""
        described = self.describe()
        node_id = f"{self.job_id}#{index}"
        container = {k: v for k, v in described["container"].items() if k in ("environment", "exitCode")}
        if index < len(self.node_instances):
            container["containerInstanceArn"] = self.node_instances[index][1]
            container["taskArn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/batch/{self.job_id[:8]}-{index}"
        if self.failed_node is not None and self.failed_node[0] == index:
            described = described | {"status": "FAILED", "statusReason": CONTAINER_EXITED}
            container["exitCode"] = self.failed_node[1]
        return {
            **described,
            "jobId": node_id,
            "jobArn": f"arn:aws:batch:{REGION}:{ACCOUNT_ID}:job/{node_id}",
            "container": container,
            "nodeDetails": {"nodeIndex": index, "isMainNode": index == 0},
        }


class BatchEmulator:
    """Holds the jobs; `advance(to)` moves them along the virtual clock and emits their events through `emit`."""

    def __init__(
        self,
        trace: SpotTrace,
        stage_hours: dict[str, float],
        emit: Callable[[dict[str, Any]], object],
        now: Callable[[], datetime],
        checkpoint_interval: timedelta = timedelta(minutes=30),
        failing_stages: dict[str, int] | None = None,
        failing_nodes: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.trace = trace
        self.stage_hours = stage_hours
        # Stages whose workload has a bug: every attempt exits with this code after its first step of work.
        self.failing_stages = failing_stages or {}
        # Multi-node stages whose first job has a child node fail at its start: (node index, exit code).
        self.failing_nodes = dict(failing_nodes or {})
        self._emit = emit
        self._now = now
        self.t0 = now()
        self.checkpoint_interval = checkpoint_interval
        self.jobs: dict[str, EmulatedJob] = {}
        self._image_id: str | None = None
        # The instance type launched by capacity, in place of the job's compute environment's first (a test's
        # environment picking another of its types).
        self.instance_types: dict[str, str] = {}
        # Batch places a job on an idle instance of its compute environment when it has one, as AWS Batch does (a
        # test's choice: by default each job launches an instance of its own). Idle instances by capacity and type.
        self.reuses_idle_instances = False
        self._idle: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._s3 = boto3.client("s3", region_name=REGION)
        self._ec2 = boto3.client("ec2", region_name=REGION)
        self._ecs = boto3.client("ecs", region_name=REGION)
        self.timeline: list[tuple[datetime, str]] = []
        # Instances EC2 warned of, with when it takes them back: on time, whether or not their jobs stopped first.
        self._reclaims: list[tuple[datetime, list[str]]] = []

    # ------------------------------------------------------------------ the API moto's backend delegates to
    def submit(self, backend: Any, kwargs: dict[str, Any]) -> dict[str, str]:
        queue = backend.get_job_queue(kwargs["jobQueue"])
        definition = backend.get_job_definition(kwargs["jobDefinition"])
        if queue is None or definition is None:
            from moto.batch.exceptions import ClientException

            raise ClientException(
                f"job queue or job definition not found: {kwargs['jobQueue']}, {kwargs['jobDefinition']}"
            )
        env_entries = (kwargs.get("containerOverrides") or {}).get("environment") or []
        for override in (kwargs.get("nodeOverrides") or {}).get("nodePropertyOverrides", []):
            env_entries = override.get("containerOverrides", {}).get("environment", env_entries)
        environments = [
            ce
            for ce in (backend.get_compute_environment(o["computeEnvironment"]) for o in queue.env_order_json)
            if ce is not None
        ]
        compute_types = {ce.compute_resources.get("type") for ce in environments}
        # Batch launches one of the environment's types; the emulator, the first (the one the stack prices by).
        listed = [t for ce in environments for t in ce.compute_resources.get("instanceTypes") or []]
        is_multinode = definition.type == "multinode"
        if is_multinode and "SPOT" in compute_types:
            from moto.batch.exceptions import ClientException

            raise ClientException("multi-node parallel jobs cannot run on a Spot compute environment")
        node_count = (
            int(
                (kwargs.get("nodeOverrides") or {}).get("numNodes")
                or (definition.node_properties or {}).get("numNodes", 1)
            )
            if is_multinode
            else 1
        )
        array_size = (kwargs.get("arrayProperties") or {}).get("size")
        timeout = (kwargs.get("timeout") or definition.timeout or {}).get("attemptDurationSeconds")
        job = EmulatedJob(
            job_id=str(uuid.uuid4()),
            name=kwargs["jobName"],
            queue=queue.arn,
            definition=definition.arn,
            capacity="spot" if "SPOT" in compute_types else "on-demand",
            nodes=int(array_size or node_count),
            environment={e["name"]: e["value"] for e in env_entries},
            tags=dict(kwargs.get("tags") or {}),
            parameters={**(definition.parameters or {}), **(kwargs.get("parameters") or {})},
            created_at=self._now(),
            retry_strategy=kwargs.get("retryStrategy") or definition.retry_strategy or {},
            is_multinode=is_multinode,
            array_size=array_size,
            instance_type=listed[0] if listed else DEFAULT_INSTANCE_TYPE,
            attempt_timeout=timedelta(seconds=int(timeout)) if timeout else None,
        )
        job.work_hours = self.stage_hours.get(job.stage, 1.0)
        self.jobs[job.job_id] = job
        for index in range(array_size or 0):
            child = replace(
                job,
                job_id=f"{job.job_id}:{index}",
                nodes=1,
                environment={**job.environment, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)},
                array_size=None,
                parent_id=job.job_id,
                array_index=index,
                children=[],
                attempts=[],
            )
            self.jobs[child.job_id] = child
            job.children.append(child.job_id)
        self._log(f"submit   {job.stage:<11} {job.capacity:<9} x{job.nodes} {job.name}")
        return {"jobId": job.job_id, "jobName": job.name, "jobArn": job.describe()["jobArn"]}

    def describe(self, job_ids: list[str]) -> list[dict[str, Any]]:
        described = []
        for job_id in job_ids:
            parent_id, node, index = job_id.partition("#")
            job = self.jobs.get(parent_id)
            if job is None:
                continue
            if not node:
                described.append(self._describe(job))
            elif job.is_multinode and ascii_digits(index) and int(index) < job.nodes:
                described.append(job.describe_node(int(index)))
        return described

    def _describe(self, job: EmulatedJob) -> dict[str, Any]:
        if not job.children:
            return job.describe()
        summary: dict[str, int] = {}
        for child_id in job.children:
            status = self.jobs[child_id].status
            summary[status] = summary.get(status, 0) + 1
        return job.describe(summary)

    def list(
        self, queue: str | None, status: str | None, name: str | None, array_job_id: str | None = None
    ) -> list[dict[str, Any]]:
        found = []
        for job in self.jobs.values():
            if job.parent_id != array_job_id:  # ListJobs lists an array's children only when asked by arrayJobId
                continue
            if queue and queue not in (job.queue, job.queue.rsplit("/", 1)[-1]):
                continue
            if status and job.status != status:
                continue
            if name and not fnmatch.fnmatch(job.name, name):
                continue
            found.append(
                {
                    "jobId": job.job_id,
                    "jobName": job.name,
                    "status": job.status,
                    "jobArn": job.describe()["jobArn"],
                    "createdAt": int(job.created_at.timestamp() * 1000),
                }
            )
        return found

    def terminate(self, job_id: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.status in ("SUCCEEDED", "FAILED"):
            return
        job.terminate_reason = reason or "Terminated"
        for child_id in job.children:  # terminating an array terminates its children
            self.terminate(child_id, reason)

    # ------------------------------------------------------------------ the clock
    def hours(self, at: datetime | None = None) -> float:
        return ((at or self._now()) - self.t0).total_seconds() / 3600

    def spot_capacity(self, at: datetime | None = None) -> int:
        return self.trace.capacity_at(self.hours(at))

    def next_reclaim(self, after: datetime, nodes: int, horizon: timedelta) -> datetime | None:
        step = timedelta(seconds=self.trace.gap_seconds)
        t = after
        while t <= after + horizon:
            if self.spot_capacity(t) < nodes:
                return t
            t += step
        return None

    def advance(self, now: datetime, step: timedelta) -> None:
        """Moves every job along by `step` ending at `now` (the caller has already moved the clock)."""
        self._carry_out_reclaims(now)
        for job in list(self.jobs.values()):
            self._advance_job(job, now, step)

    def _advance_job(self, job: EmulatedJob, now: datetime, step: timedelta) -> None:
        if job.status in ("SUCCEEDED", "FAILED"):
            return
        if job.children:
            self._advance_array(job)
            return
        if job.terminate_reason:
            exit_code = self._stop_on_sigterm(job, now, "terminate") if job.status == "RUNNING" else None
            self._finish(job, "FAILED", job.terminate_reason, exit_code=exit_code, retryable=False)
            return
        if job.status == "SUBMITTED":
            self._set(job, "PENDING")
            self._set(job, "RUNNABLE")
            job.runnable_since = now
            return
        if job.status == "RUNNABLE":
            if job.capacity == "spot" and self.spot_capacity(now) < job.capacity_needed:
                return
            if now - (job.runnable_since or now) < START_DELAY and job.capacity == "on-demand":
                return
            self._start(job, now)
            return
        if job.status == "RUNNING":
            self._run(job, now, step)

    def _start(self, job: EmulatedJob, now: datetime) -> None:
        self._set(job, "STARTING")
        # A multi-node job gets an instance for each node; its main node's (node 0's) stands for the job.
        job.node_instances = [self._launch(job) for _ in range(job.nodes if job.is_multinode else 1)]
        job.instance_id, job.container_instance_arn = job.node_instances[0]
        job.started_at = now
        store = self._store(job)
        pending = store.pending_request() if store else None
        job.seen_request_id = pending.request_id if pending else None
        restored = self._restore(job)
        job.progress = job.last_checkpoint = restored
        job.last_checkpoint_at = now
        if job.capacity == "spot":
            horizon = timedelta(hours=job.work_hours * (1 - restored) + 1)
            job.reclaim_at = self.next_reclaim(now, job.capacity_needed, horizon)
        self._set(job, "RUNNING")
        self._log(
            f"running  {job.stage:<11} {job.capacity:<9} on {job.instance_id}"
            + (f" (resumed at {restored:.0%})" if restored else "")
        )
        if job.is_multinode and job.stage in self.failing_nodes:
            job.failed_node = self.failing_nodes.pop(job.stage)
            node = job.describe_node(job.failed_node[0])
            self._log(f"failed   {job.stage:<11} node {job.failed_node[0]} (exit {job.failed_node[1]})")
            self._emit(make_event("aws.batch", "Batch Job State Change", node, [node["jobArn"]]))

    def _run(self, job: EmulatedJob, now: datetime, step: timedelta) -> None:
        if job.reclaim_at and job.warned_at is None and now >= job.reclaim_at - WARNING_LEAD:
            job.warned_at = now
            self._reclaims.append((job.reclaim_at, [instance_id for instance_id, _ in job.node_instances]))
            self._log(f"warning  {job.stage:<11} Spot interruption notice for {job.instance_id}")
            # The job's runtime sees the notice in instance metadata and checkpoints at once.
            self._checkpoint(job, now, "spot interruption notice")
            self._emit(
                make_event(
                    "aws.ec2",
                    "EC2 Spot Instance Interruption Warning",
                    {"instance-id": job.instance_id, "instance-action": "terminate"},
                    [f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/{job.instance_id}"],
                )
            )
            if job.terminate_reason or job.status != "RUNNING":
                return
        if job.reclaim_at and now >= job.reclaim_at:
            self._finish(job, "FAILED", f"Host EC2 (instance {job.instance_id}) terminated.", exit_code=None)
            return
        if job.attempt_timeout and job.started_at and now - job.started_at >= job.attempt_timeout:
            exit_code = self._stop_on_sigterm(job, now, "attempt timeout")
            self._finish(job, "FAILED", TIMED_OUT, exit_code=exit_code, retryable=False)
            return
        if job.warned_at is None and job.failed_node is None:  # the main node waits for a failed node's part
            job.progress = min(1.0, job.progress + step.total_seconds() / 3600 / job.work_hours)
        if job.stage in self.failing_stages:
            self._finish(job, "FAILED", CONTAINER_EXITED, exit_code=self.failing_stages[job.stage])
            return
        if job.progress >= 1.0:
            self._finish(job, "SUCCEEDED", CONTAINER_EXITED, exit_code=0)
            return
        if (request := self._new_request(job)) is not None:
            self._checkpoint(job, now, "control plane request", request.request_id)
            if request.stop:
                self._finish(job, "FAILED", CONTAINER_EXITED, exit_code=EXIT_CHECKPOINTED)
                return
            job.seen_request_id = request.request_id  # saved for it once, and working on
        if now - (job.last_checkpoint_at or now) >= self.checkpoint_interval:
            self._checkpoint(job, now, "periodic")

    def _advance_array(self, parent: EmulatedJob) -> None:
        """The parent of an array job: PENDING once its children are queued (AWS Batch never shows it RUNNABLE or
        RUNNING), then SUCCEEDED when every child succeeded, FAILED when all have ended and one failed."""
        if parent.status == "SUBMITTED":
            self._set(parent, "PENDING")
            return
        children = [self.jobs[child_id] for child_id in parent.children]
        if any(child.status not in ("SUCCEEDED", "FAILED") for child in children):
            return
        failed = [child for child in children if child.status == "FAILED"]
        parent.stopped_at = self._now()
        if failed:
            counted = f"{len(failed)} of {len(children)} array child jobs failed"
            parent.status_reason = parent.terminate_reason or counted
            self._log(f"failed   {parent.stage:<11} {parent.capacity:<9} {parent.status_reason}")
            self._set(parent, "FAILED")
        else:
            self._log(f"succeeded {parent.stage:<11} {parent.capacity:<9} all {len(children)} array child jobs")
            self._set(parent, "SUCCEEDED")

    # ------------------------------------------------------------------ checkpoints (the job runtime's store)
    def _store(self, job: EmulatedJob) -> CheckpointStore | None:
        uri = job.environment.get("CHECKPOINT_URI")
        if not uri:
            return None
        if job.array_index is None:
            return CheckpointStore(self._s3, uri)
        return CheckpointStore(self._s3, uri, part=part_name(shard_index=job.array_index))

    def _restore(self, job: EmulatedJob) -> float:
        store = self._store(job)
        latest = store.latest() if store else None
        return latest.progress if latest else 0.0

    def _checkpoint(self, job: EmulatedJob, now: datetime, why: str, request_id: str | None = None) -> None:
        """`request_id`: the control plane's request it saves for, recorded as the job runtime records it."""
        store = self._store(job)
        if store is None or job.status != "RUNNING" or job.progress <= job.last_checkpoint:
            return
        store.save(json.dumps({"progress": job.progress}).encode(), progress=job.progress, request_id=request_id)
        job.last_checkpoint, job.last_checkpoint_at = job.progress, now

    def _stop_on_sigterm(self, job: EmulatedJob, now: datetime, why: str) -> int:
        """The exit code of a running job Batch sends SIGTERM to: the job runtime takes it as a stop, checkpoints and
        exits 86, or 87 with no store."""
        self._checkpoint(job, now, f"{why} (SIGTERM)")
        return EXIT_CHECKPOINTED if self._store(job) else EXIT_STOPPED_WITHOUT_CHECKPOINT

    def _new_request(self, job: EmulatedJob) -> CheckpointRequest | None:
        """The control plane's checkpoint request the job has not yet acted on (to stop, or to save and go on)."""
        store = self._store(job)
        if store is None:
            return None
        request = store.pending_request()
        return request if request is not None and request.request_id != job.seen_request_id else None

    # ------------------------------------------------------------------ plumbing
    def _launch(self, job: EmulatedJob) -> tuple[str, str]:
        """An EC2 instance (Spot or On-Demand) registered as an ECS container instance, as Batch does; an idle one the
        job's compute environment kept, when Batch reuses them here."""
        instance_type = self.instance_types.get(job.capacity, job.instance_type)
        idle = self._idle.get((job.capacity, instance_type))
        if self.reuses_idle_instances and idle:
            return idle.pop(0)
        if self._image_id is None:
            self._image_id = self._ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            for cluster in ("spot-hpc-spot", "spot-hpc-on-demand"):
                self._ecs.create_cluster(clusterName=cluster)
        market = {"InstanceMarketOptions": {"MarketType": "spot"}} if job.capacity == "spot" else {}
        instance = self._ec2.run_instances(
            ImageId=self._image_id,
            MinCount=1,
            MaxCount=1,
            InstanceType=instance_type,
            **market,
        )["Instances"][0]
        # moto stamps the launch with the wall clock; the control plane reads it on the virtual one (a Spot instance
        # interrupted within its first hour is not charged).
        from moto.ec2.models import ec2_backends

        launched = self._now().astimezone(UTC).replace(tzinfo=None)  # naive UTC, as moto keeps it
        ec2_backends[ACCOUNT_ID][REGION].get_instance(instance["InstanceId"]).launch_time = launched
        registered = self._ecs.register_container_instance(
            cluster=f"spot-hpc-{job.capacity}",
            instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}),
        )
        return instance["InstanceId"], registered["containerInstance"]["containerInstanceArn"]

    def _carry_out_reclaims(self, now: datetime) -> None:
        """EC2 terminates the instances whose reclaim is due, and describes each as interrupted for Spot (its
        StateReason), as AWS does: the control plane reads that to know an instance was not its owner's to end."""
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.instances import StateReason

        due = [instance_id for at, instance_ids in self._reclaims if at <= now for instance_id in instance_ids]
        self._reclaims = [(at, instance_ids) for at, instance_ids in self._reclaims if at > now]
        if not due:
            return
        self._ec2.terminate_instances(InstanceIds=due)
        for instance_id in due:
            instance = ec2_backends[ACCOUNT_ID][REGION].get_instance(instance_id)
            instance.state_reason = StateReason(f"{SPOT_TERMINATION}: Spot instance termination", SPOT_TERMINATION)

    def _finish(
        self, job: EmulatedJob, status: str, reason: str, exit_code: int | None, retryable: bool = True
    ) -> None:
        job.stopped_at = self._now()
        if self.reuses_idle_instances and job.started_at is not None and job.warned_at is None:
            # Its instances stay, idle (a warned one's is about to be reclaimed).
            instance_type = self.instance_types.get(job.capacity, job.instance_type)
            self._idle.setdefault((job.capacity, instance_type), []).extend(job.node_instances)
        job.exit_code = exit_code
        job.attempts.append(
            {
                "container": {"exitCode": exit_code, "containerInstanceArn": job.container_instance_arn},
                "startedAt": int(job.started_at.timestamp() * 1000) if job.started_at else None,
                "stoppedAt": int(job.stopped_at.timestamp() * 1000),
                "statusReason": reason,
            }
        )
        if status == "FAILED" and retryable and self._batch_retries(job, reason, exit_code):
            return
        job.status_reason = reason
        self._log(
            f"{status.lower():<8} {job.stage:<11} {job.capacity:<9} {reason}"
            + (f" (exit {exit_code})" if exit_code is not None else "")
        )
        self._set(job, status)

    def _batch_retries(self, job: EmulatedJob, reason: str, exit_code: int | None) -> bool:
        """retryStrategy: while attempts remain, the first matching evaluateOnExit rule decides, and a failure no rule
        matches (or that of a strategy with no rules) is retried."""
        attempts = int(job.retry_strategy.get("attempts", 1))
        if len(job.attempts) >= attempts:
            return False
        action = "RETRY"
        for rule in job.retry_strategy.get("evaluateOnExit", []):
            if "onStatusReason" in rule and not fnmatch.fnmatchcase(reason, rule["onStatusReason"]):
                continue
            if "onReason" in rule and not fnmatch.fnmatchcase(reason, rule["onReason"]):
                continue
            if "onExitCode" in rule and not fnmatch.fnmatchcase(str(exit_code), rule["onExitCode"]):
                continue
            action = rule.get("action", "").upper()
            break
        if action != "RETRY":
            return False
        # The next attempt starts afresh: a new instance, and the last one's warning and reclaim are not its own.
        job.runnable_since, job.started_at, job.warned_at, job.reclaim_at = self._now(), None, None, None
        self._set(job, "RUNNABLE")
        return True

    def _set(self, job: EmulatedJob, status: str) -> None:
        job.status = status
        described = self._describe(job)
        self._emit(make_event("aws.batch", "Batch Job State Change", described, [described["jobArn"]]))

    def _log(self, text: str) -> None:
        self.timeline.append((self._now(), text))


def install(emulator_ref: Callable[[], BatchEmulator | None]) -> Callable[[], None]:
    """Routes the Batch job API (SubmitJob, DescribeJobs, ListJobs, TerminateJob, CancelJob) to the emulator.

    Patched at moto's response layer so the emulator sees the whole request (nodeOverrides, propagateTags, ...).
    Queues, compute environments and job definitions stay moto's, as the template created them.
    """
    from moto.batch.responses import BatchResponse

    names = ("submitjob", "describejobs", "listjobs", "terminatejob", "canceljob")
    originals = {name: getattr(BatchResponse, name) for name in names}

    def routed(name: str, handler: Callable[[Any, BatchEmulator], str]) -> Callable[[Any], str]:
        def method(self: Any) -> str:
            emulator = emulator_ref()
            return originals[name](self) if emulator is None else handler(self, emulator)

        return method

    def submit(self: Any, emulator: BatchEmulator) -> str:
        return json.dumps(emulator.submit(self.batch_backend, json.loads(self.body or "{}")))

    def describe(self: Any, emulator: BatchEmulator) -> str:
        return json.dumps({"jobs": emulator.describe(self._get_param("jobs") or [])})

    def list_jobs(self: Any, emulator: BatchEmulator) -> str:
        name = next((f["values"][0] for f in self._get_param("filters") or [] if f.get("name") == "JOB_NAME"), None)
        found = emulator.list(
            self._get_param("jobQueue"), self._get_param("jobStatus"), name, self._get_param("arrayJobId")
        )
        return json.dumps({"jobSummaryList": found})

    def terminate(self: Any, emulator: BatchEmulator) -> str:
        emulator.terminate(self._get_param("jobId"), self._get_param("reason"))
        return ""

    handlers = {
        "submitjob": submit,
        "describejobs": describe,
        "listjobs": list_jobs,
        "terminatejob": terminate,
        "canceljob": terminate,
    }
    for name, handler in handlers.items():
        setattr(BatchResponse, name, routed(name, handler))

    def uninstall() -> None:
        for name, fn in originals.items():
            setattr(BatchResponse, name, fn)

    return uninstall
