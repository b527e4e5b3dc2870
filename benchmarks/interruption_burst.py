"""A whole Spot pool reclaimed at once: N interruption warnings over N running jobs, through the real handler code
on the embedded AWS. Measures handler time per warning (p50/p99) and AWS calls per job.

    .venv/bin/python benchmarks/interruption_burst.py --jobs 1000 --json /tmp/burst.json

Half the jobs have a tight deadline (the policy requeues them to On-Demand: checkpoint request, claim, SubmitJob,
TerminateJob, notification), half a roomy one (checkpoint request only). Times are in-process against moto, so
they measure the control plane's own work; the AWS call counts are what a deployed handler makes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from spot_hpc.batch import JobRequest
from spot_hpc.clock import format_time, utc_now
from spot_hpc.interruptions import on_spot_signal
from spot_hpc.ledger import Attempt, JobRef, Run, Stage
from spot_hpc.pipeline import job_name
from spot_hpc.placement import checkpoint_uri, queue_for

from spotctl.offline.demo import control_plane_services
from spotctl.offline.eventbus import ACCOUNT_ID, make_event
from spotctl.offline.runtime import OfflineControlPlane


class CallCounter:
    """Counts every AWS API call the handler's clients make (botocore's before-call event)."""

    def __init__(self, clients: list[tuple[str, Any]]) -> None:
        self.calls: Counter[str] = Counter()
        counted: set[int] = set()
        for name, client in clients:
            if id(client) not in counted:  # a client given twice would count its calls twice
                counted.add(id(client))
                client.meta.events.register("before-call.*.*", self._count(name))

    def _count(self, service: str) -> Any:
        def count(model: Any, **_: Any) -> None:
            self.calls[f"{service}:{model.name}"] += 1

        return count


def seed(svc: Any, jobs: int) -> list[str]:
    """N runs, each with preprocess RUNNING on a Spot instance of its own; returns the instance ids."""
    now = utc_now()
    instances = []
    for n in range(jobs):
        tight = n % 2 == 0
        run_id = f"burst-{n:05d}"
        deadline_hours = 1.0 if tight else 48.0
        run = Run(
            run_id=run_id,
            bucket=svc.settings.ingest_bucket,
            key=f"incoming/{run_id}.csv",
            version_id="v1",
            deadline_at=format_time(now + timedelta(hours=deadline_hours)),
            deadline_hours=deadline_hours,
            started_at=format_time(now),
            stage_hours={"preprocess": 0.8, "hpc": 0.1, "postprocess": 0.05},
        )
        stages = [
            Stage(run_id=run_id, stage=name, order=order, compute_hours=hours, spot_allowed=True, nodes=1)
            for order, (name, hours) in enumerate(run.stage_hours.items())
        ]
        svc.ledger.create_run(run, stages)
        stage = svc.ledger.claim_attempt(
            run_id, "preprocess", 0, checkpoint_uri=checkpoint_uri(svc.settings.ingest_bucket, run_id, "preprocess")
        )
        job_id = svc.batch.submit(
            JobRequest(
                name=job_name(run_id, "preprocess", 1),
                queue=queue_for(svc, stage, "spot"),
                definition=svc.settings.preprocess_job_definition,
                environment={"STAGE": "preprocess"},
                tags={},
                parameters={"stage": "preprocess"},
            )
        )
        instance_id = f"i-{n + 1:017x}"
        attempt = Attempt(
            run_id=run_id,
            stage="preprocess",
            attempt=1,
            job_id=job_id,
            queue=queue_for(svc, stage, "spot"),
            capacity="spot",
            nodes=1,
            submitted_at=format_time(now),
            status="RUNNING",
            started_at=format_time(now),
            instance_ids=[instance_id],
        )
        svc.ledger.record_attempt(attempt)
        svc.ledger.index_instance(instance_id, JobRef(job_id, run_id, "preprocess", 1))
        instances.append(instance_id)
    return instances


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with OfflineControlPlane() as plane:
        svc = control_plane_services(plane)
        instances = seed(svc, args.jobs)
        # Every client a handler calls AWS with, SubmitJob's own (it sends each call once) included.
        counter = CallCounter(
            [
                ("dynamodb", svc.ledger._table.meta.client),
                ("batch", svc.batch._batch),
                ("batch", svc.batch._submit),
                ("ecs", svc.batch._ecs),
                ("ec2", svc.batch._ec2),
                ("s3", svc.s3),
                ("sns", svc.sns),
                ("sqs", svc.sqs),
                ("secretsmanager", svc.secrets),
                ("stepfunctions", svc.pipeline._client),
            ]
        )
        times_ms: list[float] = []
        per_job: list[int] = []
        actions: Counter[str] = Counter()
        for instance_id in instances:
            event = make_event(
                "aws.ec2",
                "EC2 Spot Instance Interruption Warning",
                {"instance-id": instance_id, "instance-action": "terminate"},
            )
            before = sum(counter.calls.values())
            started = time.perf_counter()
            result = on_spot_signal(svc, event, ACCOUNT_ID)
            times_ms.append((time.perf_counter() - started) * 1000)
            per_job.append(sum(counter.calls.values()) - before)
            actions.update(job["action"] for job in result["jobs"])
        # Inclusive: a percentile between the times measured, never past the largest (the default extrapolates).
        quantiles = statistics.quantiles(times_ms, n=100, method="inclusive")
        figures = {
            "warnings": len(instances),
            "handler_ms_p50": round(statistics.median(times_ms), 2),
            "handler_ms_p99": round(quantiles[98], 2),
            "handler_ms_max": round(max(times_ms), 2),
            "aws_calls_per_job_mean": round(statistics.mean(per_job), 2),
            "aws_calls_per_job_max": max(per_job),
            "actions": dict(actions),
            "aws_calls_by_api": dict(sorted(counter.calls.items())),
            "scans": sum(v for k, v in counter.calls.items() if k.endswith(":Scan")),
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
