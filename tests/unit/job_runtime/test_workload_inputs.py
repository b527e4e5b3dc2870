"""Bad input to the workloads: a row preprocess can tell apart is rejected and counted, anything else is an input
error with a clear message (exit 1), never a crash with a traceback."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from spot_checkpoint import InputError, RuntimeConfig, fraction, list_objects, whole_number, write_object

from jobs.hpc import hpc
from jobs.postprocess import postprocess
from jobs.preprocess import preprocess

from .conftest import BUCKET
from .test_workloads import INPUT_CSV, InputReads, as_in_container, run_interrupted, stage_env

HEADER = "source_id,x_m,y_m,power_w\n"
CSV_FIELD_LIMIT = 131_072  # the csv module's own limit on a field, as a new process has it


@pytest.fixture
def fresh_csv_limit() -> Iterator[None]:
    """The csv module's field limit as a job's new process has it (a preprocess run in this process raised it)."""
    before = csv.field_size_limit(CSV_FIELD_LIMIT)
    yield
    csv.field_size_limit(before)


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


def test_preprocess_takes_plain_ascii_decimal_numbers_only(s3: Any) -> None:
    # GIVEN rows whose numbers float() reads but no CSV holds (underscores, the digits of other scripts, whitespace
    # other than spaces and tabs around them), numbers that are not finite, and plain ones written in several ways
    body = HEADER + (
        "a,0.5,0.5,1_0\n"  # digits grouped with an underscore
        "b,\u0660.\u0665,0.5,5\n"  # Arabic-Indic digits
        "c,0.5,\uff10.\uff15,5\n"  # fullwidth digits
        "d,\u00a00.5,0.5,5\n"  # a no-break space before it
        "e,0.5,0.5\u3000,5\n"  # an ideographic space after it
        'f,0.5,"0.5\n",5\n'  # a line feed inside quotes
        "g,0.5,0.5,inf\n"
        "h,0.5,0.5,1e999\n"  # beyond the largest double
        "k, 0.5 ,\t.5,+2E0\n"  # spaces and tabs around, a fraction alone, a sign and an exponent
        "l,1.,0e0,5\n"  # a trailing point
    )
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("numbers", "preprocess", INPUT_CSV)
    # WHEN it is cleaned
    preprocess.run(s3, env)
    # THEN the plain numbers are kept, canonically written, and every other row is rejected as not a number
    outputs = list_objects(s3, env["OUTPUT_URI"])
    assert json.loads(outputs["report.json"]) == {"rows_in": 10, "rows_out": 2, "rejected": {"not_a_number": 8}}
    assert outputs["sources.csv"].decode().splitlines() == [HEADER.strip(), "k,0.5,0.5,2.0", "l,1.0,0.0,5.0"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("source_id,x_m,y_m,power_w,x_m", r"x_m \(columns 2, 5\)"),
        (" X_M ,source_id,x_m,y_m,power_w", r"x_m \(columns 1, 3\)"),
        ("source_id,power_w,x_m,y_m,Power_W,source_id", r"source_id \(columns 1, 6\); power_w \(columns 2, 5\)"),
    ],
    ids=["same-name", "same-but-for-case-and-spaces", "two-columns"],
)
def test_preprocess_header_naming_a_column_twice_is_an_input_error_naming_it(
    s3: Any, header: str, message: str
) -> None:
    # GIVEN an upload whose header names a required column twice, the two holding different values
    write_object(s3, INPUT_CSV, f"{header}\n{','.join(['a', '0.1', '0.2', '5', '0.9', 'b'])}\n".encode())
    env = stage_env("twice", "preprocess", INPUT_CSV)
    # WHEN / THEN the job fails with an input error naming the column and where it is, rather than taking the first,
    # and writes nothing
    with pytest.raises(InputError, match=f"names a column more than once: {message}"):
        preprocess.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}
    assert list_objects(s3, env["CHECKPOINT_URI"]) == {}


def test_preprocess_drops_extra_columns_named_twice(s3: Any) -> None:
    # GIVEN an upload with two extra columns of the same name, and an empty name twice (trailing commas)
    write_object(s3, INPUT_CSV, b"source_id,note,x_m,y_m,power_w,note,,\na,n1,0.1,0.2,5,n2,,\n")
    env = stage_env("extra", "preprocess", INPUT_CSV)
    # WHEN it is cleaned
    preprocess.run(s3, env)
    # THEN they are dropped as any extra column is
    assert list_objects(s3, env["OUTPUT_URI"])["sources.csv"].decode() == HEADER + "a,0.1,0.2,5.0\n"


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


@pytest.mark.parametrize(
    ("run", "input_uri"),
    [
        (preprocess.run, "incoming/sources.csv"),
        (hpc.run, f"https://{BUCKET}.s3.amazonaws.com/sources.csv"),
        (postprocess.run, f"s3:///intermediate/{BUCKET}/hpc/"),
    ],
    ids=["preprocess-a-key", "hpc-an-https-url", "postprocess-no-bucket"],
)
def test_an_input_uri_that_is_no_s3_uri_is_an_input_error_naming_it(
    s3: Any, run: Callable[[Any, dict[str, str]], None], input_uri: str
) -> None:
    # GIVEN a stage's input given as something other than s3://bucket/key (a job run by hand, say)
    # WHEN / THEN the job fails with an input error naming it, which it tells in one line and exits 1 with (a
    # ValueError's traceback before)
    with pytest.raises(InputError, match=re.escape(repr(input_uri))):
        run(s3, stage_env("uri", "stage", input_uri))


# -- hpc ----------------------------------------------------------------------------------------------------------

HPC = {"HPC_GRID": "8", "HPC_MEMBERS": "2", "HPC_STEPS": "2", "HPC_STEPS_PER_UNIT": "2"}
HPC_SOURCES = f"s3://{BUCKET}/intermediate/r/preprocess/sources.csv"


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (b"source_id,x_m,y_m\na,0.1,0.1\n", "no column\\(s\\) power_w"),
        (HEADER.encode() + b"a,0.1,0.1,5\nb,0.2\n", "line 3: has no y_m"),
        (HEADER.encode() + b"a,0.1,zero,5\n", "line 2: .*y_m"),
        (HEADER.encode() + b"a,nan,0.1,5\n", "line 2: .*x_m"),
        (HEADER.encode() + b"a,1.5,0.1,5\n", "line 2: .*off the 1 m x 1 m plate"),
        (HEADER.encode() + b"a,0.1,-0.5,5\n", "line 2: .*off the 1 m x 1 m plate"),
        (HEADER.encode() + b"a,0.1,0.1,inf\n", "line 2: .*power_w"),
        (HEADER.encode() + b"a,0.1,0.1,1_0\n", "line 2: .*power_w"),
        ((HEADER + "a,\u0660.\u0661,0.1,5\n").encode(), "line 2: .*x_m"),
        ((HEADER + "a,0.1,\u00a00.1,5\n").encode(), "line 2: .*y_m"),
        (HEADER.encode() + b"a\rb,0.1,0.1,5\n", "line 2: .*new-line character"),
        (HEADER.encode() + b"caf\xe9,0.1,0.1,5\n", "not UTF-8"),
    ],
    ids=[
        "no-column",
        "short-row",
        "not-a-number",
        "nan",
        "off-the-plate",
        "negative",
        "infinite",
        "underscore",
        "arabic-indic-digits",
        "no-break-space",
        "cr",
        "latin-1",
    ],
)
def test_hpc_sources_it_cannot_use_are_an_input_error(s3: Any, sources: bytes, message: str) -> None:
    # GIVEN sources that are not a cleaned heat-source table
    write_object(s3, HPC_SOURCES, sources)
    env = stage_env("r", "hpc", HPC_SOURCES, **HPC)
    # WHEN / THEN the job fails with an input error saying what is wrong and where, and writes nothing
    with pytest.raises(InputError, match=message):
        hpc.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("source_id,x_m,y_m,power_w,power_w\na,0.1,0.2,5,9000\n", r"power_w \(columns 4, 5\)"),
        ("x_m,source_id,y_m,power_w, X_M \n0.1,a,0.2,5,0.9\n", r"x_m \(columns 1, 5\)"),
    ],
    ids=["same-name", "same-but-for-case-and-spaces"],
)
def test_hpc_sources_naming_a_column_twice_are_an_input_error_naming_it(s3: Any, sources: str, message: str) -> None:
    # GIVEN sources whose header names a column the solver reads twice, the two holding different values
    write_object(s3, HPC_SOURCES, sources.encode())
    env = stage_env("r", "hpc", HPC_SOURCES, **HPC)
    # WHEN / THEN the job fails with an input error naming the column and where it is, as preprocess does for its
    # upload, rather than silently taking one of them (csv.DictReader took the last), and writes nothing
    with pytest.raises(InputError, match=f"sources CSV header names a column more than once: {message}"):
        hpc.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


def test_hpc_reads_the_cleaned_sources_of_an_upload_with_a_very_long_id(s3: Any, fresh_csv_limit: None) -> None:
    # GIVEN an upload with one id of 200,000 characters, which preprocess keeps
    write_object(s3, INPUT_CSV, (HEADER + "a" * 200_000 + ",0.1,0.1,5\nb,0.2,0.2,5\n").encode())
    preprocess.run(s3, stage_env("long-id", "preprocess", INPUT_CSV))
    csv.field_size_limit(CSV_FIELD_LIMIT)  # the HPC stage runs in a process of its own
    env = stage_env("long-id", "hpc", HPC_SOURCES.replace("/r/", "/long-id/"), **HPC)
    # WHEN the HPC stage reads them
    hpc.run(s3, env)
    # THEN it solved its members
    assert json.loads(list_objects(s3, env["OUTPUT_URI"])["main/members.json"])["members"] == [0, 1]


def test_hpc_reads_sources_with_a_byte_order_mark(s3: Any) -> None:
    # GIVEN sources whose first column is x_m, saved with a UTF-8 byte order mark
    write_object(s3, HPC_SOURCES, b"\xef\xbb\xbfx_m,y_m,power_w,source_id\n0.1,0.1,5,a\n")
    env = stage_env("r", "hpc", HPC_SOURCES, **HPC)
    # WHEN the HPC stage reads them
    hpc.run(s3, env)
    # THEN it solved its members
    assert json.loads(list_objects(s3, env["OUTPUT_URI"])["main/members.json"])["members"] == [0, 1]


# -- postprocess --------------------------------------------------------------------------------------------------

HPC_OUTPUT = f"s3://{BUCKET}/intermediate/r/hpc/"
GRID = 6


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.fixture
def hpc_output(s3: Any) -> dict[str, bytes]:
    """A two-node HPC stage's output (members 0, 2 on node 0 and 1, 3 on node 1), as the HPC job writes it."""
    ensemble = hpc.Ensemble(grid=GRID, members=4, steps=1, seed=7, steps_per_unit=1)
    for node in (0, 1):
        config = RuntimeConfig(checkpoint_uri=None, part=f"node-{node}", part_index=node, parts_total=2)
        members = ensemble.member_ids(node, 2)
        fields = np.stack([np.full((GRID, GRID), 1.0 + member) for member in members])
        hpc.write_part_output(s3, HPC_OUTPUT, config, ensemble, members, fields)
    return list_objects(s3, HPC_OUTPUT)


def test_postprocess_reads_the_hpc_output_written_here(s3: Any, hpc_output: dict[str, bytes]) -> None:
    # GIVEN the HPC output these tests break
    env = stage_env("r", "postprocess", HPC_OUTPUT, POSTPROCESS_BOOTSTRAP="10", POSTPROCESS_BATCH="10")
    # WHEN postprocess merges it
    postprocess.run(s3, env)
    # THEN it summarised every member
    summary = json.loads(list_objects(s3, env["OUTPUT_URI"])["summary.json"])
    assert (summary["members"], summary["grid"], summary["peak_mean_rise_k"]) == (4, GRID, 2.5)


def without(name: str) -> Callable[[Any], None]:
    def delete(s3: Any) -> None:
        s3.delete_object(Bucket=BUCKET, Key=f"intermediate/r/hpc/{name}")

    return delete


def replaced(name: str, body: bytes | Callable[[bytes], bytes]) -> Callable[[Any], None]:
    def replace(s3: Any) -> None:
        uri = f"{HPC_OUTPUT}{name}"
        old = list_objects(s3, HPC_OUTPUT)[name]
        write_object(s3, uri, body(old) if callable(body) else body)

    return replace


def described(node: int, **changes: Any) -> Callable[[Any], None]:
    """node-<node>/members.json with ``changes`` to its description."""
    return replaced(f"node-{node}/members.json", lambda old: json.dumps({**json.loads(old), **changes}).encode())


def with_value(value: float, position: int) -> np.ndarray:
    """node-1's fields (members 1 and 3) as the fixture writes them, but for one cell of the field at ``position``."""
    fields = np.stack([np.full((GRID, GRID), 1.0 + member) for member in (1, 3)])
    fields[position, GRID // 2, GRID // 3] = value
    return fields


def other_grid(s3: Any) -> None:
    described(1, grid=GRID + 1)(s3)
    write_object(s3, f"{HPC_OUTPUT}node-1/fields.npy", npy(np.zeros((2, GRID + 1, GRID + 1))))


def no_cells_anywhere(s3: Any) -> None:
    for node in (0, 1):
        described(node, grid=0)(s3)
        write_object(s3, f"{HPC_OUTPUT}node-{node}/fields.npy", npy(np.zeros((2, 0, 0))))


def no_members_anywhere(s3: Any) -> None:
    for node in (0, 1):
        described(node, members=[])(s3)
        write_object(s3, f"{HPC_OUTPUT}node-{node}/fields.npy", npy(np.zeros((0, GRID, GRID))))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (without("node-1/fields.npy"), "node-1/fields.npy does not exist"),
        (replaced("node-1/fields.npy", lambda old: old[: len(old) // 2]), "node-1/fields.npy: .*EOF"),
        (replaced("node-1/fields.npy", lambda old: old[:60]), "node-1/fields.npy: .*EOF"),
        (replaced("node-1/fields.npy", b""), "node-1/fields.npy: .*EOF"),
        (replaced("node-1/fields.npy", b"not an array"), "node-1/fields.npy: .*magic"),
        (replaced("node-1/fields.npy", npy(np.array([None, 1]), allow_pickle=True)), "node-1/fields.npy: .*Object"),
        # a header declaring more than any address space holds
        (replaced("node-1/fields.npy", npy_header((2, GRID, 10**15)) + bytes(64)), "node-1/fields.npy: .*allocate"),
        (replaced("node-1/fields.npy", npy(np.zeros((2, GRID + 1, GRID + 1)))), "node-1/fields.npy: .*shape"),
        (replaced("node-1/fields.npy", npy(np.zeros((2, GRID * GRID)))), "node-1/fields.npy: .*shape"),
        (replaced("node-1/fields.npy", npy(np.float64(1.0))), "node-1/fields.npy: .*shape"),
        (replaced("node-1/fields.npy", npy(np.full((2, GRID, GRID), "x"))), "node-1/fields.npy: .*<U1"),
        (replaced("node-1/members.json", b"{not json"), "node-1/members.json: "),
        (replaced("node-1/members.json", b"[1, 2]"), "node-1/members.json: "),
        (replaced("node-1/members.json", b'{"parts_total": 2}'), "node-1/members.json: .*members"),
        (described(1, parts_total="two"), "node-1/members.json: .*two"),
        (described(1, members=[1, "x"]), "node-1/members.json: .*'x'"),
        (described(1, members=[1.5, 3]), "node-1/members.json: .*member 1.5 is not a whole number"),
        (described(1, members=[1.0, 3]), "node-1/members.json: .*member 1.0 is not a whole number"),
        (described(1, members=[True, 3]), "node-1/members.json: .*member True is not a whole number"),
        (described(1, members=[1, "3"]), "node-1/members.json: .*member '3' is not a whole number"),
        (described(1, parts_total="2"), "node-1/members.json: .*parts_total '2' is not a whole number"),
        (described(1, grid=float(GRID)), f"node-1/members.json: .*grid {float(GRID)} is not a whole number"),
        (no_cells_anywhere, "node-0/members.json: .*grid 0 is not a whole number of at least 1"),
        (described(1, dx_m="0.2"), "node-1/members.json: .*dx_m '0.2' is not a number"),
        (described(1, dx_m=True), "node-1/members.json: .*dx_m True is not a number"),
        (described(1, dx_m=0), "node-1/members.json: .*dx_m 0 is not a finite number above 0"),
        (described(1, dx_m=-0.2), "node-1/members.json: .*dx_m -0.2 is not a finite number above 0"),
        (described(1, dx_m=float("nan")), "node-1/members.json: .*dx_m nan is not a finite number above 0"),
        (described(1, dx_m=float("inf")), "node-1/members.json: .*dx_m inf is not a finite number above 0"),
        (described(1, dx_m=10**400), "node-1/members.json: .*dx_m 1000.* is not a finite number above 0"),
        (replaced("node-1/members.json", b'{"members": "\xff"}'), "node-1/members.json: "),
        (described(1, members=[1, 1]), r"node-1/members.json: member\(s\) 1 listed more than once"),
        (described(1, members=[1, 2]), "node-1/members.json: member 2 is also in node-0/members.json"),
        (replaced("node-1/fields.npy", npy(with_value(np.nan, position=1))), r"node-1/fields.npy: member\(s\) 3 .*NaN"),
        (replaced("node-1/fields.npy", npy(with_value(np.inf, position=0))), r"node-1/fields.npy: member\(s\) 1 .*inf"),
        (replaced("node-1/fields.npy", npy(with_value(-np.inf, position=1))), r"node-1/fields.npy: member\(s\) 3 "),
        (other_grid, f"node-1/members.json: grid {GRID + 1}, but node-0/members.json says {GRID}: .*different grids"),
        (described(1, dx_m=0.5), "node-1/members.json: dx_m 0.5, but node-0/members.json says 0.2: .*different grids"),
        (described(1, seed=8), "node-1/members.json: seed 8, but node-0/members.json says .*different random streams"),
        (no_members_anywhere, "no members"),
    ],
    ids=[
        "fields-missing",
        "fields-truncated",
        "fields-header-cut",
        "fields-empty",
        "fields-not-npy",
        "fields-of-objects",
        "fields-declared-huge",
        "fields-of-another-grid",
        "fields-flat",
        "fields-scalar",
        "fields-of-text",
        "members-not-json",
        "members-not-an-object",
        "members-without-keys",
        "parts-total-not-a-number",
        "member-id-not-a-number",
        "member-id-a-fraction",
        "member-id-a-float",
        "member-id-true",
        "member-id-a-string",
        "parts-total-a-string",
        "grid-a-float",
        "grid-of-no-cells",
        "dx-a-string",
        "dx-true",
        "dx-zero",
        "dx-negative",
        "dx-nan",
        "dx-infinite",
        "dx-beyond-any-float",
        "members-not-utf8",
        "member-listed-twice",
        "member-in-two-parts",
        "fields-with-nan",
        "fields-with-infinity",
        "fields-with-negative-infinity",
        "grids-differ",
        "cell-sizes-differ",
        "seeds-differ",
        "no-members",
    ],
)
def test_postprocess_refuses_hpc_output_it_cannot_read(
    s3: Any, hpc_output: dict[str, bytes], damage: Callable[[Any], None], message: str
) -> None:
    # GIVEN the output of a two-node HPC stage, damaged
    damage(s3)
    env = stage_env("r", "postprocess", HPC_OUTPUT, POSTPROCESS_BOOTSTRAP="10", POSTPROCESS_BATCH="10")
    # WHEN / THEN postprocess fails with an input error naming the part and what is wrong, and writes nothing
    with pytest.raises(InputError, match=message):
        postprocess.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (HEADER, "no rows left to compute on: 0 read, rejected: none"),
        (HEADER + "a,0.1,0.1,-5\nb,7,0.2,5\n", "no rows left to compute on: 2 read, rejected: 1 "),
    ],
    ids=["header-only", "every-row-rejected"],
)
def test_preprocess_with_no_row_left_is_an_input_error_after_writing_its_report(
    s3: Any, body: str, message: str
) -> None:
    # GIVEN an upload with a header only, or whose every row is rejected
    write_object(s3, INPUT_CSV, body.encode())
    env = stage_env("empty", "preprocess", INPUT_CSV)
    # WHEN it is cleaned
    # THEN the job fails at once with an input error saying why (not the HPC stage, after paying for its nodes), and
    # its report of what was rejected is written for the user
    with pytest.raises(InputError, match=message):
        preprocess.run(s3, env)
    report = json.loads(list_objects(s3, env["OUTPUT_URI"])["report.json"])
    assert report["rows_out"] == 0 and report["rows_in"] == body.count("\n") - 1


# -- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "name", "raw", "message"),
    [
        (
            preprocess,
            "PREPROCESS_CHUNK_ROWS",
            "0",
            "PREPROCESS_CHUNK_ROWS must be a whole number of at least 1, not '0'",
        ),
        (preprocess, "PREPROCESS_CHUNK_ROWS", "5k", "PREPROCESS_CHUNK_ROWS must be a whole number"),
        (hpc, "HPC_GRID", "2", "HPC_GRID must be a whole number of at least 3, not '2'"),
        (hpc, "HPC_MEMBERS", "64.5", "HPC_MEMBERS must be a whole number"),
        (hpc, "HPC_SEED", "-1", "HPC_SEED must be a whole number of at least 0"),
        (postprocess, "POSTPROCESS_BATCH", "0", "POSTPROCESS_BATCH must be a whole number of at least 1"),
        (postprocess, "POSTPROCESS_BOOTSTRAP", "many", "POSTPROCESS_BOOTSTRAP must be a whole number"),
        (postprocess, "POSTPROCESS_HOT_FRACTION", "1.5", r"POSTPROCESS_HOT_FRACTION must be a number in \(0, 1\]"),
        (postprocess, "POSTPROCESS_HOT_FRACTION", "nan", "POSTPROCESS_HOT_FRACTION must be a number"),
    ],
)
def test_a_job_setting_it_cannot_use_is_an_input_error_naming_it(s3: Any, job: Any, name: str, raw: str, message: str):
    # GIVEN a job whose definition sets one of its settings to a value it cannot work with (a batch of 0 rows or
    # replicates would loop for ever; a word or a fraction crashed it with a ValueError)
    env = {**stage_env("settings", job.__name__.rsplit(".", 1)[-1], INPUT_CSV), name: raw}
    # WHEN / THEN it stops before any work with an input error naming the setting and the value
    with pytest.raises(InputError, match=message):
        job.run(s3, env)
    assert list_objects(s3, env["OUTPUT_URI"]) == {}


@pytest.mark.parametrize(
    ("job", "input_uri"),
    [(preprocess, INPUT_CSV), (hpc, HPC_SOURCES), (postprocess, HPC_OUTPUT)],
    ids=["preprocess", "hpc", "postprocess"],
)
def test_a_runtime_setting_it_cannot_use_exits_1_saying_why_in_one_line_before_reading_the_input(
    s3: Any,
    hpc_output: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    job: Any,
    input_uri: str,
) -> None:
    # GIVEN every stage's input, and a job definition giving the checkpoint runtime a poll interval with a unit in it
    write_object(s3, INPUT_CSV, (HEADER + "a,0.1,0.1,5\n").encode())
    write_object(s3, HPC_SOURCES, (HEADER + "a,0.1,0.1,5.0\n").encode())
    name = job.__name__.rsplit(".", 1)[-1]
    env = stage_env("settings", name, input_uri, SPOT_CHECKPOINT_POLL_SECONDS="5s")
    reads = InputReads(s3, input_uri)
    as_in_container(monkeypatch, env, reads)
    # WHEN the job runs as in its container
    code = job.main()
    # THEN it exits with the application error's code (the definition is wrong: no resubmission will do better),
    # saying why in one line rather than with a ValueError's traceback, and writes nothing
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{name}: environment variable SPOT_CHECKPOINT_POLL_SECONDS must be a number from 0.01 to 60, not '5s'"
    ]
    assert list_objects(s3, env["OUTPUT_URI"]) == {}
    # AND it said so before it read any of its input (before, preprocess copied its whole upload and postprocess
    # loaded every part's fields first, which can take minutes, only to fail on the setting)
    assert reads.reads == []


def test_a_job_setting_left_empty_takes_its_default() -> None:
    # GIVEN an ensemble whose settings are set but empty (a job definition's blank value)
    blank = {name: " " for name in ("HPC_GRID", "HPC_MEMBERS", "HPC_STEPS", "HPC_SEED", "HPC_STEPS_PER_UNIT")}
    # WHEN / THEN it takes the defaults
    assert hpc.Ensemble.from_environ(blank) == hpc.Ensemble.from_environ({})


@pytest.mark.parametrize(
    ("read", "raw"),
    [
        (whole_number, "1_0"),  # digits grouped with an underscore
        (whole_number, "\u0661\u0660"),  # Arabic-Indic digits
        (whole_number, "\uff11\uff10"),  # fullwidth digits
        (whole_number, "\u00a010"),  # a no-break space before it
        (whole_number, "10\u3000"),  # an ideographic space after it
        (fraction, "0.2_5"),
        (fraction, "\u0660.\u0665"),
        (fraction, "\uff10.\uff15"),
        (fraction, "0.5\u00a0"),
    ],
    ids=[
        "whole-underscore",
        "whole-arabic-indic",
        "whole-fullwidth",
        "whole-no-break-space",
        "whole-ideographic-space",
        "fraction-underscore",
        "fraction-arabic-indic",
        "fraction-fullwidth",
        "fraction-no-break-space",
    ],
)
def test_a_job_setting_is_plain_ascii_or_an_input_error_naming_it(read: Callable[..., float], raw: str) -> None:
    # GIVEN a setting int() or float() reads as a number, written with what no plain ASCII number has
    environ = {"SETTING": raw}
    # WHEN / THEN the job's reader of the setting refuses it, naming the setting and the value
    with pytest.raises(InputError, match=f"SETTING must be .*, not {re.escape(repr(raw))}"):
        read(environ, "SETTING", 1)


def test_a_job_setting_in_plain_ascii_is_read_with_spaces_around_it() -> None:
    # GIVEN settings written in plain ASCII, with spaces, a tab or a line feed around them
    environ = {"COUNT": " 10\t", "SEED": "0", "SHARE": "\n.25 ", "TINY": "5e-1"}
    # WHEN / THEN they are read as the numbers they are
    assert (whole_number(environ, "COUNT", 1), whole_number(environ, "SEED", 1, minimum=0)) == (10, 0)
    assert (fraction(environ, "SHARE", 0.5), fraction(environ, "TINY", 0.1)) == (0.25, 0.5)
