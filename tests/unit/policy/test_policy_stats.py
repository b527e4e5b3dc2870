"""Spot availability statistics learnt online."""

from __future__ import annotations

import json

import pytest
from spot_hpc.policy import Action, SpotStats, band_hours_for, decide
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


def test_observing_loaded_stats_leaves_the_record_they_were_loaded_from_as_it_was():
    # GIVEN a stored record of statistics with a run and a gap seen
    seen = SpotStats.with_prior(2)
    seen.observe(True, 0.5)
    seen.observe(False, 0.25)
    record = seen.to_dict()
    stored = json.loads(json.dumps(record))
    # WHEN statistics loaded from it observe more
    SpotStats.from_dict(record).observe(True, 1.0)
    # THEN the record is as it was: loaded again, it has not seen that
    assert record == stored and SpotStats.from_dict(record) == seen


def test_a_span_that_ends_before_it_starts_observes_nothing():
    # GIVEN bands of 0.25 h, and a Spot attempt that ran 1 h on capacity (and ended on its own, not reclaimed)
    stats = SpotStats.with_prior(4, band_hours=0.25)
    stats.observe(True, 1.0)
    # WHEN the next attempt's stop is recorded half an hour before its start (two clocks), then one runs 0.5 h
    stats.observe(True, -0.5)
    stats.observe(True, 0.5)
    # THEN the capacity run is 1.5 h old, each of its ages seen once: the skewed attempt took nothing off its age
    assert stats.run_hours == pytest.approx(1.5)
    assert stats.up_exposure == pytest.approx([0.25] * 6 + [0.0] * 2)


def test_life_table_records_exposure_and_ends_by_age():
    # GIVEN bands of 0.25 h, and one capacity run of 0.6 h that ends, then a gap of 0.1 h in progress
    stats = SpotStats.with_prior(4, band_hours=0.25)
    stats.observe(True, 0.6)
    stats.observe(False, 0.1)
    # WHEN the life table is read
    # THEN the run's exposure fills its first three bands and its end sits in the third (0.5, 0.75]
    assert stats.up_exposure[:3] == pytest.approx([0.25, 0.25, 0.1])
    assert stats.up_ends == [0, 0, 1, 0, 0, 0, 0, 0]
    assert stats.down_exposure[0] == pytest.approx(0.1) and sum(stats.down_ends) == 0


def test_hazards_come_from_ended_runs_shrunk_to_the_prior():
    # GIVEN many capacity runs that each end in their first 0.25 h band
    stats = SpotStats.with_prior(4, band_hours=0.25)
    for _ in range(40):
        stats.observe(True, 0.25)
        stats.observe(False, 0.25)
    stats.observe(True, 0.25)
    # WHEN the planner's hazards are read
    up = stats.hazards(True)
    # THEN the first band says about one end per 0.25 h, later bands (never reached) stay at the prior
    assert up[0] == pytest.approx((40 + 5 * 0.25 / PRIOR_MEAN_UP_HOURS[4]) / (40 * 0.25 + 5 * 0.25), rel=0.35)
    assert up[0] > 3.0
    assert up[5] == pytest.approx(1.0 / PRIOR_MEAN_UP_HOURS[4])


def test_planner_hazards_hold_between_refreshes():
    # GIVEN statistics whose planner hazards were taken at the first run end
    stats = SpotStats.with_prior(4, band_hours=0.25)
    stats.observe(True, 1.0)
    stats.observe(False, 0.25)
    first = stats.hazards(True)
    # WHEN another run ends before the observed time has grown by half
    stats.observe(True, 0.1)
    stats.observe(False, 0.1)
    held = stats.hazards(True)
    # AND one ends after it has
    stats.observe(True, 2.0)
    stats.observe(False, 0.25)
    # THEN the first end keeps the hazards, the second refreshes them
    assert held == first
    assert stats.hazards(True) != first


def test_a_gap_that_outlives_the_closed_bands_refreshes_the_gap_hazards_as_it_grows():
    # GIVEN bands of 0.25 h (closed up to 1.75 h), hazards taken at the end of a first capacity run, and a gap
    stats = SpotStats.with_prior(4, band_hours=0.25)
    stats.observe(True, 1.0)
    at_run_end = stats.hazards(False)
    # WHEN the gap is still within the closed bands
    stats.observe(False, 1.75)
    within = stats.hazards(False)
    up = stats.hazards(True)
    # AND once it has outlived them, then grown by less than half, then by half
    stats.observe(False, 0.25)
    outlived = stats.hazards(False)
    stats.observe(False, 0.75)
    held = stats.hazards(False)
    stats.observe(False, 0.25)
    grown = stats.hazards(False)
    # THEN the gap counts only once it has outlived the bands, then at most once per half again of its age: its
    # hours without an end lower the open band's hazard (and the young bands', which it passed without ending)
    assert within == at_run_end
    assert outlived[-1] < at_run_end[-1] and outlived[0] < at_run_end[0]
    assert held == outlived
    assert grown[-1] < outlived[-1]
    assert stats.gap_planned_at_hours == pytest.approx(3.0)
    # AND the capacity hazards are left as they were
    assert stats.hazards(True) == up


def test_a_new_gap_is_counted_afresh_from_its_own_age():
    # GIVEN a long gap that refreshed the gap hazards, then capacity, then a new gap
    stats = SpotStats.with_prior(4, band_hours=0.25)
    stats.observe(True, 1.0)
    stats.observe(False, 3.0)
    stats.observe(True, 1.0)
    stats.observe(False, 0.5)
    young = stats.hazards(False)
    # WHEN the new gap outlives the closed bands, younger than the first was at its last refresh
    stats.observe(False, 1.5)
    # THEN it refreshes the hazards all the same
    assert stats.gap_planned_at_hours == pytest.approx(2.0)
    assert stats.hazards(False) != young


def test_a_gap_reported_in_one_call_refreshes_as_one_seen_step_by_step():
    # GIVEN a stage that saw 2 h of capacity, then a gap of 8 h: seen every 5-minute step (as the simulator sees it),
    # or rebuilt from the stored record and told the whole wait in one call (as each SLA guard pass does)
    step = 5 / 60

    def after_capacity() -> SpotStats:
        stats = SpotStats.with_prior(4)
        stats.observe(True, 2.0)
        return stats

    stepped = after_capacity()
    for _ in range(96):
        stepped.observe(False, step)
    told_at_once = after_capacity()
    told_at_once.observe(False, 8.0)
    # ... and, between two refreshes of that gap (at 5.6 h and at 8.4 h of it), told at once at 6 h and at 7.5 h
    at_six, at_seven_and_a_half = after_capacity(), after_capacity()
    at_six.observe(False, 6.0)
    at_seven_and_a_half.observe(False, 7.5)

    # THEN the gap hazards the planner uses are the same whichever way the gap was told, and hold between refreshes
    assert told_at_once.gap_planned_at_hours == pytest.approx(stepped.gap_planned_at_hours)
    assert told_at_once.hazards(False) == pytest.approx(stepped.hazards(False))
    assert at_six.hazards(False) == pytest.approx(at_seven_and_a_half.hazards(False))
    assert at_six.gap_planned_at_hours == pytest.approx(at_seven_and_a_half.gap_planned_at_hours)


def test_stats_without_a_life_table_still_load():
    # GIVEN statistics stored before the life table existed, and one with other bands
    old = {"advisor_bucket": 2, "up_hours": 3.0, "interruptions": 1, "available": True, "run_hours": 1.0}
    other = SpotStats.with_prior(2).to_dict() | {"up_ends": [1, 2]}
    # WHEN loaded
    # THEN they load, with a fresh table where theirs does not fit
    assert SpotStats.from_dict(old).up_ends == [0] * 8
    assert SpotStats.from_dict(other).up_ends == [0] * 8


def test_stats_stored_with_other_bands_give_the_planner_hazards_it_can_use():
    # GIVEN statistics stored with six age bands, whose planner hazards were taken when a capacity run ended
    stored = SpotStats.with_prior(2)
    stored.observe(True, 1.0)
    stored.observe(False, 0.5)
    other = stored.to_dict()
    for table in ("up_exposure", "up_ends", "down_exposure", "down_ends", "planned_up", "planned_down"):
        other[table] = other[table][:6]
    # WHEN loaded
    loaded = SpotStats.from_dict(other)
    # THEN the planner's hazards have a band each, as a fresh table has (the prior's until a run ends again)
    assert loaded.hazards(True) == SpotStats.with_prior(2).hazards(True)
    assert loaded.hazards(False) == SpotStats.with_prior(2).hazards(False)
    # AND the policy plans with them
    decision = decide(
        remaining_hours=1.0, hours_left=5.0, current=Action.IDLE, spot_available=True, changeover_hours=0.25,
        od_price=1.0, spot_price=0.3, stats=loaded,
    )  # fmt: skip
    assert decision.action == Action.SPOT


@pytest.mark.parametrize(
    ("step_hours", "changeover_hours", "band_hours"),
    [
        (5 / 60, 0.25, 5 / 60),  # a changeover of three steps: bands one step wide
        (5 / 60, 0.0, 5 / 60),
        (5 / 60, 1.0, 0.25),  # twelve steps: bands of three
        (1 / 60, 0.2, 3 / 60),  # one-minute steps, a 12-minute changeover
        (1.0, 0.25, 1.0),  # hourly steps: never narrower than a step
    ],
)
def test_bands_are_whole_steps_about_a_quarter_changeover_wide(step_hours, changeover_hours, band_hours):
    # GIVEN a policy asked every step_hours, whose instances take changeover_hours to start
    # WHEN the width of its life-table bands is worked out
    width = band_hours_for(step_hours, changeover_hours)
    # THEN it is band_hours, a whole number of steps
    assert width == pytest.approx(band_hours)
    assert (width / step_hours) == pytest.approx(round(width / step_hours))
