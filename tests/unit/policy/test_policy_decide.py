"""Rules of the deployed policy (`decide`), one at a time, in hours."""

from __future__ import annotations

import pytest
from spot_hpc.policy import Action, DeadlinePolicy, SpotStats, band_hours_for, decide
from spot_hpc.policy.stats import PRIOR_MEAN_DOWN_HOURS


def stats_with(up_hours: float, down_hours: float, cycles: int = 20) -> SpotStats:
    stats = SpotStats.with_prior(4)
    for _ in range(cycles):
        stats.observe(True, up_hours)
        stats.observe(False, down_hours)
    return stats


def ask(**overrides: object):
    values: dict[str, object] = {
        "remaining_hours": 10.0,
        "hours_left": 30.0,
        "current": Action.IDLE,
        "spot_available": True,
        "changeover_hours": 0.25,
        "od_price": 3.0,
        "spot_price": 1.0,
        "stats": stats_with(4.0, 1.0),
        "step_hours": 0.25,
    }
    values.update(overrides)
    return decide(**values)  # type: ignore[arg-type]


def test_takes_spot_when_capacity_and_slack():
    # GIVEN capacity and plenty of slack
    # WHEN the policy decides
    decision = ask()
    # THEN Spot, with a reason
    assert decision.action == Action.SPOT
    assert decision.reason


def test_waits_for_spot_while_slack_is_ample():
    # GIVEN no capacity, 20 h of slack for 10 h of work
    # WHEN the policy decides
    decision = ask(spot_available=False)
    # THEN it waits
    assert decision.action == Action.IDLE


def test_never_idles_past_the_last_moment_on_demand_can_still_finish():
    # GIVEN slack below one changeover plus one step (Spot never seen to last)
    stats = stats_with(0.1, 5.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, hours_left=10.0 + 0.25 + 0.2, stats=stats)
    # THEN On-Demand, for that reason
    assert decision.action == Action.ON_DEMAND
    assert decision.reason == "waiting longer would leave no time for On-Demand"


def test_does_not_start_spot_without_slack_for_two_changeovers():
    # GIVEN capacity but slack under two changeovers
    # WHEN the policy decides from idle
    decision = ask(hours_left=10.0 + 0.4)
    # THEN On-Demand: a reclaim after the Spot changeover would leave no time
    assert decision.action == Action.ON_DEMAND


def test_reclaimed_spot_counts_as_idle():
    # GIVEN a stage on Spot whose capacity is gone, with plenty of slack
    # WHEN the policy decides
    decision = ask(current=Action.SPOT, spot_available=False)
    # THEN it waits (it does not claim to stay on Spot)
    assert decision.action == Action.IDLE


def test_stays_on_spot_while_a_reclaim_would_still_leave_time():
    # GIVEN a stage on Spot with slack of one changeover exactly
    # WHEN the policy decides with capacity
    decision = ask(current=Action.SPOT, hours_left=10.25)
    # THEN it stays on Spot
    assert decision.action == Action.SPOT


def test_returns_from_on_demand_to_spot_only_when_it_pays():
    # GIVEN a stage on On-Demand with 0.6 h of slack, capacity back
    long_runs, blips = stats_with(4.0, 1.0), stats_with(0.3, 1.0)
    hours_left = 10.0 + 0.6
    # WHEN capacity usually lasts hours, or usually vanishes within a changeover or so
    back = ask(current=Action.ON_DEMAND, hours_left=hours_left, stats=long_runs)
    stay = ask(current=Action.ON_DEMAND, hours_left=hours_left, stats=blips)
    # THEN it returns to Spot only in the first case
    assert (back.action, stay.action) == (Action.SPOT, Action.ON_DEMAND)


def test_stage_that_cannot_use_spot_runs_on_demand():
    # GIVEN capacity and slack, but a multi-node stage
    # WHEN the policy decides
    decision = ask(spot_allowed=False)
    # THEN On-Demand
    assert decision.action == Action.ON_DEMAND


def test_no_work_left_is_idle():
    # GIVEN a finished stage
    # WHEN the policy decides
    decision = ask(remaining_hours=0.0)
    # THEN idle
    assert decision.action == Action.IDLE


@pytest.mark.parametrize("current", list(Action))
def test_missed_deadline_runs_on_demand(current):
    # GIVEN less time left than the work
    # WHEN the policy decides
    decision = ask(current=current, hours_left=5.0)
    # THEN On-Demand, to finish as early as possible
    assert decision.action == Action.ON_DEMAND


def test_waits_out_a_long_gap_while_the_slack_is_ample():
    # GIVEN capacity gone for 2 h, but 20 h of slack for 10 h of work
    stats = stats_with(4.0, 1.0)
    stats.observe(False, 1.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, stats=stats)
    # THEN it keeps waiting
    assert decision.action == Action.IDLE


def test_a_gap_older_than_any_seen_counts_before_it_ends_and_is_not_waited_out_to_the_last_of_the_slack():
    # GIVEN a stage that has run 2 h on Spot and seen no gap end yet (its gap figures are the prior's), with 30 h of
    # work, 8 h of slack and half-hour changeovers, in a gap that goes on
    step = 5 / 60
    stats = SpotStats.with_prior(4, band_hours=band_hours_for(step, 0.5))
    stats.observe(True, 2.0)
    waited = 0.0
    decision = None
    # WHEN the policy is asked every 5 minutes of the gap
    while waited < 8.0:
        stats.observe(False, step)
        waited += step
        decision = ask(
            remaining_hours=30.0,
            hours_left=38.0 - waited,
            spot_available=False,
            changeover_hours=0.5,
            od_price=3.06,
            spot_price=0.918,
            stats=stats,
            step_hours=step,
        )
        if decision.action != Action.IDLE:
            break
    # THEN it waits while the gap is young, and once the gap has outlived the life table's bands (about 1.2 h) and
    # its length counts, it goes On-Demand with most of the slack left, for Spot to come back to later (taking the
    # prior's hour-long gaps at their word, it waited 6.5 h)
    assert decision is not None and decision.action == Action.ON_DEMAND
    assert 1.2 < waited < 2.5
    assert stats.hazards(False)[-1] < 0.6 / PRIOR_MEAN_DOWN_HOURS[4]  # the prior expects a gap to end within the hour


def test_waits_out_a_gap_when_gaps_are_short_against_the_slack():
    # GIVEN gaps of 10 minutes and the same 1 h of slack
    stats = stats_with(4.0, 1.0 / 6.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, hours_left=11.0, stats=stats)
    # THEN it waits for Spot
    assert decision.action == Action.IDLE


def test_an_old_capacity_run_is_trusted_more_than_a_young_one():
    # GIVEN a life table where most capacity runs end within 15 minutes but those past it last 5 h, and a stage on
    # On-Demand with a 0.25 h changeover and just enough slack for one more return to Spot
    stats = SpotStats.with_prior(4, band_hours=0.25)
    for _ in range(20):
        stats.observe(True, 0.25)
        stats.observe(False, 0.5)
    for _ in range(5):
        stats.observe(True, 5.0)
        stats.observe(False, 0.5)
    young, old = stats_at_age(stats, 0.25), stats_at_age(stats, 1.0)
    # WHEN capacity is seen, 15 minutes old or an hour old
    at_young = ask(current=Action.ON_DEMAND, hours_left=10.6, stats=young)
    at_old = ask(current=Action.ON_DEMAND, hours_left=10.6, stats=old)
    # THEN it goes back to Spot only for the run that has already lasted
    assert (at_young.action, at_old.action) == (Action.ON_DEMAND, Action.SPOT)


def stats_at_age(stats: SpotStats, hours: float) -> SpotStats:
    again = SpotStats.from_dict(stats.to_dict())
    again.observe(True, hours)
    return again


def test_keeps_an_instance_through_its_changeover():
    # GIVEN an On-Demand instance still starting, and Spot capacity
    # WHEN the policy decides with plenty of slack
    decision = ask(current=Action.ON_DEMAND, warmup_left_hours=0.1)
    # THEN the starting instance is kept: its changeover is already paid for
    assert decision.action == Action.ON_DEMAND
    assert decision.reason.startswith("changeover in progress")


def test_leaves_spot_when_a_reclaim_would_leave_no_time():
    # GIVEN a stage on Spot with less than one changeover of slack
    # WHEN the policy decides with capacity
    decision = ask(current=Action.SPOT, hours_left=10.2)
    # THEN On-Demand now, while it can still finish
    assert decision.action == Action.ON_DEMAND


def test_the_default_policy_counts_capacity_ages_in_bands_fitting_its_changeover(make_state):
    # GIVEN the default policy on one-minute ticks with a 12-tick changeover
    policy = DeadlinePolicy()
    # WHEN it makes its first choice
    policy.choose(make_state(tick_hours=1 / 60, changeover_ticks=12, ticks=2000, work_ticks=600))
    # THEN its life table counts ages in bands of three ticks, a quarter changeover
    assert policy.stats is not None
    assert policy.stats.band_hours == pytest.approx(3 / 60)


@pytest.mark.parametrize(("short_runs", "gap_hours"), [(2, 0.2), (20, 3.0)])
@pytest.mark.parametrize("spot_price", [0.3, 0.9])
def test_a_stage_on_spot_with_capacity_stays_whatever_the_capacitys_age(short_runs: int, gap_hours: float, spot_price):
    # GIVEN a stage running on Spot with capacity, a history of capacity that died young (6-minute runs), and slack from
    # tight to ample; the live policy is not told how long its job's capacity has lasted (the simulator is)
    choices: set[Action] = set()
    for remaining, slack in [(4.0, 1.05), (4.0, 1.2), (20.0, 1.05), (20.0, 2.0)]:
        for age_hours in (0.0, 1.0, 6.0):
            stats = SpotStats.with_prior(2, band_hours=band_hours_for(5 / 60, 0.1))
            for _ in range(short_runs):
                stats.observe(False, gap_hours)
                stats.observe(True, 0.1)
            stats.observe(False, gap_hours)
            if age_hours:
                stats.observe(True, age_hours)
            # WHEN the policy is asked
            decision = decide(remaining_hours=remaining, hours_left=remaining * slack, current=Action.SPOT,
                              spot_available=True, changeover_hours=0.1, od_price=1.0, spot_price=spot_price,
                              stats=stats)  # fmt: skip
            choices.add(decision.action)
    # THEN it stays on Spot at every age: the capacity's age would change no decision, so it is not passed
    assert choices == {Action.SPOT}
