"""What a pipeline run is: its stages, and the options a user attaches to an upload (validated, with defaults).

Options come from a manifest next to the CSV (`<name>.manifest.json`), else from the object's metadata
(`x-amz-meta-deadline-hours`, `x-amz-meta-stage-hours`, `x-amz-meta-hpc-mode`, `x-amz-meta-hpc-nodes`), else defaults.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spot_hpc.validation import describe_validation_error

STAGE_NAMES = ("preprocess", "hpc", "postprocess")
INGEST_PREFIX = "incoming/"
DEFAULT_STAGE_HOURS = {"preprocess": 1.0, "hpc": 4.0, "postprocess": 1.0}
MAX_DEADLINE_HOURS = 24 * 365
HPC_NODE_VCPUS = 32  # what each node of the multi-node HPC job definition asks for (template.yaml)
# How long the state machine waits on a stage beyond the run's deadline and compute: capacity waits and restarts.
STAGE_WAIT_MARGIN_HOURS = 24.0
MAX_STAGE_WAIT_SECONDS = 365 * 24 * 3600  # a Standard workflow execution lives at most a year


# The options an upload's metadata may give (a manifest names them with underscores: `deadline_hours`).
METADATA_OPTIONS = ("deadline-hours", "stage-hours", "hpc-mode", "hpc-nodes")


class InvalidRunOptions(ValueError):
    """The options attached to an upload cannot be used; the message says which and why."""


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline_hours: float = Field(gt=0, le=MAX_DEADLINE_HOURS)
    stage_hours: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STAGE_HOURS))
    hpc_mode: Literal["multinode", "shards"] = "multinode"
    hpc_nodes: int = Field(default=2, ge=1, le=1024)

    @field_validator("deadline_hours", "stage_hours", "hpc_nodes", mode="before")
    @classmethod
    def _no_true_or_false(cls, value: Any) -> Any:
        # Pydantic would read a manifest's `true` as 1 (a one-hour deadline, one node): a typo, never a number meant.
        values = value.values() if isinstance(value, Mapping) else [value]
        if any(isinstance(one, bool) for one in values):
            raise ValueError("a number is needed, not true or false")
        return value

    @field_validator("stage_hours")
    @classmethod
    def _known_stages(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; stages are {list(STAGE_NAMES)}")
        if any(not (0 < hours <= MAX_DEADLINE_HOURS) for hours in value.values()):
            raise ValueError(f"stage hours must be more than 0 and at most {MAX_DEADLINE_HOURS}")
        return {**DEFAULT_STAGE_HOURS, **value}


def parse_stage_hours(text: str) -> dict[str, float]:
    """`preprocess=1,hpc=8` -> {"preprocess": 1.0, "hpc": 8.0} (also the `--stage-hours` syntax of spotctl)."""
    hours: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidRunOptions(f"stage hours {part!r}: expected name=hours")
        name = name.strip()
        if name in hours:  # which one was meant is anyone's guess
            raise InvalidRunOptions(f"stage hours: {name} is given twice")
        try:
            hours[name] = float(value)
        except ValueError as exc:
            raise InvalidRunOptions(f"stage hours {part!r}: {value!r} is not a number") from exc
    if not hours:  # an empty value would otherwise mean the defaults, silently
        raise InvalidRunOptions(f"stage hours: none given in {text!r}; expected name=hours,...")
    return hours


def build_run_options(
    manifest: Mapping[str, Any] | None,
    metadata: Mapping[str, str],
    default_deadline_hours: float,
    default_hpc_nodes: int,
) -> RunOptions:
    raw: dict[str, Any] = {"deadline_hours": default_deadline_hours, "hpc_nodes": default_hpc_nodes}
    if manifest is not None:
        raw.update(manifest)
    else:
        # An option named as a manifest names it would otherwise be no option at all: the run would take the
        # defaults, silently.
        misnamed = sorted(name for name in metadata if name.replace("_", "-") in METADATA_OPTIONS and "_" in name)
        if misnamed:
            meant = ", ".join(name.replace("_", "-") for name in misnamed)
            raise InvalidRunOptions(
                f"metadata {', '.join(misnamed)}: metadata names these options {meant} (underscores are a manifest's)"
            )
        if "deadline-hours" in metadata:
            raw["deadline_hours"] = metadata["deadline-hours"]
        if "stage-hours" in metadata:
            raw["stage_hours"] = parse_stage_hours(metadata["stage-hours"])
        if "hpc-mode" in metadata:
            raw["hpc_mode"] = metadata["hpc-mode"]
        if "hpc-nodes" in metadata:
            raw["hpc_nodes"] = metadata["hpc-nodes"]
    try:
        options = RunOptions.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRunOptions(describe_validation_error(exc, "options")) from exc
    if options.hpc_mode == "multinode" and options.hpc_nodes < 2:
        raise InvalidRunOptions("hpc_nodes: a multi-node parallel job needs at least 2 nodes (use hpc_mode=shards)")
    return options


# How a notice names where a run's options came from (`options_source`).
OPTIONS_FROM_WORDS = {"manifest": "its manifest", "metadata": "its metadata", "defaults": "the stack's defaults"}


def options_source(manifest: Mapping[str, Any] | None, metadata: Mapping[str, str]) -> str:
    """Where `build_run_options` takes a run's options from: "manifest", "metadata" or "defaults" (the stack's)."""
    if manifest is not None:
        return "manifest"
    return "metadata" if any(name in metadata for name in METADATA_OPTIONS) else "defaults"


@dataclass(frozen=True)
class StageSpec:
    name: str
    order: int
    spot_allowed: bool
    nodes: int


def stage_specs(options: RunOptions) -> list[StageSpec]:
    """The stages of a run. AWS Batch runs no multi-node parallel job on Spot: that HPC mode is On-Demand only."""
    return [
        StageSpec("preprocess", 0, True, 1),
        StageSpec("hpc", 1, options.hpc_mode == "shards", options.hpc_nodes),
        StageSpec("postprocess", 2, True, 1),
    ]


def stage_timeout_seconds(deadline_hours: float, stage_hours: Mapping[str, float]) -> int:
    """How long the state machine waits on any one stage before it reports the run failed.

    A stage may run until the deadline and, if the deadline is missed, goes on to the end on On-Demand: so the wait
    is the deadline plus the whole pipeline's compute and a margin, never a fixed figure that a long deadline
    outlasts (the run would be reported failed while its jobs still run).
    """
    hours = deadline_hours + sum(stage_hours.values()) + STAGE_WAIT_MARGIN_HOURS
    return min(int(hours * 3600), MAX_STAGE_WAIT_SECONDS)


def manifest_key(csv_key: str) -> str:
    return re.sub(r"\.csv$", "", csv_key, flags=re.IGNORECASE) + ".manifest.json"


def run_id_for(key: str, version_id: str | None, sequencer: str | None) -> str:
    """One run per object version: the id is derived from the key and version (or sequencer when unversioned)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", key.rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-")[:40] or "run"
    digest = hashlib.sha256(f"{key}\0{version_id or ''}\0{sequencer or ''}".encode()).hexdigest()[:12]
    return f"{stem}-{digest}"


# What jobs/preprocess writes under its output prefix (its OUTPUT_CSV), the HPC stage's input.
PREPROCESS_OUTPUT_FILE = "sources.csv"


def stage_output_uri(bucket: str, run_id: str, stage: str) -> str:
    return f"s3://{bucket}/runs/{run_id}/{stage}/"


def stage_input_uri(stage: str, upload_uri: str, output_uri_of: Callable[[str], str]) -> str:
    """Each stage reads what the one before it wrote: the upload, then preprocess's cleaned CSV, then the HPC
    stage's parts (a prefix). `output_uri_of(stage)` is where that stage wrote."""
    if stage == STAGE_NAMES[0]:
        return upload_uri
    upstream = STAGE_NAMES[STAGE_NAMES.index(stage) - 1]
    upstream_output = output_uri_of(upstream)
    return f"{upstream_output.rstrip('/')}/{PREPROCESS_OUTPUT_FILE}" if upstream == "preprocess" else upstream_output


# Tags on every Batch job the control plane submits: how a job whose runner crashed before recording it is adopted.
TAG_RUN, TAG_STAGE, TAG_ATTEMPT = "spot-hpc:run", "spot-hpc:stage", "spot-hpc:attempt"


def job_tags(run_id: str, stage: str, attempt: int) -> dict[str, str]:
    return {TAG_RUN: run_id, TAG_STAGE: stage, TAG_ATTEMPT: str(attempt)}


def job_name(run_id: str, stage: str, attempt: int) -> str:
    """Deterministic, so a crash between claiming and recording an attempt can find the job it may have submitted."""
    return f"{run_id}-{stage}-a{attempt}"[:128]
