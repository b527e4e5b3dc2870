"""How the workloads read their inputs: preprocess streams its upload (memory does not grow with the input's size),
postprocess reads each HPC output file once."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections import Counter
from typing import Any

from spot_checkpoint import list_objects, write_object

from jobs.hpc import hpc
from jobs.postprocess import postprocess
from jobs.preprocess import preprocess

from . import test_workloads
from .conftest import BUCKET, S3Passthrough
from .test_workloads import INPUT_CSV, run_interrupted, stage_env

# The workloads' fixtures: an input preprocessed for the HPC stage.
pipeline_inputs, hpc_input = test_workloads.pipeline_inputs, test_workloads.hpc_input

INPUT_KEY = INPUT_CSV.split("/", 3)[3]


def wide_upload(rows: int, note_chars: int) -> bytes:
    """An upload whose rows carry a long extra column (which preprocess drops), every tenth id a repeat."""
    lines = ["source_id,x_m,y_m,power_w,note"]
    for index in range(rows):
        source_id = f"s{index - 1 if index % 10 == 9 else index}"
        lines.append(f"{source_id},0.{index % 97:02d},0.5,{1 + index % 7},{'n' * note_chars}")
    return ("\n".join(lines) + "\n").encode()


class RecordedReads:
    """An object body that records the size every read asks for (None: all that is left)."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.sizes: list[int | None] = []

    def read(self, size: int | None = None) -> bytes:
        whole = size is None or size < 0
        self.sizes.append(None if whole else size)
        return bytes(self._body.read() if whole else self._body.read(size))

    def close(self) -> None:
        self._body.close()


class UploadReadsRecorded(S3Passthrough):
    """An S3 client recording how each GET of the upload is read."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.bodies: list[RecordedReads] = []

    def get_object(self, **kwargs: Any) -> Any:
        response = self._s3.get_object(**kwargs)
        if kwargs["Key"] == INPUT_KEY:
            response["Body"] = RecordedReads(response["Body"])
            self.bodies.append(response["Body"])
        return response


def test_preprocess_reads_its_upload_in_pieces_and_resumes_within_it(s3: Any) -> None:
    # GIVEN a 3 MB upload
    upload = wide_upload(rows=3000, note_chars=1000)
    write_object(s3, INPUT_CSV, upload)
    chunked = {"PREPROCESS_CHUNK_ROWS": "1000", "SPOT_CHECKPOINT_INTERVAL_SECONDS": "3600"}
    preprocess.run(s3, stage_env("whole", "preprocess", INPUT_CSV, **chunked))
    # WHEN it is cleaned while being interrupted after every chunk of rows
    client = UploadReadsRecorded(s3)
    interruptions = run_interrupted(client, preprocess.run, stage_env("pieces", "preprocess", INPUT_CSV, **chunked))
    # THEN every attempt read the upload in pieces, none of them near the whole upload
    assert interruptions >= 2
    assert len(client.bodies) == interruptions + 1
    for body in client.bodies:
        assert all(size is not None and size <= len(upload) / 2 for size in body.sizes), body.sizes
    # AND the output is the uninterrupted run's, with the repeated ids rejected
    output = list_objects(s3, f"s3://{BUCKET}/intermediate/pieces/preprocess/")
    assert output == list_objects(s3, f"s3://{BUCKET}/intermediate/whole/preprocess/")
    assert json.loads(output["report.json"]) == {"rows_in": 3000, "rows_out": 2700, "rejected": {"duplicate": 300}}


class UploadFromMemory(S3Passthrough):
    """An S3 client serving the upload from bytes made before tracing starts (moto would copy it on every GET)."""

    def __init__(self, s3: Any, upload: bytes) -> None:
        super().__init__(s3)
        self._upload = upload

    def get_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"] == INPUT_KEY:
            return {"Body": io.BytesIO(self._upload)}
        return self._s3.get_object(**kwargs)


def test_preprocess_memory_does_not_grow_with_the_upload(s3: Any) -> None:
    # GIVEN a 32 MB upload of wide rows (few ids to remember, a small output)
    upload = wide_upload(rows=8000, note_chars=4000)
    upload_size = len(upload)
    assert upload_size > 32_000_000
    client = UploadFromMemory(s3, upload)
    env = stage_env("traced", "preprocess", INPUT_CSV, PREPROCESS_CHUNK_ROWS="2000")
    # AND a first run done, so that what botocore and moto build on first use is not counted
    preprocess.run(client, stage_env("warm", "preprocess", INPUT_CSV, PREPROCESS_CHUNK_ROWS="2000"))
    # WHEN it is cleaned, with Python's allocations traced
    tracemalloc.start()
    try:
        preprocess.run(client, env)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # THEN it never held more than a fraction of the upload at once (holding it whole, even once, is past that)
    assert peak < upload_size / 4
    report = json.loads(list_objects(s3, env["OUTPUT_URI"])["report.json"])
    assert report == {"rows_in": 8000, "rows_out": 7200, "rejected": {"duplicate": 800}}


class ReadsCounted(S3Passthrough):
    """An S3 client counting the GETs of every key."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.reads: Counter[str] = Counter()

    def get_object(self, **kwargs: Any) -> Any:
        self.reads[kwargs["Key"]] += 1
        return self._s3.get_object(**kwargs)


def test_postprocess_reads_each_hpc_output_file_once(s3: Any, hpc_input: str) -> None:
    # GIVEN the output of a two-node HPC stage
    for node in ("0", "1"):
        hpc.run(s3, stage_env("once", "hpc", hpc_input, AWS_BATCH_JOB_NODE_INDEX=node, AWS_BATCH_JOB_NUM_NODES="2"))
    hpc_output = "intermediate/once/hpc/"
    # WHEN postprocess merges it
    client = ReadsCounted(s3)
    postprocess.run(client, stage_env("once", "postprocess", f"s3://{BUCKET}/{hpc_output}"))
    # THEN it read every file of every part once, and wrote its summary
    reads = {key[len(hpc_output) :]: count for key, count in client.reads.items() if key.startswith(hpc_output)}
    assert reads == {f"node-{node}/{name}": 1 for node in (0, 1) for name in ("fields.npy", "members.json")}
    assert json.loads(list_objects(s3, f"s3://{BUCKET}/intermediate/once/postprocess/")["summary.json"])["members"] == 5
