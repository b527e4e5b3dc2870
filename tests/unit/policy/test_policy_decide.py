"""Rules of the deployed policy (`decide`), one at a time, in hours."""

from __future__ import annotations

import pytest
from spot_hpc.policy import Action, SpotStats, decide
from spot_hpc.policy.deadline import hop_reserve


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


def test_waits_for_spot_while_slack_is_above_the_reserve():
    # GIVEN no capacity, 20 h of slack for 10 h of work
    # WHEN the policy decides
    decision = ask(spot_available=False)
    # THEN it waits
    assert decision.action == Action.IDLE


def test_fills_a_gap_with_on_demand_once_slack_is_down_to_the_reserve():
    # GIVEN no capacity and slack just at the reserve for the remaining work
    stats = stats_with(4.0, 1.0)
    reserve = hop_reserve(10.0, 0.25, 3.0, 1.0, stats)
    # WHEN the policy decides
    decision = ask(spot_available=False, hours_left=10.0 + reserve, stats=stats)
    # THEN On-Demand
    assert decision.action == Action.ON_DEMAND


def test_never_idles_past_the_last_moment_on_demand_can_still_finish():
    # GIVEN slack below one changeover plus one step, even with no reserve needed (Spot never seen to last)
    stats = stats_with(0.1, 5.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, hours_left=10.0 + 0.25 + 0.2, stats=stats)
    # THEN On-Demand, for that reason (the reserve rule alone would also say On-Demand here)
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
    # GIVEN a stage on On-Demand, slack below the reserve, capacity back
    long_runs, blips = stats_with(4.0, 1.0), stats_with(0.3, 1.0)
    hours_left = 10.0 + 0.6
    # WHEN capacity usually lasts hours, or usually vanishes within a changeover or so
    back = ask(current=Action.ON_DEMAND, hours_left=hours_left, stats=long_runs)
    stay = ask(current=Action.ON_DEMAND, hours_left=hours_left, stats=blips)
    # THEN it returns to Spot only in the first case
    assert (back.action, stay.action) == (Action.SPOT, Action.ON_DEMAND)


def test_reserve_covers_returns_to_spot_when_they_are_the_better_use_of_slack():
    # GIVEN 4 h capacity runs, 1 h gaps, a 0.25 h changeover and Spot at a third of On-Demand
    stats = stats_with(4.0, 1.0)
    # WHEN the end-game reserve for 10 h of work is asked for
    reserve = hop_reserve(10.0, 0.25, 3.0, 1.0, stats)
    # THEN it holds the fallback changeover plus two changeovers per expected return (10 h / 5 h cycles, plus one)
    cycle = stats.mean_up_hours + stats.mean_down_hours
    assert reserve == pytest.approx(0.25 + 2 * 0.25 * (1.0 + 10.0 / cycle))


@pytest.mark.parametrize(
    ("why", "change", "od_price", "spot_price"),
    [
        ("long changeovers eat the Spot run", 1.0, 3.0, 1.0),
        ("a small Spot discount (15%)", 0.25, 3.0, 2.55),
    ],
)
def test_reserve_is_the_fallback_alone_when_slack_buys_more_waiting_in_gaps(why, change, od_price, spot_price):
    # GIVEN the same 4 h capacity runs, where a return to Spot saves less than its two changeovers of slack would
    # save spent waiting out gaps instead of On-Demand
    stats = stats_with(4.0, 1.0)
    # WHEN the end-game reserve is asked for
    reserve = hop_reserve(10.0, change, od_price, spot_price, stats)
    # THEN only the final On-Demand changeover is kept
    assert reserve == pytest.approx(change), why


def test_waits_where_a_return_reserve_would_have_filled_the_gap():
    # GIVEN 1 h changeovers, 4 h capacity runs, and 4 h of slack for 10 h of work: under the reserve that counting
    # returns would ask for (1 + 2 * (1 + 10 / 5) = 7 h), above the fallback changeover
    stats = stats_with(4.0, 1.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, changeover_hours=1.0, hours_left=14.0, stats=stats)
    # THEN it waits for Spot: the slack buys more waiting in gaps than returning to Spot later
    assert decision.action == Action.IDLE


def test_does_not_flip_from_on_demand_to_idle_just_above_the_reserve():
    # GIVEN a stage on On-Demand without capacity, slack a little above the reserve
    stats = stats_with(4.0, 1.0)
    reserve = hop_reserve(10.0, 0.25, 3.0, 1.0, stats)
    # WHEN the policy decides
    decision = ask(current=Action.ON_DEMAND, spot_available=False, hours_left=10.0 + reserve + 0.5, stats=stats)
    # THEN it keeps On-Demand (leaving would bring another On-Demand changeover soon)
    assert decision.action == Action.ON_DEMAND


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


def test_fills_a_long_gap_with_on_demand_before_the_reserve():
    # GIVEN capacity gone for 8 changeovers (2 h), and slack above the reserve by less than a tenth of the gap
    # time expected over the remaining work (10 h of work at 80% availability: 2 h of gaps)
    stats = stats_with(4.0, 1.0)
    stats.observe(False, 1.0)
    reserve = hop_reserve(10.0, 0.25, 3.0, 1.0, stats)
    hours_left = 10.0 + reserve + 0.25 + 0.1  # one step above the reserve, plus 0.1 h
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, hours_left=hours_left, stats=stats)
    # THEN On-Demand, for the long gap
    assert decision.action == Action.ON_DEMAND
    assert decision.reason == "a long gap in capacity: On-Demand pays for its changeovers here"


def test_waits_out_a_young_gap_at_the_same_slack():
    # GIVEN the same slack, but capacity gone for only 4 changeovers (1 h)
    stats = stats_with(4.0, 1.0)
    reserve = hop_reserve(10.0, 0.25, 3.0, 1.0, stats)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, hours_left=10.0 + reserve + 0.25 + 0.1, stats=stats)
    # THEN it waits: On-Demand in a short gap would not pay for its changeovers
    assert decision.action == Action.IDLE


def test_waits_out_a_long_gap_while_the_slack_is_ample():
    # GIVEN capacity gone for 2 h, but 20 h of slack for 10 h of work
    stats = stats_with(4.0, 1.0)
    stats.observe(False, 1.0)
    # WHEN the policy decides without capacity
    decision = ask(spot_available=False, stats=stats)
    # THEN it keeps waiting
    assert decision.action == Action.IDLE
