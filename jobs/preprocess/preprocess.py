"""Preprocess: validate and clean a CSV of heat sources from the ingest bucket, interruptibly.

Input CSV columns (header required, case and surrounding spaces ignored, extra columns dropped):
``source_id, x_m, y_m, power_w`` - one heat source on a 1 m x 1 m plate. Rows are kept in input order;
a row is rejected (and counted by reason in ``report.json``) when it is malformed, has no id or an id with a control
character (a CR or LF would break the output CSV's lines), a non-numeric or
non-finite number, a position off the plate, a power outside (0, MAX_POWER_W], or repeats an earlier id.
The input is ``INPUT_URI`` at ``INPUT_VERSION_ID`` when that is set (the control plane pins the run's upload).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from spot_checkpoint import CheckpointedJob, InputError, join_uri, read_object, run_job, write_object

COLUMNS = ("source_id", "x_m", "y_m", "power_w")
MAX_POWER_W = 10_000.0
OUTPUT_CSV = "sources.csv"
OUTPUT_REPORT = "report.json"
SEEN_IDS_PAYLOAD = "seen_ids.json"
DEFAULT_CHUNK_ROWS = 5000


@dataclass
class CleaningState:
    """Everything needed to continue after ``rows_read`` data rows; ``cleaned`` is the output so far."""

    rows_read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    cleaned: io.StringIO = field(default_factory=io.StringIO)
    seen_ids: set[str] = field(default_factory=set)

    def payloads(self) -> dict[str, bytes]:
        header = {"rows_read": self.rows_read, "rejected": dict(sorted(self.rejected.items()))}
        return {
            "state.json": json.dumps(header).encode(),
            "cleaned.csv": self.cleaned.getvalue().encode(),
            SEEN_IDS_PAYLOAD: json.dumps(sorted(self.seen_ids)).encode(),
        }

    @classmethod
    def from_payloads(cls, payloads: Mapping[str, bytes]) -> CleaningState:
        header = json.loads(payloads["state.json"])
        text = payloads["cleaned.csv"].decode()
        state = cls(rows_read=int(header["rows_read"]), rejected=Counter(header["rejected"]))
        state.cleaned.write(text)
        if SEEN_IDS_PAYLOAD in payloads:
            state.seen_ids = set(json.loads(payloads[SEEN_IDS_PAYLOAD]))
        else:  # a checkpoint from before the ids were saved: recover them from the output so far
            state.seen_ids = {row[0] for row in csv.reader(io.StringIO(text))}
        return state


def column_positions(header: list[str]) -> list[int]:
    names = [name.strip().lower() for name in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise InputError(f"input CSV has no column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    return [names.index(column) for column in COLUMNS]


def clean_row(row: list[str], positions: list[int], seen_ids: set[str]) -> tuple[list[str] | None, str | None]:
    """(canonical row, None) if the row is valid, else (None, rejection reason)."""
    if len(row) <= max(positions):
        return None, "malformed"
    source_id, x_raw, y_raw, power_raw = (row[position].strip() for position in positions)
    if not source_id:
        return None, "missing_id"
    if has_control_character(source_id):
        return None, "control_character"
    try:
        x, y, power = float(x_raw), float(y_raw), float(power_raw)
    except ValueError:
        return None, "not_a_number"
    if not all(math.isfinite(value) for value in (x, y, power)):
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


def data_rows(text: str, skip: int) -> tuple[list[int], Iterator[list[str]]]:
    # No field is longer than the input, which is in memory already: a long one is a row to reject, not a crash
    # (the csv module's own limit, 128 KiB, raises for the whole file).
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise InputError("input CSV is empty")
    return column_positions(header), islice(reader, skip, None)


def run(s3: Any, environ: Mapping[str, str]) -> None:
    try:
        input_uri, output_uri = environ["INPUT_URI"], environ["OUTPUT_URI"]
    except KeyError as exc:
        raise InputError(f"environment variable {exc.args[0]} is not set") from None
    chunk_rows = int(environ.get("PREPROCESS_CHUNK_ROWS", DEFAULT_CHUNK_ROWS))
    # The run's own upload: a resumed attempt must not read a newer file uploaded under the same key since.
    text = read_object(s3, input_uri, environ.get("INPUT_VERSION_ID")).decode("utf-8-sig")
    total_rows = max(text.count("\n"), 1)  # an estimate for progress only
    with CheckpointedJob.from_environment(s3, environ) as job:
        state = CleaningState.from_payloads(job.resumed.payloads) if job.resumed else CleaningState()
        positions, rows = data_rows(text, state.rows_read)
        writer = csv.writer(state.cleaned, lineterminator="\n")
        while chunk := list(islice(rows, chunk_rows)):
            for row in chunk:
                cleaned, reason = clean_row(row, positions, state.seen_ids)
                if cleaned is None:
                    state.rejected[str(reason)] += 1
                else:
                    state.seen_ids.add(cleaned[0])
                    writer.writerow(cleaned)
            state.rows_read += len(chunk)
            job.step(state.payloads, progress=min(state.rows_read / total_rows, 1.0))
        rows_out = state.rows_read - sum(state.rejected.values())
        report = {"rows_in": state.rows_read, "rows_out": rows_out, "rejected": dict(sorted(state.rejected.items()))}
        write_object(
            s3, join_uri(output_uri, OUTPUT_CSV), (",".join(COLUMNS) + "\n" + state.cleaned.getvalue()).encode()
        )
        write_object(s3, join_uri(output_uri, OUTPUT_REPORT), json.dumps(report, indent=2).encode(), "application/json")
        job.finish()


def main() -> int:
    return run_job("preprocess", run)


if __name__ == "__main__":
    sys.exit(main())
