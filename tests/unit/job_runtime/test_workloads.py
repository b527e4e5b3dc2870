"""The example workloads: validation rules, and the same output however often they are interrupted."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from spot_checkpoint import EXIT_CHECKPOINTED, CheckpointStore, Stopped, list_objects, write_object

from jobs.hpc import hpc
from jobs.postprocess import postprocess
from jobs.preprocess import preprocess
from spotctl.drill.runner import drill_source_csv

from .conftest import BUCKET

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
