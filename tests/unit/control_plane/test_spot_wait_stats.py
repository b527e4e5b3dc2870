"""The Spot statistics a placement decision sees: a wait for capacity still in progress is part of the gap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from spot_hpc.ledger import Stage
from spot_hpc.placement import spot_stats_now
from spot_hpc.policy import SpotStats

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def waiting_stage(since: str | None) -> Stage:
    learnt = SpotStats.with_prior(4)
    learnt.observe(True, 3.0)
    learnt.observe(False, 0.0)  # reclaimed
    return Stage(
        run_id="r1",
        stage="preprocess",
        order=0,
        compute_hours=4.0,
        spot_allowed=True,
        nodes=1,
        spot_waiting_since=since,
        spot_stats=learnt.to_dict(),
    )


@pytest.mark.parametrize(
    ("since", "gap_hours"),
    [("2026-11-22T09:30:00Z", 2.5), ("2026-11-22T12:00:30Z", 0.0)],
    ids=["since-2.5-hours-ago", "since-half-a-minute-ahead-of-this-clock"],
)
def test_the_wait_in_progress_counts_as_the_current_gap(since, gap_hours):
    # GIVEN a stage waiting for Spot capacity since 2.5 h ago, after a reclaim; or since half a minute ahead of this
    # clock (the wait started by a handler whose clock ran ahead)
    stage = waiting_stage(since)
    # WHEN its statistics are read for a decision without capacity
    stats = spot_stats_now(stage, spot_available=False, changeover_hours=0.25, advisor_bucket=4, now=NOW)
    # THEN the current gap is that old, a wait begun ahead of this clock none old (not younger than none, which would
    # age what is observed after it by less than it lasts); the stored statistics are left as they were
    assert stats.available is False
    assert stats.run_hours == gap_hours
    assert stats.down_hours == gap_hours
    assert stage.spot_stats["down_hours"] == 0.0


def test_the_wait_is_not_counted_when_capacity_is_there():
    # GIVEN the same waiting stage
    stage = waiting_stage("2026-11-22T09:30:00Z")
    # WHEN its statistics are read for a decision with Spot capacity
    stats = spot_stats_now(stage, spot_available=True, changeover_hours=0.25, advisor_bucket=4, now=NOW)
    # THEN they are the stored ones
    assert stats == SpotStats.from_dict(stage.spot_stats)


def test_a_stage_that_is_not_waiting_has_its_stored_statistics():
    # GIVEN a stage with no wait in progress
    stage = waiting_stage(None)
    # WHEN its statistics are read without capacity
    stats = spot_stats_now(stage, spot_available=False, changeover_hours=0.25, advisor_bucket=4, now=NOW)
    # THEN they are the stored ones: the gap is as old as the reclaim recorded it
    assert stats == SpotStats.from_dict(stage.spot_stats)
    assert stats.run_hours == 0.0


def test_a_fresh_stage_gets_bands_fitting_its_changeover():
    # GIVEN a stage that has learnt nothing of Spot yet
    stage = waiting_stage(None)
    stage.spot_stats = {}
    # WHEN its statistics are read with one-hour changeovers
    stats = spot_stats_now(stage, spot_available=True, changeover_hours=1.0, advisor_bucket=4, now=NOW)
    # THEN its life table counts ages in bands of three five-minute guard steps
    assert stats.band_hours == pytest.approx(0.25)
    assert stats.available is None


@pytest.mark.parametrize("bucket", [0, 2, 4])
def test_a_fresh_stage_expects_of_spot_what_the_stacks_advisor_bucket_says(bucket: int):
    # GIVEN a stage that has learnt nothing of Spot yet, in a stack whose Spot types are in interruption bucket `bucket`
    stage = waiting_stage(None)
    stage.spot_stats = {}
    # WHEN its statistics are read
    stats = spot_stats_now(stage, spot_available=True, changeover_hours=0.25, advisor_bucket=bucket, now=NOW)
    # THEN the policy's prior is that bucket's: capacity expected to last as long as the Spot Advisor says
    assert stats.advisor_bucket == bucket
    assert stats.hazards(True) == SpotStats.with_prior(bucket).hazards(True)


def test_a_stage_that_has_learnt_keeps_its_own_figures_whatever_the_bucket():
    # GIVEN a stage that has learnt Spot under the worst bucket
    stage = waiting_stage(None)
    # WHEN its statistics are read in a stack now set to the best bucket
    stats = spot_stats_now(stage, spot_available=True, changeover_hours=0.25, advisor_bucket=0, now=NOW)
    # THEN what it learnt stands
    assert stats == SpotStats.from_dict(stage.spot_stats)
