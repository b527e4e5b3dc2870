"""Run the example workloads as real processes, interrupt them mid-run, restart them and compare their output.

Per workload: an uninterrupted run gives the reference output; then the drill starts the workload again (all its
parts), waits until the control plane would see progress, interrupts each part (a Spot notice in its instance
metadata, a checkpoint request, or SIGTERM), lets it checkpoint and exit, restarts it on a "fresh instance" and
compares the output bytes with the reference. Figures come from the runtime's own event lines (``spot_checkpoint``
JSON on stderr).
"""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spot_checkpoint import (
    ENV_MAX_INTERVAL_SECONDS,
    ENV_MIN_INTERVAL_SECONDS,
    EVENT_KEY,
    EXIT_CHECKPOINTED,
    CheckpointStore,
    RuntimeConfig,
    list_objects,
    part_progress,
    write_object,
)
from spot_hpc.pipeline import STAGE_NAMES, stage_input_uri
from spot_hpc.placement import checkpoint_uri

from .metadata_server import MetadataStandIn
from .s3_server import EmbeddedS3

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
WORKLOADS = STAGE_NAMES  # the example workloads are the pipeline's stages
INTERRUPTION_SOURCES = ("imds", "request", "sigterm")
INGEST_BUCKET = "spot-drill-ingest"
WORK_BUCKET = "spot-drill-work"
INPUT_KEY = "incoming/heat-sources.csv"
HPC_NODES = 2
REGION = "us-east-1"
# Drill sizes: each workload works about a second or two on one core, long enough to be interrupted mid-run.
DRILL_SIZES = {
    "PREPROCESS_CHUNK_ROWS": "4000",
    "HPC_GRID": "64",
    "HPC_MEMBERS": "8",
    "HPC_STEPS": "14000",
    "HPC_STEPS_PER_UNIT": "200",
    "POSTPROCESS_BOOTSTRAP": "50000",
    "POSTPROCESS_BATCH": "500",
}
DRILL_SOURCE_ROWS = 250_000
NOTICE_AT_PROGRESS = 0.2  # right after the first periodic checkpoints: most of the work is still ahead
JOB_TIMEOUT_SECONDS = 120.0


class DrillError(Exception):
    """The drill could not be carried out (a job failed, or finished before it could be interrupted). `run_drills`
    names the workload it was drilling, and keeps the results of the workloads drilled before it in `completed`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.workload: str | None = None
        self.completed: list[DrillResult] = []


@dataclass
class DrillResult:
    workload: str
    interruptions: int
    notice_to_checkpoint_seconds: float
    lost_work_seconds: float
    resumed_from_checkpoint: bool
    output_matches_uninterrupted: bool
    interrupted_via: str
    parts: int
    exit_codes: list[int]
    checkpoint_interval_seconds: float
    progress_at_notice: float
    checkpoints_removed_after_success: bool
    wall_seconds: float
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobProcess:
    """One running part of a workload, with the runtime events it has printed so far."""

    workload: str
    part: str  # the checkpoint part it owns (node-0, main, ...)
    process: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and EVENT_KEY in event:
                self.events.append(event)
            else:
                self.other_lines.append(line.rstrip())

    def wait(self) -> int:
        try:
            code = self.process.wait(timeout=JOB_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.stop()
            raise DrillError(f"{self.workload} {self.part}: still running after {JOB_TIMEOUT_SECONDS:g} s") from None
        if self.reader is not None:
            self.reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """Kill, not SIGTERM: a part takes SIGTERM as a Spot notice, and one waiting on others may not look for a
        long while (its poll interval)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def first(self, name: str, **match: Any) -> dict[str, Any] | None:
        for event in self.events:
            if event[EVENT_KEY] == name and all(event.get(key) == value for key, value in match.items()):
                return event
        return None


def drill_source_csv(rows: int = DRILL_SOURCE_ROWS, seed: int = 7) -> bytes:
    """A deterministic ingest CSV of milliwatt heat sources, with a sprinkling of rows preprocess must reject."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source_id", "x_m", "y_m", "power_w", "note"])
    for index in range(rows):
        row = [f"src-{index:06d}", f"{rng.random():.5f}", f"{rng.random():.5f}", f"{rng.uniform(0.001, 0.01):.6f}", ""]
        roll = rng.random()
        if roll < 0.01:
            row[1] = "1.5"
        elif roll < 0.02:
            row[3] = "n/a"
        elif roll < 0.03:
            row[0] = f"src-{max(index - 1, 0):06d}"
        elif roll < 0.035:
            row[3] = "-2"
        writer.writerow(row)
    return out.getvalue().encode()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="drill",
        aws_secret_access_key="drill",
    )


class Drill:
    """The drill's world: the embedded S3, the reference runs, and the processes it starts."""

    def __init__(self, s3_endpoint: str, *, poll_seconds: float = 0.2) -> None:
        self.s3_endpoint = s3_endpoint
        self.s3 = s3_client(s3_endpoint)
        self.poll_seconds = poll_seconds
        for bucket in (INGEST_BUCKET, WORK_BUCKET):
            self.s3.create_bucket(Bucket=bucket)
        write_object(self.s3, f"s3://{INGEST_BUCKET}/{INPUT_KEY}", drill_source_csv(), "text/csv")
        self._references: dict[str, str] = {}
        self._jobs: list[JobProcess] = []

    # -- where things are ---------------------------------------------------------------------------------------
    @staticmethod
    def output_uri(run_id: str, workload: str) -> str:
        return f"s3://{WORK_BUCKET}/intermediate/{run_id}/{workload}/"

    @staticmethod
    def checkpoint_uri(run_id: str, workload: str) -> str:
        return checkpoint_uri(WORK_BUCKET, run_id, workload)  # keyed as the control plane keys them

    def input_uri(self, workload: str) -> str:
        # Wired as the control plane wires a run: each stage reads the uninterrupted output of the one before.
        return stage_input_uri(workload, f"s3://{INGEST_BUCKET}/{INPUT_KEY}", self.reference)

    def part_envs(self, workload: str) -> list[dict[str, str]]:
        if workload != "hpc":
            return [{}]
        return [
            {
                "AWS_BATCH_JOB_NODE_INDEX": str(node),
                "AWS_BATCH_JOB_NUM_NODES": str(HPC_NODES),
                "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
            }
            for node in range(HPC_NODES)
        ]

    def job_env(
        self, workload: str, run_id: str, metadata_endpoint: str, part_env: Mapping[str, str]
    ) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "SPOT_CHECKPOINT_", "HPC_", "PREPROCESS_", "POSTPROCESS_"))
        }
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(JOBS_DIR / "runtime"), os.environ.get("PYTHONPATH")])),
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": "drill",
                "AWS_SECRET_ACCESS_KEY": "drill",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata_endpoint,
                "NO_PROXY": "127.0.0.1,localhost",
                # One BLAS thread: the machine is shared, and the same thread count keeps reductions identical.
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "SPOT_CHECKPOINT_POLL_SECONDS": str(self.poll_seconds),
                # Checkpoints every 0.1-0.25 s: a part works only a second or two, and the drill must see it pass
                # NOTICE_AT_PROGRESS with most of its work still ahead, or the part finishes before its notice.
                ENV_MIN_INTERVAL_SECONDS: "0.1",
                ENV_MAX_INTERVAL_SECONDS: "0.25",
                "INPUT_URI": self.input_uri(workload),
                "OUTPUT_URI": self.output_uri(run_id, workload),
                "CHECKPOINT_URI": self.checkpoint_uri(run_id, workload),
                **DRILL_SIZES,
                **part_env,
            }
        )
        return env

    # -- processes ----------------------------------------------------------------------------------------------
    def start(self, workload: str, run_id: str, metadata: MetadataStandIn, part_env: Mapping[str, str]) -> JobProcess:
        env = self.job_env(workload, run_id, metadata.endpoint, part_env)
        script = JOBS_DIR / workload / f"{workload}.py"
        process = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        job = JobProcess(workload, RuntimeConfig.from_environ(env).part, process)
        self._jobs.append(job)
        job.reader = threading.Thread(target=job.read_stderr, daemon=True)
        job.reader.start()
        return job

    def stop_jobs(self) -> None:
        """Ends every job still running: a drill that failed leaves the other parts of a stage running, and a job
        process outlives the drill unless stopped."""
        for job in self._jobs:
            job.stop()

    def run_to_end(self, workload: str, run_id: str, metadatas: list[MetadataStandIn]) -> list[JobProcess]:
        jobs = [
            self.start(workload, run_id, metadata, part_env)
            for metadata, part_env in zip(metadatas, self.part_envs(workload), strict=True)
        ]
        for job in jobs:
            if job.wait() != 0:
                raise DrillError(f"{workload} ({run_id}) failed: exit {job.process.returncode}: {job.other_lines[-5:]}")
        return jobs

    def reference(self, workload: str) -> str:
        """The uninterrupted run's output prefix (run once, on demand, with its upstream references)."""
        if workload not in self._references:
            with ExitStack() as stack:
                metadatas = [stack.enter_context(MetadataStandIn()) for _ in self.part_envs(workload)]
                self.run_to_end(workload, "uninterrupted", metadatas)
            self._references[workload] = self.output_uri("uninterrupted", workload)
        return self._references[workload]

    # -- the drill ----------------------------------------------------------------------------------------------
    def drill(self, workload: str, via: str = "imds") -> DrillResult:
        reference_output = list_objects(self.s3, self.reference(workload))
        run_id = f"drill-{via}"
        checkpoint_uri = self.checkpoint_uri(run_id, workload)
        started = time.monotonic()
        with ExitStack() as stack:
            metadatas = [stack.enter_context(MetadataStandIn()) for _ in self.part_envs(workload)]
            first = [
                self.start(workload, run_id, metadata, part_env)
                for metadata, part_env in zip(metadatas, self.part_envs(workload), strict=True)
            ]
            progress_at_notice, noticed_at = self._interrupt_at_progress(via, checkpoint_uri, metadatas, first)
            first_codes = [job.wait() for job in first]
            if any(code != EXIT_CHECKPOINTED for code in first_codes):
                # What each part that did not stop saw: its last events and its metadata service's last answers.
                seen = [
                    {
                        "part": job.part,
                        "events": [event.get(EVENT_KEY) for event in job.events[-4:]],
                        "metadata": metadata.requests[-4:],
                        "stderr": job.other_lines[-3:],
                    }
                    for job, metadata, code in zip(first, metadatas, first_codes, strict=True)
                    if code != EXIT_CHECKPOINTED
                ]
                raise DrillError(
                    f"{workload}: interrupted run exited {first_codes}, expected {EXIT_CHECKPOINTED}: {seen}"
                )
            for metadata in metadatas:
                metadata.clear_notice()  # the restart runs on a fresh instance
            second = [
                self.start(workload, run_id, metadata, part_env)
                for metadata, part_env in zip(metadatas, self.part_envs(workload), strict=True)
            ]
            second_codes = [job.wait() for job in second]
            if any(code != 0 for code in second_codes):
                raise DrillError(f"{workload}: restart exited {second_codes}: {[j.other_lines[-5:] for j in second]}")
        wall_seconds = time.monotonic() - started

        checkpoint_times = [self._checkpoint_done_at(job) for job in first]
        lost = [self._lost_work(before, after) for before, after in zip(first, second, strict=True)]
        intervals = [
            float(event["next_interval_seconds"])
            for job in first
            for event in job.events
            if event[EVENT_KEY] == "checkpoint_saved"
        ]
        # The control plane removes what multi-part stages leave (one final checkpoint per part) once they succeed.
        if len(first) > 1:
            CheckpointStore(self.s3, checkpoint_uri).cleanup()
        checkpoints_left = list_objects(self.s3, checkpoint_uri)
        return DrillResult(
            workload=workload,
            interruptions=1,
            notice_to_checkpoint_seconds=round(max(map(operator.sub, checkpoint_times, noticed_at)), 3),
            lost_work_seconds=round(sum(lost), 3),
            resumed_from_checkpoint=all(job.first("resumed") is not None for job in second),
            output_matches_uninterrupted=list_objects(self.s3, self.output_uri(run_id, workload)) == reference_output,
            interrupted_via=via,
            parts=len(first),
            exit_codes=first_codes + second_codes,
            checkpoint_interval_seconds=round(max(intervals, default=0.0), 3),
            progress_at_notice=round(progress_at_notice, 3),
            checkpoints_removed_after_success=not checkpoints_left,
            wall_seconds=round(wall_seconds, 2),
            attempts=[
                {"exit_codes": first_codes, "events": [event[EVENT_KEY] for job in first for event in job.events]},
                {"exit_codes": second_codes, "events": [event[EVENT_KEY] for job in second for event in job.events]},
            ],
        )

    def _interrupt_at_progress(
        self, via: str, checkpoint_uri: str, metadatas: list[MetadataStandIn], jobs: list[JobProcess]
    ) -> tuple[float, list[float]]:
        """Interrupt once the control plane would see progress; return the stage's progress then and each part's
        notice time.

        Spot warns each instance on its own, so a notice (or SIGTERM) reaches each part once that part has
        checkpointed NOTICE_AT_PROGRESS of its own work: a part starved of CPU cannot let the others run to the end
        first. A checkpoint request is stage-wide, so it waits for every part.
        """
        if via not in INTERRUPTION_SOURCES:
            raise ValueError(f"unknown interruption source {via!r}")
        pending = set(range(len(jobs)))
        noticed_at, progress_at = [0.0] * len(jobs), [0.0] * len(jobs)
        while pending:
            fractions, _ = part_progress(self.s3, checkpoint_uri)
            ready = {i for i in pending if fractions.get(jobs[i].part, 0.0) >= NOTICE_AT_PROGRESS}
            if via == "request" and ready != pending:
                ready = set()
            for i in ready:
                noticed_at[i], progress_at[i] = time.time(), fractions[jobs[i].part]
                if via == "imds":
                    metadatas[i].post_notice()
                elif via == "sigterm":
                    jobs[i].process.send_signal(signal.SIGTERM)
            if via == "request" and ready:
                CheckpointStore(self.s3, checkpoint_uri).request_checkpoint("checkpoint drill")
            pending -= ready
            if any(jobs[i].process.poll() is not None for i in pending):
                raise DrillError(f"{checkpoint_uri}: a part ended before it could be interrupted (make it bigger)")
            if pending:
                time.sleep(0.05)
        return sum(progress_at) / len(jobs), noticed_at

    @staticmethod
    def _checkpoint_done_at(job: JobProcess) -> float:
        """When the part's checkpoint on stop was complete (or it stopped, if nothing was left unsaved)."""
        stopping = job.first("stopping")
        if stopping is None:
            raise DrillError(f"a part exited without its stop event: {job.other_lines[-5:]}")
        saved = job.first("checkpoint_saved", reason=stopping["reason"])
        return float((saved or stopping)["time"])

    @staticmethod
    def _lost_work(before: JobProcess, after: JobProcess) -> float:
        """Work the interrupted attempt did that the restart had to redo: beyond the checkpoint it resumed from."""
        stopping = before.first("stopping")
        resumed = after.first("resumed")
        done_before = float(stopping["work_seconds"]) if stopping else 0.0
        kept = float(resumed["work_seconds"]) if resumed else 0.0
        return max(done_before - kept, 0.0)


def run_drills(workloads: list[str], via: str = "imds", poll_seconds: float = 0.2) -> list[DrillResult]:
    """Drills the workloads in turn, up to the first that cannot be drilled: its DrillError carries the results of
    those before it."""
    results: list[DrillResult] = []
    with EmbeddedS3() as s3_server:
        drill = Drill(s3_server.endpoint, poll_seconds=poll_seconds)
        try:
            for workload in workloads:
                results.append(drill.drill(workload, via))
        except DrillError as exc:
            exc.workload, exc.completed = workload, results
            raise
        finally:
            drill.stop_jobs()
    return results
