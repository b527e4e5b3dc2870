"""A transient AWS failure, or one odd row, must not turn a job's finished or finishable work into an application error
(which spends the stage's retries and, for an array or a multi-node job, fails the whole stage)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_checkpoint import list_objects, write_object

from jobs.hpc import hpc
from jobs.preprocess import preprocess

from . import test_workloads
from .conftest import S3Passthrough
from .test_workloads import INPUT_CSV, MAIN_NODE, as_in_container, stage_env

# The workloads' fixtures: an input preprocessed for the HPC stage.
pipeline_inputs, hpc_input = test_workloads.pipeline_inputs, test_workloads.hpc_input


def _throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, operation)


class FinalManifestRefused(S3Passthrough):
    """S3 refusing (past botocore's retries) the manifest of a part's final checkpoint; everything else works."""

    def put_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith("/manifest.json") and b'"final": true' in kwargs["Body"]:
            raise _throttled("PutObject")
        return self._s3.put_object(**kwargs)


def test_a_shard_whose_output_is_written_succeeds_though_its_final_checkpoint_fails(
    s3: Any, hpc_input: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN shard 1 of an HPC array, and S3 refusing the final checkpoint it writes after its output
    env = stage_env("arr", "hpc", hpc_input, AWS_BATCH_JOB_ARRAY_INDEX="1", SPOT_CHECKPOINT_PARTS="2")
    as_in_container(monkeypatch, env, FinalManifestRefused(s3))
    # WHEN the shard runs as its container does
    code = hpc.main()
    # THEN its output is written and it exits 0: the final checkpoint only saves a resubmitted stage redoing it
    assert "shard-1/members.json" in list_objects(s3, env["OUTPUT_URI"])
    assert code == 0


class OutputListingFailsOnce(S3Passthrough):
    """S3 failing one listing of the stage's output (past botocore's retries), while the other node finishes."""

    def __init__(self, s3: Any, output_uri: str, other_node: dict[str, str]) -> None:
        super().__init__(s3)
        self.prefix = output_uri.split("/", 3)[3]
        self.other_node: dict[str, str] | None = other_node

    def list_objects_v2(self, **kwargs: Any) -> Any:
        if kwargs.get("Prefix", "").startswith(self.prefix) and self.other_node is not None:
            other, self.other_node = self.other_node, None
            hpc.run(self._s3, other)
            raise _throttled("ListObjectsV2")
        return self._s3.list_objects_v2(**kwargs)


def test_the_main_node_waiting_for_the_other_nodes_outlives_a_failed_listing(s3: Any, hpc_input: str) -> None:
    # GIVEN the main node of a two-node job, and one listing of the output failing while node 1 finishes
    main = stage_env("mnp", "hpc", hpc_input, **MAIN_NODE, AWS_BATCH_JOB_NODE_INDEX="0")
    client = OutputListingFailsOnce(s3, main["OUTPUT_URI"], {**main, "AWS_BATCH_JOB_NODE_INDEX": "1"})
    # WHEN the main node runs and waits for node 1's output
    hpc.run(client, main)
    # THEN it looked again and ended once both outputs were there (before, the failed look failed the whole job)
    assert client.other_node is None
    assert {"node-0/members.json", "node-1/members.json"} <= set(list_objects(s3, main["OUTPUT_URI"]))


def test_a_row_with_a_field_longer_than_the_csv_modules_limit_is_rejected_not_a_crash(s3: Any) -> None:
    # GIVEN an input with one row whose x field is 200,000 characters long (the csv module's limit is 131,072)
    body = "source_id,x_m,y_m,power_w\na,0.1,0.2,5\nb," + "9" * 200_000 + ",0.2,5\nc,0.3,0.3,1\n"
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("long-field", "preprocess", INPUT_CSV)
    # WHEN preprocess runs
    preprocess.run(s3, env)
    # THEN that row is rejected and the others are cleaned
    outputs = list_objects(s3, env["OUTPUT_URI"])
    assert outputs["sources.csv"].decode().splitlines()[1:] == ["a,0.1,0.2,5.0", "c,0.3,0.3,1.0"]
