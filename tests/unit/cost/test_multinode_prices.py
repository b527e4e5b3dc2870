"""An ended multi-node job is priced on the instances its nodes got, which Batch tells of each node
(`<job id>#<index>`), not of the job; a Batch or ECS call that fails leaves the placement's price, never a failed
settlement."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_hpc.batch import Ec2Instance
from spot_hpc.events import BatchJobDetail
from spot_hpc.job_events import _billing_sets
from spot_hpc.ledger import Attempt
from spot_hpc.services import Services

STARTED = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)
ARN = "arn:aws:ecs:us-east-1:123456789012:container-instance/spot-hpc-hpc/{}"


def _throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)


class NodesOnInstances:
    """Batch, ECS and EC2 as a 3-node job's nodes tell them: nodes 0 and 1 on m6i.8xlarge instances, node 2 on a
    c6i.8xlarge; `throttled` names the call that fails (its client's retries used up). Records the jobs described."""

    def __init__(self, throttled: str | None = None) -> None:
        self.throttled = throttled
        self.described: list[str] = []

    def multinode_nodes(self, job_id: str, num_nodes: int) -> list[dict[str, Any]]:
        if self.throttled == "DescribeJobs":
            raise _throttled("DescribeJobs")
        self.described.extend(f"{job_id}#{index}" for index in range(num_nodes))
        return [
            {"jobId": f"{job_id}#{index}", "jobName": "run-1-hpc-1", "jobQueue": "hpc-queue", "status": "SUCCEEDED",
             "startedAt": int(STARTED.timestamp() * 1000), "nodeDetails": {"nodeIndex": index},
             "container": {"containerInstanceArn": ARN.format(index)}}
            for index in range(num_nodes)
        ]  # fmt: skip

    def instances_of(self, arns: Any) -> dict[str, str]:
        if self.throttled == "DescribeContainerInstances":
            raise _throttled("DescribeContainerInstances")
        return {arn: f"i-{arn.rsplit('/', 1)[-1]}" for arn in arns}

    def describe_instances(self, instance_ids: Any) -> dict[str, Ec2Instance]:
        types = {"i-0": "m6i.8xlarge", "i-1": "m6i.8xlarge", "i-2": "c6i.8xlarge"}
        return {i: Ec2Instance(types[i], "us-east-1a", STARTED) for i in instance_ids}


class OnDemandPrices:
    """On-Demand at $1.536 an m6i.8xlarge, $1.36 a c6i.8xlarge."""

    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **_: Any) -> float:
        assert capacity == "on-demand"
        return {"m6i.8xlarge": 1.536, "c6i.8xlarge": 1.36}[instance_type] * nodes


def _ended_job(batch: NodesOnInstances) -> dict[str, Any]:
    """What the end of a 3-node job placed at the stack's HPC type ($1.36 a node) bills, from its event."""
    attempt = Attempt("run-1", "hpc", 1, "mnp-1", "hpc-queue", "on-demand", 3, "2026-01-05T00:50:00Z",
                      usd_per_hour=3 * 1.36, started_at="2026-01-05T01:00:00Z")  # fmt: skip
    detail = BatchJobDetail.model_validate(
        {"jobId": "mnp-1", "jobName": "run-1-hpc-1", "jobQueue": "hpc-queue", "status": "SUCCEEDED",
         "nodeProperties": {"numNodes": 3, "mainNode": 0}, "container": {"exitCode": 0}}
    )  # fmt: skip
    settings = SimpleNamespace(region="us-east-1")
    svc = Services(settings, None, batch, None, None, None, None, None, None, OnDemandPrices())  # type: ignore[arg-type]
    return _billing_sets(svc, attempt, detail, [])


def test_a_multinode_job_is_priced_on_its_nodes_instances() -> None:
    # GIVEN a 3-node job whose nodes got two m6i.8xlarge instances and a c6i.8xlarge
    batch = NodesOnInstances()
    # WHEN its end is billed
    sets = _ended_job(batch)
    # THEN each node is described as `<job id>#<index>`, and the job's price is its nodes' prices, each node for the
    # job's whole run; no one type is named
    assert batch.described == ["mnp-1#0", "mnp-1#1", "mnp-1#2"]
    assert sets == {"usd_per_hour": pytest.approx(1.536 * 2 + 1.36), "price_unknown": False}


@pytest.mark.parametrize("throttled", ["DescribeJobs", "DescribeContainerInstances"])
def test_a_multinode_job_whose_nodes_cannot_be_told_keeps_its_placement_price(throttled: str, caplog) -> None:
    # GIVEN Batch or ECS throttling the call that tells the nodes' instances
    # WHEN the job's end is billed
    sets = _ended_job(NodesOnInstances(throttled=throttled))
    # THEN the settlement goes on at the price it was placed at, and the log says why
    assert sets == {}
    assert "could not tell the instances of a multi-node job's nodes" in caplog.text
