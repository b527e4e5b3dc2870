"""Runs on the offline stack that the integration and end-to-end tests share: `from offline_runs import ...` (tests/ is
on pytest's pythonpath)."""

from __future__ import annotations

import json
from pathlib import Path

from spotctl.offline.runtime import OfflineControlPlane

# Three half-hour stages: a whole pipeline in a couple of virtual hours.
QUICK_STAGES = {"preprocess": 0.5, "hpc": 0.5, "postprocess": 0.5}
# ... as an upload's stage-hours metadata says them.
QUICK_STAGE_HOURS = ",".join(f"{stage}={hours}" for stage, hours in QUICK_STAGES.items())


class RuntimeExitError(Exception):
    """A Lambda whose process died (out of memory, timed out): the invocation fails where it stands."""


def trace_file(tmp_path: Path, name: str, nodes_per_tick: list[int]) -> Path:
    """A Spot trace of ten-minute ticks with capacity for `nodes_per_tick[i]` nodes at tick i."""
    trace = tmp_path / f"{name}.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": nodes_per_tick}))
    return trace


def steady_trace(tmp_path: Path, nodes: int) -> Path:
    """A trace with Spot capacity for `nodes` nodes at every tick (0: none at all)."""
    return trace_file(tmp_path, f"steady-{nodes}", [nodes] * 500)


def upload_quick_run(plane: OfflineControlPlane, deadline_hours: float) -> None:
    """Three half-hour stages (`QUICK_STAGES`) under `deadline_hours`."""
    metadata = {"deadline-hours": str(deadline_hours), "stage-hours": QUICK_STAGE_HOURS}
    plane.upload("incoming/tight.csv", b"a\n1\n", metadata)
