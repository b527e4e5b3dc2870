"""The run options an upload's manifest or metadata give: what is refused, and what is read."""

from __future__ import annotations

from typing import Any

import pytest
from spot_hpc.pipeline import InvalidRunOptions, build_run_options


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ({"deadline_hours": True}, "deadline_hours"),
        ({"deadline_hours": 24, "hpc_nodes": True}, "hpc_nodes"),
        ({"deadline_hours": 24, "stage_hours": {"hpc": False}}, "stage_hours"),
    ],
    ids=["deadline", "nodes", "stage-hours"],
)
def test_a_manifest_giving_true_or_false_for_a_number_is_refused(manifest: dict[str, Any], field: str) -> None:
    # GIVEN a manifest whose number is a JSON true or false (which Pydantic would read as 1 or 0: a one-hour deadline)
    # WHEN the run's options are built from it
    with pytest.raises(InvalidRunOptions) as refused:
        build_run_options(manifest, {}, default_deadline_hours=48, default_hpc_nodes=2)
    # THEN they are refused, naming the option
    assert str(refused.value).startswith(f"{field}: ") and "not true or false" in str(refused.value)


def test_numbers_in_a_manifest_may_be_written_as_text_as_metadata_writes_them() -> None:
    # GIVEN a manifest whose numbers are JSON numbers or text
    manifest = {"deadline_hours": "24", "stage_hours": {"hpc": 8}, "hpc_mode": "shards", "hpc_nodes": 4.0}
    # WHEN the run's options are built from it
    options = build_run_options(manifest, {}, default_deadline_hours=48, default_hpc_nodes=2)
    # THEN each is the number it says
    assert (options.deadline_hours, options.stage_hours["hpc"], options.hpc_nodes) == (24.0, 8.0, 4)
