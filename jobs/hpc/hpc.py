"""HPC: an ensemble of 2-D heat-equation solves (explicit finite differences), split across nodes or shards.

Each ensemble member heats a 1 m x 1 m plate, its edges held at ambient temperature, with the cleaned heat sources,
every source's power and the plate's diffusivity perturbed by a counter-based random stream (Philox keyed by the
seed, counter by member), so a member's result does not depend on which node computes it, or on restarts.
Member ``m`` runs on part ``m % parts``; a part checkpoints its finished members and the grid of the member in
progress, and resumes bit for bit.

Output per part, under ``OUTPUT_URI``: ``<part>/fields.npy`` (final temperature rise of each of its members,
members x grid x grid, float64) and ``<part>/members.json`` (member ids and the parameters), written last.

On a multi-node parallel job the main node (``AWS_BATCH_JOB_MAIN_NODE_INDEX``), after its own part, waits until every
other node's ``members.json`` exists: AWS Batch ends the job, with the main node's status, when the main node exits.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from spot_checkpoint import (
    CheckpointedJob,
    InputError,
    RuntimeConfig,
    column_positions,
    csv_number,
    join_uri,
    list_keys,
    part_name,
    read_object,
    run_job,
    whole_number,
    write_object,
)

# An aluminium plate 5 mm thick: diffusivity (m^2/s) and heat capacity per area (J / m^2 K).
DIFFUSIVITY_M2_S = 9.7e-5
AREAL_HEAT_CAPACITY_J_M2K = 2700.0 * 900.0 * 0.005
PERTURBATION = 0.2  # members vary powers and diffusivity uniformly within +-20 %
STABILITY = 0.2  # explicit scheme: alpha dt / dx^2 <= 0.25; 0.2 for the largest perturbed alpha
MEMBERS_JSON = "members.json"  # a part's output file written last: the part is complete once it exists
SOURCE_COLUMNS = ("x_m", "y_m", "power_w")  # what the solver reads of preprocess's sources.csv


@dataclass(frozen=True)
class Ensemble:
    grid: int
    members: int
    steps: int
    seed: int
    steps_per_unit: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Ensemble:
        return cls(
            grid=whole_number(environ, "HPC_GRID", 256, minimum=3),
            members=whole_number(environ, "HPC_MEMBERS", 64),
            steps=whole_number(environ, "HPC_STEPS", 5000),
            seed=whole_number(environ, "HPC_SEED", 20240601, minimum=0),
            steps_per_unit=whole_number(environ, "HPC_STEPS_PER_UNIT", 100),
        )

    @property
    def dx(self) -> float:
        return 1.0 / (self.grid - 1)

    @property
    def dt(self) -> float:
        return STABILITY * self.dx**2 / (DIFFUSIVITY_M2_S * (1.0 + PERTURBATION))

    def member_ids(self, part_index: int, parts_total: int) -> list[int]:
        return list(range(part_index, self.members, parts_total))


def load_sources(csv_bytes: bytes) -> np.ndarray:
    """The cleaned sources as an (n, 3) array of x, y, power; an :class:`InputError` naming the line of anything the
    solver cannot take (preprocess writes none of it)."""
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"sources CSV is not UTF-8 text: {exc}") from None
    # preprocess keeps an id of any length: no field is longer than the file (the csv module's own limit is 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), len(csv_bytes) + 1))
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[float, ...]] = []
    try:
        header = next(reader, None)  # None: an empty file, told below as one without sources
        if header is not None:
            # Matched as preprocess matches its upload's: a column named twice is an error, not one of the two.
            positions = column_positions(header, SOURCE_COLUMNS, "sources CSV")
            for row in reader:
                if row:  # a blank line holds no source
                    rows.append(source_of(row, positions, reader.line_num))
    except csv.Error as exc:  # the line the csv module stopped in
        raise InputError(f"sources CSV line {reader.line_num}: cannot be split into fields ({exc})") from None
    if not rows:
        raise InputError("no heat sources in the input")
    return np.asarray(rows, dtype=np.float64)


def source_of(row: list[str], positions: list[int], line: int) -> tuple[float, ...]:
    """(x, y, power) of one row of the sources CSV, whose SOURCE_COLUMNS are at ``positions``."""
    numbers = []
    for column, position in zip(SOURCE_COLUMNS, positions, strict=True):
        if position >= len(row):  # a short row
            raise InputError(f"sources CSV line {line}: has no {column}")
        raw = row[position]
        try:
            numbers.append(csv_number(raw))  # as preprocess writes them: plain ASCII decimal, finite
        except ValueError:
            raise InputError(f"sources CSV line {line}: {column} is {raw!r}, not a finite decimal number") from None
    x, y, _ = numbers
    # A source off the plate would be binned outside the grid (an index error, or a wrong cell from the other side).
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InputError(f"sources CSV line {line}: ({x!r}, {y!r}) m is off the 1 m x 1 m plate")
    return tuple(numbers)


def member_heating(sources: np.ndarray, ensemble: Ensemble, member: int) -> tuple[np.ndarray, float]:
    """(heating rate per cell in K/s, diffusivity) of one member, from its own counter-based random stream."""
    rng = np.random.Generator(np.random.Philox(key=ensemble.seed, counter=[0, member, 0, 0]))
    factors = rng.uniform(1.0 - PERTURBATION, 1.0 + PERTURBATION, size=len(sources) + 1)
    power = np.zeros((ensemble.grid, ensemble.grid))
    cells = np.rint(sources[:, :2] / ensemble.dx).astype(np.int64)
    np.add.at(power, (cells[:, 1], cells[:, 0]), sources[:, 2] * factors[:-1])
    heating = power / (ensemble.dx**2 * AREAL_HEAT_CAPACITY_J_M2K)
    heating[0, :] = heating[-1, :] = heating[:, 0] = heating[:, -1] = 0.0  # edges are held at ambient
    return heating, DIFFUSIVITY_M2_S * float(factors[-1])


def advance(rise: np.ndarray, heating: np.ndarray, diffusivity: float, ensemble: Ensemble, steps: int) -> None:
    """``steps`` explicit Euler steps of dT/dt = alpha laplacian(T) + q, in place, Dirichlet T = 0 at the edges."""
    ratio = diffusivity * ensemble.dt / ensemble.dx**2
    interior = rise[1:-1, 1:-1]
    source = heating[1:-1, 1:-1] * ensemble.dt
    for _ in range(steps):
        laplacian = rise[2:, 1:-1] + rise[:-2, 1:-1] + rise[1:-1, 2:] + rise[1:-1, :-2] - 4.0 * interior
        interior += ratio * laplacian + source


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def from_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


@dataclass
class PartState:
    """Finished members' fields, and the member in progress: its position in the part's list, step and grid."""

    finished: list[np.ndarray]
    step: int
    rise: np.ndarray

    def payloads(self) -> dict[str, bytes]:
        fields = np.stack(self.finished) if self.finished else np.zeros((0, *self.rise.shape))
        return {
            "position.json": json.dumps({"member_position": len(self.finished), "step": self.step}).encode(),
            "fields.npy": to_npy(fields),
            "rise.npy": to_npy(self.rise),
        }

    @classmethod
    def from_payloads(cls, payloads: Mapping[str, bytes]) -> PartState:
        position = json.loads(payloads["position.json"])
        fields = from_npy(payloads["fields.npy"])
        state = cls(finished=list(fields), step=int(position["step"]), rise=from_npy(payloads["rise.npy"]))
        if len(state.finished) != int(position["member_position"]):
            raise InputError("checkpoint position does not match its fields")
        return state


def solve_part(job: CheckpointedJob, sources: np.ndarray, ensemble: Ensemble, members: list[int]) -> np.ndarray:
    """The final fields of the part's members (members x grid x grid), resuming from the job's checkpoint."""
    units_per_member = -(-ensemble.steps // ensemble.steps_per_unit)
    units_total = max(len(members) * units_per_member, 1)
    if job.resumed is not None:
        state = PartState.from_payloads(job.resumed.payloads)
    else:
        state = PartState(finished=[], step=0, rise=np.zeros((ensemble.grid, ensemble.grid)))
    heating_of: dict[int, tuple[np.ndarray, float]] = {}
    while len(state.finished) < len(members):
        member = members[len(state.finished)]
        if member not in heating_of:
            heating_of.clear()
            heating_of[member] = member_heating(sources, ensemble, member)
        heating, diffusivity = heating_of[member]
        steps = min(ensemble.steps_per_unit, ensemble.steps - state.step)
        advance(state.rise, heating, diffusivity, ensemble, steps)
        state.step += steps
        if state.step == ensemble.steps:
            state.finished.append(state.rise)
            state.rise, state.step = np.zeros_like(state.rise), 0
        units_done = len(state.finished) * units_per_member + -(-state.step // ensemble.steps_per_unit)
        job.step(state.payloads, progress=units_done / units_total)
    return np.stack(state.finished) if state.finished else np.zeros((0, ensemble.grid, ensemble.grid))


def write_part_output(
    s3: Any, output_uri: str, config: RuntimeConfig, ensemble: Ensemble, members: list[int], fields: np.ndarray
) -> None:
    description = {
        "part": config.part,
        "parts_total": config.parts_total,
        "members": members,
        "grid": ensemble.grid,
        "steps": ensemble.steps,
        "seed": ensemble.seed,
        "dx_m": ensemble.dx,
        "dt_s": ensemble.dt,
    }
    write_object(s3, join_uri(output_uri, f"{config.part}/fields.npy"), to_npy(fields))
    body = json.dumps(description, indent=2).encode()
    write_object(s3, join_uri(output_uri, f"{config.part}/{MEMBERS_JSON}"), body, "application/json")  # last


def completed_parts(s3: Any, output_uri: str) -> set[str]:
    """The parts whose output is complete (their members.json exists)."""
    return {name.split("/")[0] for name in list_keys(s3, output_uri) if name.endswith(f"/{MEMBERS_JSON}")}


def run(s3: Any, environ: Mapping[str, str]) -> None:
    try:
        input_uri, output_uri = environ["INPUT_URI"], environ["OUTPUT_URI"]
    except KeyError as exc:
        raise InputError(f"environment variable {exc.args[0]} is not set") from None
    ensemble = Ensemble.from_environ(environ)
    config = RuntimeConfig.from_environ(environ)
    members = ensemble.member_ids(config.part_index, config.parts_total)

    # The job before its input, as every stage starts it: a missing checkpoint bucket fails it before any read.
    with CheckpointedJob.from_environment(s3, environ) as job:
        sources = load_sources(job.read_input(lambda: read_object(s3, input_uri), f"input {input_uri}"))
        # A final checkpoint: this part finished in an earlier attempt and its output is written.
        if job.resumed is None or not job.resumed.final:
            fields = solve_part(job, sources, ensemble, members)
            write_part_output(s3, output_uri, config, ensemble, members, fields)
            job.finish()
        if config.is_main_node:
            # AWS Batch ends a multi-node parallel job when its main node exits, with the main node's status, and
            # stops the other nodes then: exiting 0 now would settle the stage SUCCEEDED (and have its checkpoints
            # cleaned up) with other nodes unfinished. So wait for their output. A node that crashed never writes
            # it: the job's own timeout (Batch attemptDurationSeconds) bounds that wait.
            others = {part_name(node_index=node) for node in range(config.parts_total)} - {config.part}
            job.wait_until(lambda: others <= completed_parts(s3, output_uri), what=f"output of {sorted(others)}")


def main() -> int:
    return run_job("hpc", run)


if __name__ == "__main__":
    sys.exit(main())
