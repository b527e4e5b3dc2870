"""The example workloads: validation rules, and the same output however often they are interrupted."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from spot_checkpoint import (
    EXIT_CHECKPOINTED,
    REASON_SIGTERM,
    REASON_SPOT_INTERRUPTION,
    CheckpointStore,
    Stopped,
    list_objects,
    write_object,
)

from jobs.hpc import hpc
from jobs.postprocess import postprocess
from jobs.preprocess import preprocess
from spotctl.drill.metadata_server import MetadataStandIn
from spotctl.drill.runner import drill_source_csv

from .conftest import BUCKET, S3Passthrough, S3Refusing, sigterm_unhandled

INPUT_CSV = f"s3://{BUCKET}/incoming/sources.csv"
SMALL = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "SPOT_CHECKPOINT_INTERVAL_SECONDS": "0",
    "PREPROCESS_CHUNK_ROWS": "150",
    "HPC_GRID": "24",
    "HPC_MEMBERS": "5",
    "HPC_STEPS": "120",
    "HPC_STEPS_PER_UNIT": "40",
    "POSTPROCESS_BOOTSTRAP": "300",
    "POSTPROCESS_BATCH": "100",
}


def stage_env(run_id: str, stage: str, input_uri: str, **extra: str) -> dict[str, str]:
    return {
        **SMALL,
        "INPUT_URI": input_uri,
        "OUTPUT_URI": f"s3://{BUCKET}/intermediate/{run_id}/{stage}/",
        "CHECKPOINT_URI": f"s3://{BUCKET}/checkpoints/{run_id}/{stage}/",
        **extra,
    }


def as_in_container(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], s3: Any) -> None:
    """A workload's `main()` run as its container runs it: `env` is the environment, `s3` the client boto3 gives."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: s3)


def run_interrupted(s3: Any, run: Callable[[Any, dict[str, str]], None], env: dict[str, str]) -> int:
    """Run a workload, stopping it by a fresh checkpoint request before every attempt; returns the interruptions."""
    interruptions = 0
    while True:
        store = CheckpointStore(s3, env["CHECKPOINT_URI"])
        store.request_checkpoint(f"interruption {interruptions + 1}")
        try:
            run(s3, {**env, "SPOT_CHECKPOINT_POLL_SECONDS": "0.01"})
            return interruptions
        except Stopped as stopped:
            assert stopped.code == EXIT_CHECKPOINTED
            interruptions += 1
            assert interruptions < 200, "the workload never finished"


@pytest.fixture
def pipeline_inputs(s3: Any) -> Any:
    write_object(s3, INPUT_CSV, drill_source_csv(rows=600, seed=3))
    return s3


def test_preprocess_rejects_bad_rows_and_reports_why(s3: Any) -> None:
    # GIVEN a CSV with every kind of bad row, extra columns and odd header spacing
    body = (
        " Source_ID , x_m,y_m,power_w,extra\n"
        "a,0.1,0.2,5,x\n"
        "b,1.5,0.2,5,x\n"
        "c,0.1,nan,5,x\n"
        "d,0.1,0.2,oops,x\n"
        "a,0.3,0.3,5,x\n"
        ",0.1,0.1,1,x\n"
        "e,0.1,0.1,-1,x\n"
        "f,0.1\n"
        "g, 0.5 ,0.5,2.50,x\n"
    )
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("r", "preprocess", INPUT_CSV)
    # WHEN it is cleaned
    preprocess.run(s3, env)
    # THEN valid rows are kept in order, canonically formatted, and rejects are counted by reason
    output = list_objects(s3, env["OUTPUT_URI"])
    assert output["sources.csv"].decode() == "source_id,x_m,y_m,power_w\na,0.1,0.2,5.0\ng,0.5,0.5,2.5\n"
    report = json.loads(output["report.json"])
    assert report == {
        "rows_in": 9,
        "rows_out": 2,
        "rejected": {
            "duplicate": 1,
            "malformed": 1,
            "missing_id": 1,
            "not_a_number": 2,
            "outside_plate": 1,
            "power_out_of_range": 1,
        },
    }


def test_preprocess_without_required_columns_is_an_input_error(s3: Any) -> None:
    # GIVEN a CSV that is not a heat-source table
    write_object(s3, INPUT_CSV, b"name,value\na,1\n")
    # WHEN / THEN the job fails with an application error naming the missing columns
    with pytest.raises(preprocess.InputError, match="x_m"):
        preprocess.run(s3, stage_env("r", "preprocess", INPUT_CSV))


def test_pipeline_interrupted_at_every_unit_gives_identical_output(pipeline_inputs: Any) -> None:
    s3 = pipeline_inputs
    # GIVEN the uninterrupted pipeline's outputs (two HPC nodes)
    reference: dict[str, dict[str, bytes]] = {}
    nodes = [{"AWS_BATCH_JOB_NODE_INDEX": str(node), "AWS_BATCH_JOB_NUM_NODES": "2"} for node in (0, 1)]
    preprocess.run(s3, stage_env("clean", "preprocess", INPUT_CSV))
    cleaned = f"s3://{BUCKET}/intermediate/clean/preprocess/sources.csv"
    for node_env in nodes:
        hpc.run(s3, stage_env("clean", "hpc", cleaned, **node_env))
    postprocess.run(s3, stage_env("clean", "postprocess", f"s3://{BUCKET}/intermediate/clean/hpc/"))
    for stage in ("preprocess", "hpc", "postprocess"):
        reference[stage] = list_objects(s3, f"s3://{BUCKET}/intermediate/clean/{stage}/")

    # WHEN each stage is interrupted (checkpoint, exit, restart) again and again until it completes
    interruptions = {
        "preprocess": run_interrupted(s3, preprocess.run, stage_env("chaos", "preprocess", INPUT_CSV)),
        "hpc": sum(run_interrupted(s3, hpc.run, stage_env("chaos", "hpc", cleaned, **node_env)) for node_env in nodes),
        "postprocess": run_interrupted(
            s3, postprocess.run, stage_env("chaos", "postprocess", f"s3://{BUCKET}/intermediate/clean/hpc/")
        ),
    }

    # THEN every stage was really interrupted, and its output is byte for byte the uninterrupted one
    for stage in ("preprocess", "hpc", "postprocess"):
        assert interruptions[stage] >= 2, stage
        assert list_objects(s3, f"s3://{BUCKET}/intermediate/chaos/{stage}/") == reference[stage], stage
    summary = json.loads(reference["postprocess"]["summary.json"])
    assert summary["members"] == 5
    low, high = summary["hot_area_m2_ci95"]
    assert low <= high
    # AND the HPC stage left one final checkpoint per node for the control plane to clean up after success
    left = list_objects(s3, f"s3://{BUCKET}/checkpoints/chaos/hpc/")
    assert {name.split("/")[0] for name in left if name.endswith("manifest.json")} == {"node-0", "node-1"}


def test_hpc_member_results_do_not_depend_on_the_node_split(pipeline_inputs: Any) -> None:
    s3 = pipeline_inputs
    # GIVEN cleaned sources
    preprocess.run(s3, stage_env("split", "preprocess", INPUT_CSV))
    cleaned = f"s3://{BUCKET}/intermediate/split/preprocess/sources.csv"
    # WHEN the ensemble runs on one node and on three shards
    hpc.run(s3, stage_env("one", "hpc", cleaned))
    for shard in range(3):
        env = stage_env("three", "hpc", cleaned, AWS_BATCH_JOB_ARRAY_INDEX=str(shard), SPOT_CHECKPOINT_PARTS="3")
        hpc.run(s3, env)
    # THEN postprocess gives the same statistics from either split
    summaries = []
    for run_id in ("one", "three"):
        postprocess.run(s3, stage_env(run_id, "postprocess", f"s3://{BUCKET}/intermediate/{run_id}/hpc/"))
        summaries.append(list_objects(s3, f"s3://{BUCKET}/intermediate/{run_id}/postprocess/"))
    assert summaries[0] == summaries[1]


def test_postprocess_refuses_incomplete_hpc_output(pipeline_inputs: Any) -> None:
    s3 = pipeline_inputs
    # GIVEN HPC output from only one of two nodes
    preprocess.run(s3, stage_env("part", "preprocess", INPUT_CSV))
    cleaned = f"s3://{BUCKET}/intermediate/part/preprocess/sources.csv"
    hpc.run(s3, stage_env("part", "hpc", cleaned, AWS_BATCH_JOB_NODE_INDEX="0", AWS_BATCH_JOB_NUM_NODES="2"))
    # WHEN / THEN postprocess fails rather than summarising half an ensemble
    with pytest.raises(postprocess.InputError, match="parts"):
        postprocess.run(s3, stage_env("part", "postprocess", f"s3://{BUCKET}/intermediate/part/hpc/"))


def test_preprocess_rejects_ids_with_control_characters_and_resumes_after_them(s3: Any) -> None:
    # GIVEN a CSV whose (quoted) ids carry a carriage return and a line feed
    body = 'source_id,x_m,y_m,power_w\n"a\rb",0.1,0.1,5\nc,0.2,0.2,5\n"d\ne",0.3,0.3,5\nb,0.4,0.4,5\n'
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("chaos", "preprocess", INPUT_CSV, PREPROCESS_CHUNK_ROWS="1")
    # WHEN it is cleaned while being interrupted after every row
    interruptions = run_interrupted(s3, preprocess.run, env)
    # THEN every resume succeeded, those rows were rejected, and the output reads back as the valid rows
    assert interruptions > 0
    outputs = list_objects(s3, env["OUTPUT_URI"])
    report = json.loads(outputs["report.json"])
    assert report["rejected"] == {"control_character": 2}
    assert outputs["sources.csv"].decode().splitlines() == [
        "source_id,x_m,y_m,power_w",
        "c,0.2,0.2,5.0",
        "b,0.4,0.4,5.0",
    ]


def test_preprocess_resume_takes_seen_ids_from_the_checkpoint_not_from_the_output_text() -> None:
    # GIVEN a checkpoint whose output so far cannot be parsed back into the same ids (a bare CR inside a field)
    payloads = {
        "state.json": json.dumps({"rows_read": 2, "rejected": {}}).encode(),
        "cleaned.csv": b"a\rb,0.1,0.1,5.0\nc,0.2,0.2,5.0\n",
        preprocess.SEEN_IDS_PAYLOAD: json.dumps(["a\rb", "c"]).encode(),
    }
    # WHEN the state is restored
    state = preprocess.CleaningState.from_payloads(payloads)
    # THEN the ids seen are exactly those saved, and the output text is kept as it was
    assert state.seen_ids == {"a\rb", "c"}
    assert state.cleaned.getvalue() == "a\rb,0.1,0.1,5.0\nc,0.2,0.2,5.0\n"


def test_resumed_preprocess_reads_the_upload_version_of_its_run(s3: Any) -> None:
    # GIVEN a versioned ingest bucket, and a run pinned to the first upload (as placement.job_environment pins it)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    first = b"source_id,x_m,y_m,power_w\na,0.1,0.1,1\nb,0.2,0.2,2\nc,0.3,0.3,3\nd,0.4,0.4,4\n"
    second = b"source_id,x_m,y_m,power_w\nw,0.9,0.9,9\nx,0.8,0.8,8\ny,0.7,0.7,7\nz,0.6,0.6,6\n"
    first_version = s3.put_object(Bucket=BUCKET, Key="incoming/sources.csv", Body=first)["VersionId"]
    env = stage_env(
        "r", "preprocess", INPUT_CSV, INPUT_VERSION_ID=first_version, PREPROCESS_CHUNK_ROWS="2", ATTEMPT="1"
    )
    env.update(SPOT_CHECKPOINT_INTERVAL_SECONDS="3600", SPOT_CHECKPOINT_POLL_SECONDS="0.01")
    # AND its first attempt stopped by a checkpoint request after its first chunk
    CheckpointStore(s3, env["CHECKPOINT_URI"]).request_checkpoint("spot warning", attempt=1)
    with pytest.raises(Stopped) as stopped:
        preprocess.run(s3, env)
    assert stopped.value.code == EXIT_CHECKPOINTED
    # WHEN a new file is uploaded under the same key, and the run's second attempt resumes
    s3.put_object(Bucket=BUCKET, Key="incoming/sources.csv", Body=second)
    preprocess.run(s3, {**env, "ATTEMPT": "2"})
    # THEN the run's output is its own upload only
    output = list_objects(s3, env["OUTPUT_URI"])["sources.csv"].decode()
    assert [line.split(",")[0] for line in output.splitlines()[1:]] == ["a", "b", "c", "d"]


def test_done_job_exits_0_when_checkpoint_cleanup_fails(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a preprocess job whose checkpoint deletes fail
    write_object(s3, INPUT_CSV, b"source_id,x_m,y_m,power_w\na,0.1,0.1,1\nb,0.2,0.2,2\n")
    env = stage_env("r", "preprocess", INPUT_CSV, PREPROCESS_CHUNK_ROWS="1")
    as_in_container(monkeypatch, env, S3Refusing(s3, "delete_objects", "SlowDown"))
    # WHEN it runs as in its container
    code = preprocess.main()
    # THEN its outputs are written and it reports success, not an application error
    assert "report.json" in list_objects(s3, env["OUTPUT_URI"])
    assert code == 0


MAIN_NODE = {
    "AWS_BATCH_JOB_NUM_NODES": "2",
    "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
    "SPOT_CHECKPOINT_POLL_SECONDS": "0.01",
}


class OnFirstLookAtOutput(S3Passthrough):
    """An S3 client that runs ``action`` once, right after the job's first listing of the stage's output prefix."""

    def __init__(self, s3: Any, output_uri: str, action: Callable[[], None]) -> None:
        super().__init__(s3)
        self._output_prefix = output_uri.split("/", 3)[3]
        self._action: Callable[[], None] | None = action
        self.looks = 0

    def list_objects_v2(self, **kwargs: Any) -> Any:
        listing = self._s3.list_objects_v2(**kwargs)
        if kwargs.get("Prefix", "").startswith(self._output_prefix):
            self.looks += 1
            if self._action is not None:
                action, self._action = self._action, None
                action()
        return listing


@pytest.fixture
def hpc_input(pipeline_inputs: Any) -> str:
    preprocess.run(pipeline_inputs, stage_env("mnp", "preprocess", INPUT_CSV))
    return f"s3://{BUCKET}/intermediate/mnp/preprocess/sources.csv"


def test_main_node_exits_only_once_every_node_has_finished(s3: Any, hpc_input: str) -> None:
    # GIVEN a two-node stage whose child node 1 finishes only after the main node has started waiting for it
    child = stage_env("mnp", "hpc", hpc_input, **MAIN_NODE, AWS_BATCH_JOB_NODE_INDEX="1")
    client = OnFirstLookAtOutput(s3, child["OUTPUT_URI"], lambda: hpc.run(s3, child))
    # WHEN the main node runs its own part
    hpc.run(client, stage_env("mnp", "hpc", hpc_input, **MAIN_NODE, AWS_BATCH_JOB_NODE_INDEX="0"))
    # THEN it returned (exit 0: the stage succeeds) only after looking again and finding node 1's output
    assert client.looks >= 2
    outputs = list_objects(s3, child["OUTPUT_URI"])
    assert {"node-0/members.json", "node-1/members.json"} <= set(outputs)
    # AND each node's final checkpoint is left for the control plane's cleanup of the successful stage
    left = list_objects(s3, child["CHECKPOINT_URI"])
    assert {name.split("/")[0] for name in left if name.endswith("manifest.json")} == {"node-0", "node-1"}


def test_main_node_stopped_while_waiting_exits_as_a_stop_and_resumes_waiting(s3: Any, hpc_input: str) -> None:
    # GIVEN a two-node stage whose child node 1 is unfinished
    main = stage_env("mnp", "hpc", hpc_input, **MAIN_NODE, AWS_BATCH_JOB_NODE_INDEX="0")
    child = {**main, "AWS_BATCH_JOB_NODE_INDEX": "1"}
    store = CheckpointStore(s3, main["CHECKPOINT_URI"])
    # AND a checkpoint request that comes while the main node waits for node 1
    request_ids: list[str] = []
    client = OnFirstLookAtOutput(
        s3, main["OUTPUT_URI"], lambda: request_ids.append(store.request_checkpoint("rebalance"))
    )
    # WHEN the main node runs
    with pytest.raises(Stopped) as stopped:
        hpc.run(client, main)
    # THEN it ends as a stop, its own part checkpointed complete and the request recorded as honoured
    assert stopped.value.code == EXIT_CHECKPOINTED
    own = CheckpointStore(s3, main["CHECKPOINT_URI"], part="node-0", parts_total=2).latest()
    assert own is not None and own.final and own.request_id == request_ids[0]
    assert "node-0/members.json" in list_objects(s3, main["OUTPUT_URI"])
    # WHEN node 1, stopped by the same request, is restarted and finishes, and so is the main node
    with pytest.raises(Stopped):
        hpc.run(s3, child)
    hpc.run(s3, child)
    resumed = OnFirstLookAtOutput(s3, main["OUTPUT_URI"], lambda: None)
    hpc.run(resumed, main)
    # THEN the main node did not redo its part nor stop again: it found node 1 done and returned
    assert resumed.looks == 1
    restarted = CheckpointStore(s3, main["CHECKPOINT_URI"], part="node-0", parts_total=2).latest()
    assert restarted is not None and restarted.seq == own.seq


class InputReads(S3Passthrough):
    """An S3 client recording every read of the job's input (under ``input_uri``): a GET of it, or a listing of it."""

    def __init__(self, s3: Any, input_uri: str) -> None:
        super().__init__(s3)
        self._input_key = input_uri.split("/", 3)[3]
        self.reads: list[str] = []

    def read_input(self, key: str) -> None:
        """Called on each read of the input, before S3 answers it."""
        self.reads.append(key)

    def get_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].startswith(self._input_key):
            self.read_input(kwargs["Key"])
        return self._s3.get_object(**kwargs)

    def list_objects_v2(self, **kwargs: Any) -> Any:
        if kwargs.get("Prefix", "").startswith(self._input_key):
            self.read_input(kwargs["Prefix"])
        return self._s3.list_objects_v2(**kwargs)


class SigtermWhileReading(InputReads):
    """An S3 client that sends this process SIGTERM once, as the job starts reading its input."""

    @property
    def sent(self) -> bool:
        return bool(self.reads)

    def read_input(self, key: str) -> None:
        if not self.sent:
            os.kill(os.getpid(), signal.SIGTERM)
        super().read_input(key)


def preprocess_reads(s3: Any) -> str:
    return INPUT_CSV


def hpc_reads(s3: Any) -> str:
    preprocess.run(s3, stage_env("early", "preprocess", INPUT_CSV))
    return f"s3://{BUCKET}/intermediate/early/preprocess/sources.csv"


def postprocess_reads(s3: Any) -> str:
    hpc.run(s3, stage_env("early", "hpc", hpc_reads(s3)))
    return f"s3://{BUCKET}/intermediate/early/hpc/"


# Each job, with what it reads as its input (the upload preprocess copies to local disk, the sources hpc reads, the
# fields postprocess loads).
each_job_and_its_input = pytest.mark.parametrize(
    ("job", "given_input"),
    [(preprocess, preprocess_reads), (hpc, hpc_reads), (postprocess, postprocess_reads)],
    ids=["preprocess", "hpc", "postprocess"],
)


def stopped_after_a_unit(
    s3: Any, job: Any, given_input: Callable[[Any], str], run_id: str
) -> tuple[dict[str, str], dict[str, bytes]]:
    """A part of `job` that checkpointed its first unit and stopped on a request: its environment, and its checkpoint
    objects as that attempt left them."""
    env = stage_env(run_id, job.__name__.rsplit(".", 1)[-1], given_input(s3), SPOT_CHECKPOINT_POLL_SECONDS="0.01")
    CheckpointStore(s3, env["CHECKPOINT_URI"]).request_checkpoint("spot warning")
    with pytest.raises(Stopped):
        job.run(s3, env)
    return env, list_objects(s3, env["CHECKPOINT_URI"])


def assert_wrote_nothing(s3: Any, env: dict[str, str], checkpoints: dict[str, bytes]) -> None:
    assert list_objects(s3, env["CHECKPOINT_URI"]) == checkpoints
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


@each_job_and_its_input
def test_a_sigterm_while_the_job_reads_its_input_stops_it_at_its_first_step(
    pipeline_inputs: Any, monkeypatch: pytest.MonkeyPatch, job: Any, given_input: Callable[[Any], str]
) -> None:
    s3 = pipeline_inputs
    # GIVEN a process that ignores a SIGTERM it has no handler for (as Python does as a container's PID 1 without an
    # init), and a job sent SIGTERM once as it starts reading its input (the upload preprocess copies to local
    # disk, the sources hpc reads, the fields postprocess loads), after it started its CheckpointedJob
    stage = job.__name__.rsplit(".", 1)[-1]
    env = stage_env("sigterm", stage, given_input(s3))
    reads = SigtermWhileReading(s3, env["INPUT_URI"])
    as_in_container(monkeypatch, env, reads)
    with sigterm_unhandled():
        # WHEN it runs as in its container
        with pytest.raises(Stopped) as stopped:
            job.main()
        after = signal.getsignal(signal.SIGTERM)
    # THEN it stopped as for any SIGTERM: its first unit checkpointed, exit 86, no output (before, the signal was lost:
    # the job worked on to the end here, and in its container until Batch's SIGKILL)
    assert reads.sent
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SIGTERM)
    checkpoint = CheckpointStore(s3, env["CHECKPOINT_URI"]).latest()
    assert checkpoint is not None and 0.0 < checkpoint.progress < 1.0
    assert list_objects(s3, env["OUTPUT_URI"]) == {}
    # AND the process's own disposition is back once the job is over
    assert after == signal.SIG_IGN


@each_job_and_its_input
def test_a_sigterm_before_the_job_starts_stops_it_at_once_without_reading_its_input(
    pipeline_inputs: Any, monkeypatch: pytest.MonkeyPatch, job: Any, given_input: Callable[[Any], str]
) -> None:
    s3 = pipeline_inputs
    # GIVEN a part that checkpointed its first unit and stopped on a request (its previous attempt)
    env, checkpoints = stopped_after_a_unit(s3, job, given_input, "early")
    # AND its next attempt, in a process that ignores a SIGTERM it has no handler for (as Python does as a container's
    # PID 1), sent SIGTERM once as it sets up (Batch's TerminateJob), before it starts its CheckpointedJob
    reads = InputReads(s3, env["INPUT_URI"])
    as_in_container(monkeypatch, env, reads)

    def client_after_a_sigterm(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return reads

    monkeypatch.setattr(boto3, "client", client_after_a_sigterm)
    with sigterm_unhandled():
        # WHEN it runs as in its container
        with pytest.raises(Stopped) as stopped:
            job.main()
        after = signal.getsignal(signal.SIGTERM)
    # THEN it stopped at once, exit 86, with none of its input read (before, it read all of it and worked a unit,
    # which on a large input outlasts Batch's stop timeout and ends in a SIGKILL, an application error)
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SIGTERM)
    assert reads.reads == []
    # AND wrote nothing: the previous checkpoint, which the next attempt resumes, is as it was, and there is no output
    assert_wrote_nothing(s3, env, checkpoints)
    # AND the process's own disposition is back once the job is over
    assert after == signal.SIG_IGN


@each_job_and_its_input
def test_a_job_started_on_an_instance_marked_for_interruption_stops_at_once_without_reading_its_input(
    pipeline_inputs: Any, job: Any, given_input: Callable[[Any], str]
) -> None:
    s3 = pipeline_inputs
    # GIVEN a part that checkpointed its first unit and stopped on a request (its previous attempt)
    env, checkpoints = stopped_after_a_unit(s3, job, given_input, "marked")
    reads = InputReads(s3, env["INPUT_URI"])
    with MetadataStandIn() as metadata:
        # AND its next attempt placed on an instance whose metadata already carries a Spot interruption notice
        metadata.post_notice()
        marked = {**env, "AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.endpoint}
        # WHEN it runs
        with pytest.raises(Stopped) as stopped:
            job.run(reads, marked)
    # THEN the watcher's first look saw the notice and the job stopped at once, exit 86, with none of its input read
    # (before, it read all of it and worked a unit of the two minutes the notice gives)
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SPOT_INTERRUPTION)
    assert reads.reads == []
    # AND wrote nothing: the previous checkpoint, which the next attempt resumes, is as it was, and there is no output
    assert_wrote_nothing(s3, env, checkpoints)
