"""Runs on the offline stack that the integration and end-to-end tests share: `from offline_runs import ...` (tests/ is
on pytest's pythonpath)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from spotctl.offline.runtime import REGION, OfflineControlPlane

# Three half-hour stages: a whole pipeline in a couple of virtual hours.
QUICK_STAGES = {"preprocess": 0.5, "hpc": 0.5, "postprocess": 0.5}
# ... as an upload's stage-hours metadata says them.
QUICK_STAGE_HOURS = ",".join(f"{stage}={hours}" for stage, hours in QUICK_STAGES.items())


def submit_probe(plane: OfflineControlPlane, name: str, queue: str, definition: str, **overrides: Any) -> str:
    """A job of the stack's definition (logical id) on its queue (logical id), outside any pipeline (the control plane
    ignores it); returns its id."""
    batch = boto3.client("batch", region_name=REGION)
    return str(
        batch.submit_job(
            jobName=name,
            jobQueue=plane.stack.physical_id(queue),
            jobDefinition=plane.stack.physical_id(definition),
            **overrides,
        )["jobId"]
    )


class RuntimeExitError(Exception):
    """A Lambda whose process died (out of memory, timed out): the invocation fails where it stands."""


def trace_file(tmp_path: Path, name: str, nodes_per_tick: list[int]) -> Path:
    """A Spot trace of ten-minute ticks with capacity for `nodes_per_tick[i]` nodes at tick i."""
    trace = tmp_path / f"{name}.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": nodes_per_tick}))
    return trace


def steady_trace(tmp_path: Path, nodes: int) -> Path:
    """A trace with Spot capacity for `nodes` nodes at every tick (0: none at all)."""
    return trace_file(tmp_path, f"steady-{nodes}", [nodes] * 500)


def upload_quick_run(plane: OfflineControlPlane, deadline_hours: float) -> None:
    """Three half-hour stages (`QUICK_STAGES`) under `deadline_hours`."""
    metadata = {"deadline-hours": str(deadline_hours), "stage-hours": QUICK_STAGE_HOURS}
    plane.upload("incoming/tight.csv", b"a\n1\n", metadata)


# The function each event source's rule invokes.
HANDLER_OF_SOURCE = {
    "aws.s3": "StartPipelineFunction",
    "aws.ec2": "SpotInterruptionFunction",
    "aws.batch": "BatchStateChangeFunction",
}


def dead_lettered(plane: OfflineControlPlane) -> list[dict[str, Any]]:
    """The events whose handler failed, as the events dead-letter queue holds them (Lambda retries them)."""
    sqs = boto3.client("sqs", region_name=REGION)
    url = plane.stack.physical_id("EventsDeadLetterQueue")  # a queue's physical id is its URL
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def retry_dead_lettered(plane: OfflineControlPlane) -> tuple[dict[str, Any], Any, bool]:
    """Lambda's retry of the one event whose handler failed: (the event, what the retry returned, whether it failed)."""
    [event] = dead_lettered(plane)
    result, errored = plane.invoke(HANDLER_OF_SOURCE[event["source"]], event)
    return event, result, errored
