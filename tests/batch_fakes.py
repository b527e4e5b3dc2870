"""Batch as the SLA guard and the handlers use it (`spot_hpc.batch.BatchGateway`'s calls), for unit tests."""

from __future__ import annotations

from typing import Any


class DescribedBatch:
    """Describes each job in its status of `statuses` (any other in `status`) on `queue`; records the jobs submitted
    (their requests) and terminated (their ids)."""

    def __init__(
        self,
        statuses: dict[str, str] | None = None,
        *,
        status: str = "RUNNABLE",
        queue: str = "spot",
        described: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.statuses = statuses or {}
        self.status = status
        self.queue = queue
        self.described = described or {}  # more of a job's description (`nodeProperties`, a node's exit), by job id
        self.submitted: list[Any] = []
        self.terminated: list[str] = []

    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        return {
            j: {"jobId": j, "jobName": j, "jobQueue": self.queue, "status": self.statuses.get(j, self.status)}
            | self.described.get(j, {})
            for j in job_ids
        }

    def multinode_nodes(self, job_id: str, num_nodes: int) -> list[dict[str, Any]]:
        return list(self.describe([f"{job_id}#{index}" for index in range(num_nodes)]).values())

    def find_jobs_named(self, queue: str, name: str) -> list[str]:
        return []

    def submit(self, request: Any) -> str:
        self.submitted.append(request)
        return f"job-{len(self.submitted) + 1}"

    def terminate(self, job_id: str, reason: str) -> None:
        self.terminated.append(job_id)
