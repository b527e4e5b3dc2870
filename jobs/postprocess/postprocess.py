"""Postprocess: merge the HPC parts into ensemble statistics and a summary, with a bootstrap confidence interval.

Reads every ``<part>/members.json`` + ``<part>/fields.npy`` under ``INPUT_URI`` (fails if a part is missing), orders
the members by id and writes under ``OUTPUT_URI``: ``mean_rise.npy`` and ``std_rise.npy`` (ensemble mean and standard
deviation of the temperature rise per cell), ``members.csv`` (each member's peak and mean rise) and ``summary.json``.

The hot area is the plate area where the ensemble-mean rise exceeds ``POSTPROCESS_HOT_FRACTION`` of its peak. Its
95 % confidence interval comes from a bootstrap over members: replicate ``r`` resamples members with a counter-based
stream (Philox keyed by the seed, counter by replicate), in fixed batches that are the unit of checkpointing, so the
interval is the same however often the job is interrupted.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from spot_checkpoint import (
    CheckpointedJob,
    InputError,
    join_uri,
    list_keys,
    open_object,
    read_object,
    run_job,
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


def load_ensemble(s3: Any, input_uri: str) -> Ensemble:
    descriptions = {
        name.split("/")[0]: json.loads(read_object(s3, join_uri(input_uri, name)))
        for name in list_keys(s3, input_uri)
        if name.endswith("/members.json")
    }
    if not descriptions:
        raise InputError(f"no HPC output (<part>/members.json) under {input_uri}")
    parts_total = {int(description["parts_total"]) for description in descriptions.values()}
    if len(parts_total) != 1 or len(descriptions) != parts_total.pop():
        raise InputError(f"HPC output under {input_uri} has {len(descriptions)} parts, not the number it declares")
    ids: list[int] = []
    fields: list[np.ndarray] = []
    for part in sorted(descriptions):
        # Read once, from the stream into the array, never held as bytes beside it.
        body = open_object(s3, join_uri(input_uri, f"{part}/fields.npy"))
        part_fields = np.lib.format.read_array(body, allow_pickle=False)
        if len(part_fields) != len(descriptions[part]["members"]):
            raise InputError(f"{part}: {len(part_fields)} fields for {len(descriptions[part]['members'])} members")
        ids.extend(int(member) for member in descriptions[part]["members"])
        fields.extend(part_fields)
    order = np.argsort(ids, kind="stable")
    first = descriptions[sorted(descriptions)[0]]
    return Ensemble(
        member_ids=[ids[i] for i in order],
        fields=np.stack([fields[i] for i in order]),
        dx_m=float(first["dx_m"]),
        seed=int(first["seed"]),
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
    replicates = int(environ.get("POSTPROCESS_BOOTSTRAP", "2000"))
    batch = int(environ.get("POSTPROCESS_BATCH", "100"))
    hot_fraction = float(environ.get("POSTPROCESS_HOT_FRACTION", "0.5"))
    ensemble = load_ensemble(s3, input_uri)
    mean_rise = ensemble.fields.mean(axis=0)
    std_rise = ensemble.fields.std(axis=0)
    threshold = hot_fraction * float(mean_rise.max())
    cell_area = ensemble.dx_m**2
    flat_fields = ensemble.fields.reshape(len(ensemble.fields), -1)

    with CheckpointedJob.from_environment(s3, environ) as job:
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
