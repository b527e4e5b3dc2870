"""Spot availability statistics learnt online."""

from __future__ import annotations

import json

import pytest
from spot_hpc.policy import SpotStats
from spot_hpc.policy.stats import PRIOR_MEAN_UP_HOURS


def test_prior_comes_from_the_advisor_bucket():
    # GIVEN fresh statistics for the calmest and the busiest buckets
    calm, busy = SpotStats.with_prior(0), SpotStats.with_prior(4)
    # WHEN nothing has been observed
    # THEN the calmer bucket expects longer-lived capacity
    assert calm.mean_up_hours == PRIOR_MEAN_UP_HOURS[0]
    assert calm.mean_up_hours > busy.mean_up_hours


def test_observed_runs_outweigh_the_prior():
    # GIVEN a prior and then ten 1-hour capacity runs each followed by a 3-hour gap
    stats = SpotStats.with_prior(4)
    for _ in range(10):
        stats.observe(True, 1.0)
        stats.observe(False, 3.0)
    # WHEN the estimates are read
    # THEN they are close to what was seen
    assert stats.interruptions == 10 and stats.recoveries == 9
    assert stats.mean_up_hours == pytest.approx((10 + 4) / 11)
    assert stats.mean_down_hours == pytest.approx((30 + 1) / 10)
    assert 0.2 < stats.availability < 0.35


def test_stats_round_trip_through_json():
    # GIVEN statistics with observations
    stats = SpotStats.with_prior(2)
    stats.observe(True, 0.5)
    stats.observe(False, 0.25)
    # WHEN serialised to JSON and back
    again = SpotStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    # THEN nothing is lost
    assert again == stats
