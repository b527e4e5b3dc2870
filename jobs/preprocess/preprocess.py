"""Preprocess: validate and clean a CSV of heat sources from the ingest bucket, interruptibly.

Input CSV columns (header required, case and surrounding spaces ignored, extra columns dropped):
``source_id, x_m, y_m, power_w`` - one heat source on a 1 m x 1 m plate. Rows are kept in input order;
a row is rejected (and counted by reason in ``report.json``) when it is malformed, has a carriage return inside an
unquoted field (the csv module cannot split such a line), has no id or an id with a control character (a CR or LF
would break the output CSV's lines), a number that is not plain ASCII decimal or not finite (``csv_number``: not
``1_0``, ``inf``, Arabic-Indic digits or a no-break space around it), a position off the plate, a power outside
(0, MAX_POWER_W], or repeats an earlier id. An upload that is not UTF-8, or whose header cannot be read, lacks a
column or names one twice, is an ``InputError`` (exit 1, one line saying why and where). The input is ``INPUT_URI``
at ``INPUT_VERSION_ID`` when that is set (the control plane pins the run's upload).

The input and the output go through temporary files on local disk, a row at a time, so neither is held in memory:
what grows with the input is the set of ids kept (for the duplicate rule) and, while a checkpoint is written, its
payloads.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, TextIO

from spot_checkpoint import (
    CheckpointedJob,
    InputError,
    column_positions,
    csv_number,
    join_uri,
    open_object,
    run_job,
    whole_number,
    write_object,
)

COLUMNS = ("source_id", "x_m", "y_m", "power_w")
MAX_POWER_W = 10_000.0
OUTPUT_CSV = "sources.csv"
OUTPUT_HEADER = (",".join(COLUMNS) + "\n").encode()
OUTPUT_REPORT = "report.json"
SEEN_IDS_PAYLOAD = "seen_ids.json"
DEFAULT_CHUNK_ROWS = 5000
INPUT_ENCODING = "utf-8-sig"  # UTF-8, a byte order mark before the header dropped
COPY_BYTES = 1 << 20  # the upload is copied to local disk in pieces of this size


class CleanedCsv:
    """The output CSV being built, in a temporary file on local disk: its header, then the cleaned rows so far.

    A ``csv.writer`` writes rows to it (:meth:`write`); :meth:`getvalue` is the rows so far as text.
    """

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the state, closed by whoever ends it
        self.file.write(OUTPUT_HEADER)

    def write(self, text: str) -> None:
        self.file.write(text.encode())

    def append_rows(self, rows: bytes) -> None:
        self.file.write(rows)

    def rows(self) -> bytes:
        """The rows so far, without the header; the file is left at its end, where the next row goes."""
        self.file.seek(len(OUTPUT_HEADER))
        return self.file.read()

    def getvalue(self) -> str:
        return self.rows().decode()

    def whole(self) -> IO[bytes]:
        """The file from its start, header included, for the upload."""
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


@dataclass
class CleaningState:
    """Everything needed to continue after ``rows_read`` data rows; ``cleaned`` is the output so far."""

    rows_read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    cleaned: CleanedCsv = field(default_factory=CleanedCsv)
    seen_ids: set[str] = field(default_factory=set)

    def payloads(self) -> dict[str, bytes]:
        header = {"rows_read": self.rows_read, "rejected": dict(sorted(self.rejected.items()))}
        return {
            "state.json": json.dumps(header).encode(),
            # Checkpoint payloads are bytes: the output so far is in memory only while a checkpoint is written.
            "cleaned.csv": self.cleaned.rows(),
            SEEN_IDS_PAYLOAD: json.dumps(sorted(self.seen_ids)).encode(),
        }

    @classmethod
    def from_payloads(cls, payloads: Mapping[str, bytes]) -> CleaningState:
        header = json.loads(payloads["state.json"])
        state = cls(rows_read=int(header["rows_read"]), rejected=Counter(header["rejected"]))
        state.cleaned.append_rows(payloads["cleaned.csv"])
        if SEEN_IDS_PAYLOAD in payloads:
            state.seen_ids = set(json.loads(payloads[SEEN_IDS_PAYLOAD]))
        else:  # a checkpoint from before the ids were saved: recover them from the output so far
            state.seen_ids = {row[0] for row in csv.reader(io.StringIO(payloads["cleaned.csv"].decode()))}
        return state


def clean_row(row: list[str] | None, positions: list[int], seen_ids: set[str]) -> tuple[list[str] | None, str | None]:
    """(canonical row, None) if the row is valid, else (None, rejection reason); ``row`` None: a line the csv module
    could not split into fields (see :func:`split_rows`)."""
    if row is None:
        return None, "carriage_return"
    if len(row) <= max(positions):
        return None, "malformed"
    source_id = row[positions[0]].strip()
    if not source_id:
        return None, "missing_id"
    if has_control_character(source_id):
        return None, "control_character"
    try:
        x, y, power = (csv_number(row[position]) for position in positions[1:])
    except ValueError:  # not plain ASCII decimal (float() would take 1_0, Arabic-Indic digits, inf), or not finite
        return None, "not_a_number"
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        return None, "outside_plate"
    if not 0.0 < power <= MAX_POWER_W:
        return None, "power_out_of_range"
    if source_id in seen_ids:
        return None, "duplicate"
    return [source_id, repr(x), repr(y), repr(power)], None


def has_control_character(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


@contextmanager
def local_copy(job: CheckpointedJob, s3: Any, uri: str, version_id: str | None) -> Iterator[tuple[TextIO, int, int]]:
    """The upload copied piece by piece to a temporary file on local disk and read back as text; with its size in
    bytes and its line feeds.

    Each piece is decoded on the way, only to check it: an upload that is not UTF-8 is an input error here, before
    any work. A transient S3 error (throttling, a connection reset part way) copies it again from the start
    (``job.read_input``).
    """
    with tempfile.TemporaryFile() as copy:
        size, line_feeds = job.read_input(lambda: copy_upload(s3, uri, version_id, copy), f"input {uri}")
        copy.seek(0)
        # Lines end at line feeds only: a carriage return is left to the csv module (part of a quoted field, a line
        # ending before a line feed, an error elsewhere).
        with io.TextIOWrapper(copy, encoding=INPUT_ENCODING, newline="\n") as text:
            yield text, size, line_feeds


def copy_upload(s3: Any, uri: str, version_id: str | None, copy: IO[bytes]) -> tuple[int, int]:
    """Copy the upload into ``copy`` (emptied first), checking it is UTF-8; its size in bytes and its line feeds."""
    copy.seek(0)
    copy.truncate()
    # Plain UTF-8: it takes the same bytes as INPUT_ENCODING (a byte order mark is UTF-8 too), and the positions of
    # its errors count from the start of what it was given, which check_utf8 needs to say where the upload is wrong.
    check_text = codecs.getincrementaldecoder("utf-8")()
    size = line_feeds = 0
    with closing(open_object(s3, uri, version_id)) as body:
        while piece := body.read(COPY_BYTES):
            check_utf8(check_text, piece, size, line_feeds)
            size += len(piece)
            line_feeds += piece.count(b"\n")
            copy.write(piece)
    check_utf8(check_text, b"", size, line_feeds, final=True)
    return size, line_feeds


def check_utf8(decoder: codecs.IncrementalDecoder, piece: bytes, offset: int, lines: int, final: bool = False) -> None:
    """Decode ``piece``, which starts at byte ``offset`` of the upload after ``lines`` line feeds, only to check it;
    an :class:`InputError` saying where the upload is not UTF-8 if it is not."""
    pending = decoder.getstate()[0]  # the start of a character the previous piece ended in
    try:
        decoder.decode(piece, final)
    except UnicodeDecodeError as exc:
        data = pending + piece  # what the error's positions count in
        line = lines + data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"input is not UTF-8 text: {exc.reason}, byte 0x{data[exc.start]:02x} at offset "
            f"{offset - len(pending) + exc.start} (line {line}); save the CSV as UTF-8"
        ) from None


def split_rows(reader: Iterator[list[str]]) -> Iterator[list[str] | None]:
    """The reader's rows, and None for a line it cannot split into fields: it then goes on with the next line."""
    while True:
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error:
            # The one error left to the reader: lines end at line feeds and no field is longer than the upload, so it
            # is a carriage return inside an unquoted field. The reader drops the rest of that line.
            row = None
        yield row


def data_rows(text: Iterable[str], size: int, skip: int) -> tuple[list[int], Iterator[list[str] | None]]:
    """The column positions from the header, and the data rows after the first ``skip``, read as needed (None for
    a row that cannot be split into fields, counted as a row so that ``skip`` is the same on every attempt)."""
    # No field has more characters than the upload has bytes: a long one is a row to reject, not a crash (the csv
    # module's own limit, 128 KiB, raises for the whole file).
    csv.field_size_limit(max(csv.field_size_limit(), size + 1))
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except csv.Error:
        raise InputError(
            "input CSV header has a carriage return inside an unquoted field: lines must end in LF or CRLF, "
            "not CR alone"
        ) from None
    if header is None:
        raise InputError("input CSV is empty")
    return column_positions(header, COLUMNS, "input CSV"), islice(split_rows(reader), skip, None)


def clean_rows(
    job: CheckpointedJob,
    state: CleaningState,
    positions: list[int],
    rows: Iterator[list[str] | None],
    *,
    chunk_rows: int,
    total_rows: int,
) -> None:
    """Clean ``rows`` into ``state`` one at a time; each ``chunk_rows`` rows are a unit of work (``job.step``)."""
    writer = csv.writer(state.cleaned, lineterminator="\n")
    while True:
        rows_before = state.rows_read
        for row in islice(rows, chunk_rows):
            cleaned, reason = clean_row(row, positions, state.seen_ids)
            if cleaned is None:
                state.rejected[str(reason)] += 1
            else:
                state.seen_ids.add(cleaned[0])
                writer.writerow(cleaned)
            state.rows_read += 1
        if state.rows_read == rows_before:
            return
        job.step(state.payloads, progress=min(state.rows_read / total_rows, 1.0))


def run(s3: Any, environ: Mapping[str, str]) -> None:
    try:
        input_uri, output_uri = environ["INPUT_URI"], environ["OUTPUT_URI"]
    except KeyError as exc:
        raise InputError(f"environment variable {exc.args[0]} is not set") from None
    chunk_rows = whole_number(environ, "PREPROCESS_CHUNK_ROWS", DEFAULT_CHUNK_ROWS)
    # The job (the runtime's settings, the checkpoint bucket) before the upload: a setting it cannot use fails it at
    # once, not after copying a large upload to disk. The run's own upload: a resumed attempt must not read a newer file
    # uploaded under the same key since.
    with (
        CheckpointedJob.from_environment(s3, environ) as job,
        local_copy(job, s3, input_uri, environ.get("INPUT_VERSION_ID")) as (text, size, line_feeds),
    ):
        total_rows = max(line_feeds, 1)  # an estimate for progress only
        state = CleaningState.from_payloads(job.resumed.payloads) if job.resumed else CleaningState()
        with closing(state.cleaned):
            positions, rows = data_rows(text, size, state.rows_read)
            clean_rows(job, state, positions, rows, chunk_rows=chunk_rows, total_rows=total_rows)
            rejected = dict(sorted(state.rejected.items()))
            rows_out = state.rows_read - sum(rejected.values())
            report = {"rows_in": state.rows_read, "rows_out": rows_out, "rejected": rejected}
            write_object(s3, join_uri(output_uri, OUTPUT_CSV), state.cleaned.whole())
            report_json = json.dumps(report, indent=2).encode()
            write_object(s3, join_uri(output_uri, OUTPUT_REPORT), report_json, "application/json")
        if rows_out == 0:
            # Told here, with the reasons, rather than by the HPC stage after it has paid for its nodes.
            reasons = ", ".join(f"{count} {reason}" for reason, count in rejected.items()) or "none"
            raise InputError(f"no rows left to compute on: {state.rows_read} read, rejected: {reasons}")
        job.finish()


def main() -> int:
    return run_job("preprocess", run)


if __name__ == "__main__":
    sys.exit(main())
