"""The published baselines follow BENCHMARK's rules tick by tick."""

from __future__ import annotations

from spot_hpc.policy import Action, GreedyPolicy, OnDemandPolicy, SpotOnlyPolicy, UniformProgressPolicy


def test_on_demand_always_chooses_on_demand(make_state):
    # GIVEN Spot capacity and plenty of time
    state = make_state(capacity=True)
    # WHEN the on_demand policy chooses
    action = OnDemandPolicy().choose(state)
    # THEN it runs On-Demand
    assert action == Action.ON_DEMAND


def test_spot_only_waits_without_capacity_even_past_the_deadline_risk(make_state):
    # GIVEN no capacity and barely any time left
    state = make_state(capacity=False, tick=9, ticks=20, progress=0)
    # WHEN spot_only chooses
    action = SpotOnlyPolicy().choose(state)
    # THEN it idles (it ignores the deadline)
    assert action == Action.IDLE


def test_greedy_takes_spot_and_idles_while_slack_lasts(make_state):
    # GIVEN 20 ticks for 10 of work with changeover 1 (safety margin 2d+1 = 3)
    greedy = GreedyPolicy()
    # WHEN greedy sees capacity, then none
    with_capacity = greedy.choose(make_state(capacity=True))
    without = greedy.choose(make_state(tick=1, capacity=False))
    # THEN Spot, then idle
    assert (with_capacity, without) == (Action.SPOT, Action.IDLE)


def test_greedy_safety_net_latches_on_demand_to_the_end(make_state):
    # GIVEN ticks_left (12) < work left (10) + 2d + 1 (3), off Spot
    greedy = GreedyPolicy()
    # WHEN it chooses at that point and later with capacity back
    first = greedy.choose(make_state(tick=8, capacity=False))
    later = greedy.choose(make_state(tick=9, capacity=True, running=Action.ON_DEMAND, progress=0))
    # THEN On-Demand both times
    assert (first, later) == (Action.ON_DEMAND, Action.ON_DEMAND)
    # and it stays latched where a fresh Greedy, never in the safety net, would take Spot
    spot_state = make_state(tick=9, capacity=True, running=Action.SPOT)
    assert greedy.choose(spot_state) == Action.ON_DEMAND
    assert GreedyPolicy().choose(spot_state) == Action.SPOT


def test_greedy_safety_net_is_not_checked_while_on_spot(make_state):
    # GIVEN a job on Spot with as little time as the margin
    greedy = GreedyPolicy()
    # WHEN it chooses with capacity
    action = greedy.choose(make_state(tick=8, running=Action.SPOT, capacity=True))
    # THEN it stays on Spot
    assert action == Action.SPOT


def test_uniform_progress_uses_on_demand_only_when_behind_the_line(make_state):
    # GIVEN 10 work in 20 ticks: expected progress at tick 4 is 2
    # WHEN there is no capacity and progress is 1 (behind), or 2 (on the line)
    behind = UniformProgressPolicy().choose(make_state(tick=4, progress=1, capacity=False))
    on_line = UniformProgressPolicy().choose(make_state(tick=4, progress=2, capacity=False))
    # THEN On-Demand when behind, idle otherwise
    assert (behind, on_line) == (Action.ON_DEMAND, Action.IDLE)


def test_uniform_progress_stays_on_demand_until_ahead_by_two_changeovers(make_state):
    # GIVEN On-Demand at tick 4 with d = 1: stay while progress < ep(6) = 3
    # WHEN progress is 2 with capacity, and then 3 with capacity
    stay = UniformProgressPolicy().choose(make_state(tick=4, progress=2, running=Action.ON_DEMAND))
    leave = UniformProgressPolicy().choose(make_state(tick=4, progress=3, running=Action.ON_DEMAND))
    leave_idle = UniformProgressPolicy().choose(
        make_state(tick=4, progress=3, running=Action.ON_DEMAND, capacity=False)
    )
    # THEN it stays, then moves to Spot, or idles without capacity
    assert (stay, leave, leave_idle) == (Action.ON_DEMAND, Action.SPOT, Action.IDLE)
