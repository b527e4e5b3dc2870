"""Bad input to the workloads: a row preprocess can tell apart is rejected and counted, anything else is an input
error with a clear message (exit 1), never a crash with a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from spot_checkpoint import InputError, list_objects, write_object

from jobs.hpc import hpc
from jobs.preprocess import preprocess

from .conftest import BUCKET
from .test_workloads import INPUT_CSV, as_in_container, run_interrupted, stage_env

HEADER = "source_id,x_m,y_m,power_w\n"

# -- preprocess ---------------------------------------------------------------------------------------------------


def test_preprocess_rejects_rows_with_a_carriage_return_in_an_unquoted_field_and_resumes_after_them(s3: Any) -> None:
    # GIVEN a CSV with a bare carriage return inside an unquoted id, and another inside an unquoted number
    body = HEADER + "a\rb,0.1,0.1,5\nc,0.2,0.2,5\nd,0.3\r,0.3,5\ne,0.4,0.4,5\n"
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("cr", "preprocess", INPUT_CSV, PREPROCESS_CHUNK_ROWS="1")
    # WHEN it is cleaned while being interrupted after every row
    interruptions = run_interrupted(s3, preprocess.run, env)
    # THEN those two rows were rejected for it, every resume went on after them, and the other rows were kept
    assert interruptions > 0
    outputs = list_objects(s3, env["OUTPUT_URI"])
    assert json.loads(outputs["report.json"]) == {"rows_in": 4, "rows_out": 2, "rejected": {"carriage_return": 2}}
    assert outputs["sources.csv"].decode().splitlines() == [HEADER.strip(), "c,0.2,0.2,5.0", "e,0.4,0.4,5.0"]


def test_preprocess_upload_with_bare_carriage_return_line_ends_is_an_input_error(s3: Any) -> None:
    # GIVEN a CSV whose lines end in a carriage return alone (no line feed)
    write_object(s3, INPUT_CSV, b"source_id,x_m,y_m,power_w\ra,0.1,0.1,5\rb,0.2,0.2,5\r")
    env = stage_env("cr", "preprocess", INPUT_CSV)
    # WHEN / THEN the job fails with an input error that names the carriage return, and writes nothing
    with pytest.raises(InputError, match=r"header .*carriage return"):
        preprocess.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


@pytest.mark.parametrize(
    ("upload", "piece_bytes", "where"),
    [
        # a Latin-1 e-acute in the third line
        ((HEADER + "a,0.1,0.1,5\ncaf").encode() + b"\xe9,0.2,0.2,5\n", None, "offset 41 (line 3)"),
        # an upload in UTF-16, with its byte order mark
        ((HEADER + "a,0.1,0.1,5\n").encode("utf-16"), None, "offset 0 (line 1)"),
        # a two-byte character cut off by the end of the upload
        ((HEADER + "a,0.1,0.1,5\n").encode() + b"\xc3", None, "offset 38 (line 3)"),
        # a three-byte character whose last byte is wrong, begun at the end of one piece read and ended in the next
        ((HEADER + "ab").encode() + b"\xe2\x82A,0.1,0.1,5\n", 29, "offset 28 (line 2)"),
    ],
    ids=["latin-1", "utf-16", "cut-off", "across-pieces"],
)
def test_preprocess_upload_that_is_not_utf8_is_an_input_error_saying_where(
    s3: Any, monkeypatch: pytest.MonkeyPatch, upload: bytes, piece_bytes: int | None, where: str
) -> None:
    # GIVEN an upload that is not UTF-8, copied to local disk in pieces of the given size
    if piece_bytes is not None:
        monkeypatch.setattr(preprocess, "COPY_BYTES", piece_bytes)
    write_object(s3, INPUT_CSV, upload)
    env = stage_env("utf", "preprocess", INPUT_CSV)
    # WHEN / THEN the job fails before any work with an input error saying where the upload stops being UTF-8
    with pytest.raises(InputError, match="not UTF-8") as failed:
        preprocess.run(s3, env)
    assert where in str(failed.value)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}
    assert list_objects(s3, env["CHECKPOINT_URI"]) == {}


def test_preprocess_bad_upload_exits_1_with_a_message_not_a_traceback(
    s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an upload in Latin-1
    write_object(s3, INPUT_CSV, HEADER.encode() + b"caf\xe9,0.2,0.2,5\n")
    as_in_container(monkeypatch, stage_env("utf", "preprocess", INPUT_CSV), s3)
    # WHEN the job runs as in its container
    code = preprocess.main()
    # THEN it exits with the application error's code, saying why in one line
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("preprocess: input is not UTF-8 text")


# -- any workload -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "input_uri"),
    [(preprocess.run, INPUT_CSV), (hpc.run, f"s3://{BUCKET}/intermediate/gone/preprocess/sources.csv")],
    ids=["preprocess", "hpc"],
)
def test_a_missing_input_object_is_an_input_error(
    s3: Any, run: Callable[[Any, dict[str, str]], None], input_uri: str
) -> None:
    # GIVEN no object at the stage's input
    # WHEN / THEN the job fails with an input error naming it
    with pytest.raises(InputError, match=f"{input_uri} does not exist"):
        run(s3, stage_env("gone", "stage", input_uri))


def test_a_deleted_upload_version_is_an_input_error(s3: Any) -> None:
    # GIVEN a run pinned to an upload version that was deleted since, a newer upload under the same key
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket=BUCKET, Key="incoming/sources.csv", Body=HEADER.encode())["VersionId"]
    s3.delete_object(Bucket=BUCKET, Key="incoming/sources.csv", VersionId=version)
    write_object(s3, INPUT_CSV, HEADER.encode())
    # WHEN / THEN preprocess fails with an input error naming the version, rather than read another upload
    with pytest.raises(InputError, match=f"version {version}\\) does not exist"):
        preprocess.run(s3, stage_env("gone", "preprocess", INPUT_CSV, INPUT_VERSION_ID=version))


def test_an_input_bucket_that_does_not_exist_is_an_input_error(s3: Any) -> None:
    # GIVEN an input URI in a bucket that does not exist
    input_uri = "s3://no-such-ingest-bucket/incoming/sources.csv"
    # WHEN / THEN preprocess fails with an input error naming it
    with pytest.raises(InputError, match=f"{input_uri} cannot be read \\(NoSuchBucket\\)"):
        preprocess.run(s3, stage_env("gone", "preprocess", input_uri))
