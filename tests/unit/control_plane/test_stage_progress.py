"""What a stage's checkpoints tell the deadline policy of the work left (placement.stage_progress)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from spot_checkpoint.store import CheckpointStore
from spot_hpc.ledger import Run, Stage
from spot_hpc.placement import choose_capacity, stage_progress, stage_view
from spot_hpc.policy import Action

pytestmark = pytest.mark.usefixtures("utc_clock")

BUCKET = "ingest"
CHECKPOINTS = f"s3://{BUCKET}/checkpoints/r1/preprocess/"


@pytest.fixture
def s3(moto_aws: None) -> Any:
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def _services(s3: Any, stage: Stage) -> Any:
    settings = SimpleNamespace(
        region="us-east-1", spot_instance_type="c6i.4xlarge", on_demand_instance_type="c6i.4xlarge",
        hpc_instance_type="c5n.18xlarge",
        changeover_hours=0.1, spot_interruption_bucket=4,
    )  # fmt: skip
    prices = SimpleNamespace(usd_per_hour=lambda *args, **kwargs: None)  # unknown: the policy assumes a discount
    return SimpleNamespace(
        settings=settings, prices=prices, s3=s3, ledger=SimpleNamespace(get_stages=lambda _: [stage])
    )


def _stage_with_nan_progress(s3: Any) -> Stage:
    # A stage of 4 h whose job checkpointed a progress it computed as NaN (a fraction of nothing done over nothing).
    CheckpointStore(s3, CHECKPOINTS).save(b"state", progress=float("nan"))
    return Stage("r1", "preprocess", 0, 4.0, True, 1, status="RUNNING", attempt=1, checkpoint_uri=CHECKPOINTS)


def test_a_checkpoint_whose_progress_is_not_a_number_leaves_the_whole_stage_to_do(s3: Any):
    # GIVEN a stage whose newest checkpoint tells a progress of NaN
    stage = _stage_with_nan_progress(s3)
    # WHEN the stage's progress is read
    done = stage_progress(_services(s3, stage), stage)
    # THEN it counts as none, as an unreadable checkpoint does: the policy weighs the whole stage as left to do
    assert done == 0.0


def test_the_policy_decides_for_a_stage_whose_checkpoint_progress_is_not_a_number(s3: Any):
    # GIVEN the same stage, a day from its run's deadline
    stage = _stage_with_nan_progress(s3)
    run = Run("r1", "b", "incoming/a.csv", "v1", "2026-01-06T06:00:00Z", 24.0, "2026-01-05T06:00:00Z", {})
    # WHEN the policy is asked where to run it with Spot capacity there (a resubmission, a guard pass)
    decision = choose_capacity(_services(s3, stage), run, stage, current=Action.IDLE, spot_available=True)
    # THEN it decides, on the whole stage's work, instead of failing the handler
    assert decision.action in (Action.SPOT, Action.ON_DEMAND)


HPC_CHECKPOINTS = f"s3://{BUCKET}/checkpoints/r1/hpc/"
DEADLINE_IN_A_DAY = "2026-01-06T06:00:00Z"


def _run(deadline_at: str = DEADLINE_IN_A_DAY) -> Run:
    return Run("r1", "b", "incoming/a.csv", "v1", deadline_at, 24.0, "2026-01-05T06:00:00Z", {})


def test_an_array_stage_has_the_work_of_its_least_advanced_shard_left(s3: Any):
    # GIVEN an HPC stage of 8 h in two shards, one of which has finished its part while the other has not
    # checkpointed yet (shards start as capacity comes, hours apart when it is short)
    CheckpointStore(s3, HPC_CHECKPOINTS, part="shard-0", parts_total=2).save(b"state", progress=1.0)
    stage = Stage("r1", "hpc", 1, 8.0, True, 2, status="RUNNING", attempt=1, checkpoint_uri=HPC_CHECKPOINTS)
    # WHEN the policy's view of the stage is taken
    view = stage_view(_services(s3, stage), _run(), stage)
    # THEN the stage is told all 8 h left: its shards run side by side, so it ends when the second one has done its
    # whole part, not after the 4 h that the mean of the two parts' progress would say
    assert view.remaining_hours == 8.0


def _stage_with_its_work_checkpointed(s3: Any, stage: str = "preprocess", spot_allowed: bool = True) -> Stage:
    # A stage whose job checkpointed all of its work, then lost its instance before writing its output and exiting.
    uri = f"s3://{BUCKET}/checkpoints/r1/{stage}/"
    CheckpointStore(s3, uri).save(b"state", progress=1.0)
    return Stage("r1", stage, 0, 4.0, spot_allowed, 2, status="RUNNING", attempt=1, checkpoint_uri=uri)


def test_a_stage_with_all_its_work_checkpointed_goes_on_demand_once_its_deadline_has_passed(s3: Any):
    # GIVEN such a stage, whose run's deadline has passed, with no Spot capacity (its instance was reclaimed)
    stage = _stage_with_its_work_checkpointed(s3)
    # WHEN the policy is asked where to run it again
    decision = choose_capacity(
        _services(s3, stage), _run(deadline_at="2026-01-05T05:00:00Z"), stage, current=Action.IDLE, spot_available=False
    )
    # THEN it goes to On-Demand to finish: a job still has to run to end the stage, and waiting for Spot, which the
    # guard would never move (the policy saw no work left), could leave it waiting for ever
    assert decision.action == Action.ON_DEMAND


def test_a_multi_node_stage_with_all_its_work_checkpointed_is_told_on_demand(s3: Any):
    # GIVEN such a stage run as a multi-node parallel job, which AWS Batch cannot run on Spot
    stage = _stage_with_its_work_checkpointed(s3, stage="hpc", spot_allowed=False)
    # WHEN the policy is asked where to run it again
    decision = choose_capacity(_services(s3, stage), _run(), stage, current=Action.IDLE, spot_available=True)
    # THEN it is told On-Demand, the only capacity it can have, not to wait
    assert decision.action == Action.ON_DEMAND
