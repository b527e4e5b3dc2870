"""Postprocess: merge the HPC parts into ensemble statistics and a summary, with a bootstrap confidence interval.

Reads every ``<part>/members.json`` + ``<part>/fields.npy`` under ``INPUT_URI`` (an ``InputError`` if a part is missing,
unreadable or not as its ``members.json`` describes it, if a ``members.json`` holds a member id or count that is not a
JSON integer (``1.5``, ``true``, ``"3"``), a ``grid`` below 1 or a ``dx_m`` that is not a finite JSON number above 0
(``"0.5"``, ``true``, ``0``, ``NaN``), if two parts give different grids, ``dx_m`` or seeds, if a member is listed
twice, by one part or by two, or if a field holds a NaN or an infinity), orders the members by id and writes under
``OUTPUT_URI``: ``mean_rise.npy`` and ``std_rise.npy`` (ensemble mean and standard deviation of the temperature rise per
cell), ``members.csv`` (each member's peak and mean rise) and ``summary.json``.

The hot area is the plate area where the ensemble-mean rise exceeds ``POSTPROCESS_HOT_FRACTION`` of its peak. Its
95 % confidence interval comes from a bootstrap over members: replicate ``r`` resamples members with a counter-based
stream (Philox keyed by the seed, counter by replicate), in fixed batches that are the unit of checkpointing, so the
interval is the same however often the job is interrupted.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from spot_checkpoint import (
    CheckpointedJob,
    InputError,
    fraction,
    join_uri,
    list_keys,
    open_object,
    read_object,
    run_job,
    whole_number,
    write_object,
)


@dataclass(frozen=True)
class Ensemble:
    """The merged HPC output: fields ordered by member id."""

    member_ids: list[int]
    fields: np.ndarray  # members x grid x grid
    dx_m: float
    seed: int


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class Part:
    """What one HPC part's ``members.json`` says of it."""

    name: str
    parts_total: int
    members: list[int]
    grid: int
    dx_m: float
    seed: int


def json_whole_number(value: object, what: str, minimum: int | None = None) -> int:
    """A whole number of a ``members.json``, a JSON integer as hpc writes it, of at least ``minimum`` if one is given;
    a :class:`ValueError` for anything else, which int() would take as one (``1.5``, ``true`` or ``"3"``)."""
    if type(value) is not int:  # a bool is an int too: true is no member id
        raise ValueError(f"{what} {value!r} is not a whole number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} {value!r} is not a whole number of at least {minimum}")
    return value


def json_positive_number(value: object, what: str) -> float:
    """A length of a ``members.json``, a finite JSON number above 0 as hpc writes it; a :class:`ValueError` for
    anything else, which float() would take as one (``"0.5"``, ``true``) or let through (NaN, an infinity, 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):  # a bool is an int too: true is no length
        raise ValueError(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float
        number = math.inf
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{what} {value!r} is not a finite number above 0")
    return number


def read_part(s3: Any, input_uri: str, name: str) -> Part:
    """The description of part ``name``; an :class:`InputError` if it is not one the HPC stage writes."""
    try:
        description = json.loads(read_object(s3, join_uri(input_uri, f"{name}/members.json")))
        if not isinstance(description, dict):
            raise TypeError("not a JSON object")
        part = Part(
            name=name,
            parts_total=json_whole_number(description["parts_total"], "parts_total"),
            members=[json_whole_number(member, "member") for member in description["members"]],
            # A grid of no cells has no peak: its fields would pass every check, and the summary fail on them.
            grid=json_whole_number(description["grid"], "grid", minimum=1),
            dx_m=json_positive_number(description["dx_m"], "dx_m"),
            seed=json_whole_number(description["seed"], "seed"),
        )
    except KeyError as exc:
        raise InputError(f"{name}/members.json: no {exc}") from None
    except (TypeError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise InputError(f"{name}/members.json: not an HPC part's description ({exc})") from None
    # hpc lists each of its members once: one listed twice would count twice in every statistic.
    repeated = sorted(member for member, count in Counter(part.members).items() if count > 1)
    if repeated:
        raise InputError(f"{name}/members.json: member(s) {', '.join(map(str, repeated))} listed more than once")
    return part


def read_fields(s3: Any, input_uri: str, part: Part) -> np.ndarray:
    """The part's fields, members x grid x grid, as its description says; an :class:`InputError` otherwise."""
    name = f"{part.name}/fields.npy"
    # Read once, from the stream into the array, never held as bytes beside it.
    body = open_object(s3, join_uri(input_uri, name))
    try:
        fields = np.lib.format.read_array(body, allow_pickle=False)
    except (ValueError, MemoryError) as exc:
        # numpy's errors for a truncated or foreign file; a MemoryError is the array its header declares, which
        # could not be allocated, so nothing is held.
        raise InputError(f"{name}: not a readable array ({exc})") from None
    expected = (len(part.members), part.grid, part.grid)
    if fields.shape != expected:
        raise InputError(
            f"{name}: shape {fields.shape}, not {expected} ({len(part.members)} members on a {part.grid} x "
            f"{part.grid} grid, as members.json says)"
        )
    if fields.dtype.kind != "f":
        raise InputError(f"{name}: {fields.dtype} values, not temperatures")
    # The explicit scheme hpc runs is stable: a NaN or an infinity is a broken file, and would make every statistic
    # NaN (and summary.json not JSON). One member at a time, so the check holds no second array the size of the part.
    broken = [member for member, field in zip(part.members, fields, strict=True) if not np.isfinite(field).all()]
    if broken:
        raise InputError(
            f"{name}: member(s) {', '.join(map(str, broken))} hold NaN or infinite values, not temperatures"
        )
    return fields


def load_ensemble(s3: Any, input_uri: str) -> Ensemble:
    names = sorted(name.split("/")[0] for name in list_keys(s3, input_uri) if name.endswith("/members.json"))
    parts = [read_part(s3, input_uri, name) for name in names]
    if not parts:
        raise InputError(f"no HPC output (<part>/members.json) under {input_uri}")
    parts_total = {part.parts_total for part in parts}
    if len(parts_total) != 1 or len(parts) != parts_total.pop():
        raise InputError(f"HPC output under {input_uri} has {len(parts)} parts, not the number it declares")
    first = parts[0]
    for part in parts[1:]:
        # hpc writes one grid, one cell size (dx_m, from the grid) and one seed on every part of a run: parts that
        # differ are not one ensemble. Their fields cannot be averaged cell by cell, their areas and distances would
        # take the first part's cell size for every part's, and their members come from different random streams (a
        # part rerun with another HPC_SEED), which the first part's seed would claim for all.
        for what, value, expected, why in (
            ("grid", part.grid, first.grid, "the parts are on different grids"),
            ("dx_m", part.dx_m, first.dx_m, "the parts are on different grids"),
            ("seed", part.seed, first.seed, "the parts' members come from different random streams"),
        ):
            if value != expected:
                where = f"{part.name}/members.json: {what} {value!r}, but {first.name}/members.json"
                raise InputError(f"{where} says {expected!r}: {why}")
    listed_by: dict[int, str] = {}  # member -> the part that lists it; a member runs on one part only
    for part in parts:
        for member in part.members:
            if member in listed_by:
                raise InputError(
                    f"{part.name}/members.json: member {member} is also in {listed_by[member]}/members.json"
                )
            listed_by[member] = part.name
    ids: list[int] = []
    fields: list[np.ndarray] = []
    for part in parts:
        fields.extend(read_fields(s3, input_uri, part))
        ids.extend(part.members)
    if not ids:
        raise InputError(f"HPC output under {input_uri} has no members")
    order = np.argsort(ids, kind="stable")
    return Ensemble(
        member_ids=[ids[i] for i in order],
        fields=np.stack([fields[i] for i in order]),
        dx_m=parts[0].dx_m,
        seed=parts[0].seed,
    )


def bootstrap_hot_areas(
    flat_fields: np.ndarray, threshold: float, cell_area: float, seed: int, first: int, count: int
) -> np.ndarray:
    """Hot area of the resampled ensemble mean for replicates ``first .. first + count - 1``."""
    members = flat_fields.shape[0]
    weights = np.empty((count, members))
    for offset in range(count):
        rng = np.random.Generator(np.random.Philox(key=seed, counter=[1, first + offset, 0, 0]))
        weights[offset] = np.bincount(rng.integers(0, members, size=members), minlength=members) / members
    means = weights @ flat_fields
    return np.count_nonzero(means > threshold, axis=1) * cell_area


def run(s3: Any, environ: Mapping[str, str]) -> None:
    try:
        input_uri, output_uri = environ["INPUT_URI"], environ["OUTPUT_URI"]
    except KeyError as exc:
        raise InputError(f"environment variable {exc.args[0]} is not set") from None
    replicates = whole_number(environ, "POSTPROCESS_BOOTSTRAP", 2000)
    batch = whole_number(environ, "POSTPROCESS_BATCH", 100)
    hot_fraction = fraction(environ, "POSTPROCESS_HOT_FRACTION", 0.5)
    # The job (the runtime's settings, the checkpoint bucket) before the input: a setting it cannot use fails it at
    # once, not after loading every part's fields.
    with CheckpointedJob.from_environment(s3, environ) as job:
        ensemble = job.read_input(lambda: load_ensemble(s3, input_uri), f"input {input_uri}")
        mean_rise = ensemble.fields.mean(axis=0)
        std_rise = ensemble.fields.std(axis=0)
        threshold = hot_fraction * float(mean_rise.max())
        cell_area = ensemble.dx_m**2
        flat_fields = ensemble.fields.reshape(len(ensemble.fields), -1)

        areas = np.load(io.BytesIO(job.resumed.state), allow_pickle=False) if job.resumed else np.zeros(0)
        while len(areas) < replicates:
            count = min(batch, replicates - len(areas))
            new = bootstrap_hot_areas(flat_fields, threshold, cell_area, ensemble.seed, len(areas), count)
            areas = np.concatenate([areas, new])
            job.step(partial(npy_bytes, areas), progress=len(areas) / replicates)

        peaks = ensemble.fields.reshape(len(ensemble.fields), -1).max(axis=1)
        means = flat_fields.mean(axis=1)
        peak_cell = np.unravel_index(int(np.argmax(mean_rise)), mean_rise.shape)
        summary = {
            "members": len(ensemble.member_ids),
            "grid": int(mean_rise.shape[0]),
            "peak_mean_rise_k": float(mean_rise.max()),
            "peak_location_m": {"x": float(peak_cell[1] * ensemble.dx_m), "y": float(peak_cell[0] * ensemble.dx_m)},
            "member_peak_rise_k": {
                "mean": float(peaks.mean()),
                "std": float(peaks.std()),
                "p95": float(np.percentile(peaks, 95)),
            },
            "hot_fraction": hot_fraction,
            "hot_area_m2": float(np.count_nonzero(mean_rise > threshold) * cell_area),
            "hot_area_m2_ci95": [float(np.percentile(areas, 2.5)), float(np.percentile(areas, 97.5))]
            if len(areas)
            else None,
            "bootstrap_replicates": replicates,
        }
        table = "member,peak_rise_k,mean_rise_k\n" + "".join(
            f"{member},{peak!r},{mean!r}\n"
            for member, peak, mean in zip(ensemble.member_ids, peaks.tolist(), means.tolist(), strict=True)
        )
        write_object(s3, join_uri(output_uri, "mean_rise.npy"), npy_bytes(mean_rise))
        write_object(s3, join_uri(output_uri, "std_rise.npy"), npy_bytes(std_rise))
        write_object(s3, join_uri(output_uri, "members.csv"), table.encode(), "text/csv")
        write_object(
            s3, join_uri(output_uri, "summary.json"), json.dumps(summary, indent=2).encode(), "application/json"
        )
        job.finish()


def main() -> int:
    return run_job("postprocess", run)


if __name__ == "__main__":
    sys.exit(main())
