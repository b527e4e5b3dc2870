"""The planner behind the deployed policy: exact expected costs on tiny cases, and how hazards become chances."""

from __future__ import annotations

import functools
import gc
import itertools
import math
import weakref
from typing import Any

import pytest
from spot_hpc.policy import Action, SpotStats, decide, plan
from spot_hpc.policy.plan import (
    MAX_VALUE_CELLS,
    MISS_COST,
    TIME_VALUE,
    Plan,
    PlanCache,
    PlanInputs,
    end_chances,
    grid_multiple,
    solve,
    table_bytes,
)


def expected_cost(inputs: PlanInputs, steps: int, work: int, running: Action, state: int, plan: Plan | None) -> float:
    """Expected cost by plain recursion over every capacity path (tiny cases only): following `plan`'s choices, or,
    without a plan, the least over every choice at every step."""
    up, down, change = inputs.up_chances, inputs.down_chances, inputs.change_steps
    ages = len(up)

    def next_states(s: int) -> list[tuple[int, float]]:
        if s < ages:  # a gap of age s + 1
            return [(ages, down[s]), (min(s + 1, ages - 1), 1.0 - down[s])]
        age = s - ages
        return [(0, up[age]), (ages + min(age + 1, ages - 1), 1.0 - up[age])]

    @functools.cache
    def cost(left: int, todo: int, run: Action, s: int, warm: int) -> float:
        if todo == 0:
            return 0.0
        if left < todo:
            return MISS_COST
        if run == Action.SPOT and s < ages:
            run, warm = Action.IDLE, 0  # reclaimed
        if warm > 0:
            choices = [run]  # an instance is kept through its changeover
        elif plan is not None:
            choices = [plan.choose(run, s >= ages, s % ages + 1, left, todo)]
        else:
            choices = [Action.IDLE, Action.ON_DEMAND] + ([Action.SPOT] if s >= ages else [])
        best = MISS_COST
        for choice in choices:
            if choice == Action.IDLE:
                paid, new_warm, progress = 0.0, 0, 0
            else:
                new_warm = warm if choice == run else change
                paid = inputs.spot_cost if choice == Action.SPOT else inputs.od_cost
                progress = 0 if new_warm > 0 else 1
                new_warm = max(new_warm - 1, 0)
            expected = (
                paid
                + inputs.step_value
                + sum(chance * cost(left - 1, todo - progress, choice, nxt, new_warm) for nxt, chance in next_states(s))
            )
            best = min(best, expected)
        return best

    return cost(steps, work, running, state, 0)


CASES = [
    PlanInputs(1, (0.4, 0.1), (0.5, 0.3), 1.0, 3.0),
    PlanInputs(2, (0.6, 0.2, 0.05), (0.2, 0.2, 0.5), 0.3, 1.0),
    PlanInputs(0, (0.3,), (0.6,), 1.0, 2.0),
    PlanInputs(1, (0.05, 0.5), (0.9, 0.1), 2.5, 3.0),
    PlanInputs(2, (0.5, 0.1, 0.02), (0.3, 0.1, 0.4), 0.4, 1.2, step_value=0.02),
]


@pytest.mark.parametrize("inputs", CASES)
def test_plan_reaches_the_least_expected_cost_on_tiny_cases(inputs):
    # GIVEN tiny stages: every time and work left up to 7 and 4 steps, every starting state
    ages = len(inputs.up_chances)
    for steps, work, running, state in itertools.product(range(1, 8), range(1, 5), list(Action), range(2 * ages)):
        if running == Action.SPOT and state < ages:
            continue
        # WHEN the plan is followed, and when every choice is searched
        best = expected_cost(inputs, steps, work, running, state, plan=None)
        followed = expected_cost(inputs, steps, work, running, state, plan=solve(inputs, steps, work))
        # THEN following the plan costs exactly the least expected cost
        assert followed == pytest.approx(best, rel=1e-9), (steps, work, running, state)


def test_with_days_to_spare_the_plan_runs_on_lasting_spot_capacity_rather_than_wait():
    # GIVEN what a stage learnt from a trace with 34 hours of capacity (a run of 30-35 minutes ends often, an older
    # one seldom: 0.27% a step), 8.6 hours of work left and 79 hours to go, in 5-minute steps; a changeover is 2
    up = (0.015,) * 6 + (0.165, 0.0027)
    down = (0.067,) * 3 + (0.247,) + (0.082,) * 4
    plain = PlanInputs(2, up, down, 0.038, 0.255)
    valued = PlanInputs(2, up, down, 0.038, 0.255, step_value=TIME_VALUE * 0.038)
    # WHEN an idle stage sees capacity that has lasted an hour
    choices = [solve(inputs, 945, 103).choose(Action.IDLE, True, 12, 945, 103) for inputs in (plain, valued)]
    # THEN with no value on time, starting now or in a day looks the same to the model and it waits (in the trace
    # the capacity then went for 55 hours); with it, it runs
    assert choices == [Action.IDLE, Action.SPOT]


def test_plan_never_risks_the_deadline_it_can_keep():
    # GIVEN capacity that usually lasts, a stage with exactly one changeover of slack
    inputs = PlanInputs(1, (0.01,), (0.5,), 0.1, 3.0)
    plan = solve(inputs, 6, 5)
    # WHEN Spot is available and the stage is idle
    choice = plan.choose(Action.IDLE, True, 1, 6, 5)
    # THEN On-Demand: a Spot start lost once would miss the deadline, however cheap Spot is
    assert choice == Action.ON_DEMAND


def test_end_chances_follow_the_life_table_bands():
    # GIVEN hazards of 2, 1, then 0.1 per hour in bands of 0.25 h
    hazards = [2.0, 1.0] + [0.1] * 6
    # WHEN turned into chances per 0.25 h step, and per 0.5 h step
    quarter = end_chances(hazards, 0.25, 0.25)
    half = end_chances(hazards, 0.25, 0.5)
    # THEN each step gets the expected ends over its span (rounded to about 10%), and the last age is the open band
    assert quarter[0] == pytest.approx(0.5, rel=0.06) and quarter[1] == pytest.approx(0.25, rel=0.06)
    assert quarter[-1] == pytest.approx(0.025, rel=0.06) and len(quarter) == 8
    assert half[0] == pytest.approx(0.75, rel=0.06) and len(half) == 5


def test_grid_is_coarsened_only_past_the_cell_budget():
    # GIVEN a day of 5-minute steps, and a year of them
    # WHEN the grid is chosen
    # THEN the day keeps every step and the year spans several per grid step
    assert grid_multiple(288, 200, 8) == 1
    assert grid_multiple(105_120, 50_000, 8) > 1


def test_grid_is_coarsened_when_a_changeover_of_hours_would_pass_the_value_budget():
    # GIVEN a plan whose decision tables fit, but whose changeover spans 100 steps (8 h of 5-minute steps, say)
    steps, work, ages, change = 150, 50, 500, 100
    assert grid_multiple(steps, work, ages) == 1
    # WHEN the grid is chosen with the changeover
    multiple = grid_multiple(steps, work, ages, change)

    # THEN it is coarsened until the expected costs the solve keeps fit their budget, and no further
    def kept_cells(m: int) -> int:
        return (round(change / m) + 1) * (math.ceil(work / m) + 1) * 2 * ages

    assert multiple > 1
    assert kept_cells(multiple) <= MAX_VALUE_CELLS < kept_cells(multiple - 1)


def _inputs(spot_cost: float) -> PlanInputs:
    return PlanInputs(1, (0.2, 0.1), (0.5, 0.3), spot_cost, 1.0)


def test_a_guard_pass_over_several_stages_again_solves_no_plan(monkeypatch):
    # GIVEN a process's plan cache, and three stages whose Spot figures differ (so do their plans)
    cache = PlanCache(plan.PLAN_CACHE_BYTES)
    monkeypatch.setattr(plan, "PLANS", cache)
    stages = [SpotStats.with_prior(bucket) for bucket in (0, 2, 4)]

    def guard_pass() -> list[Action]:
        return [
            decide(
                remaining_hours=10.0,
                hours_left=20.0,
                current=Action.IDLE,
                spot_available=True,
                changeover_hours=0.2,
                od_price=3.0,
                spot_price=0.9,
                stats=stats,
            ).action
            for stats in stages
        ]

    # WHEN the SLA guard checks them all, twice
    first = guard_pass()
    solved_first = cache.solves
    second = guard_pass()

    # THEN the first pass solved a plan per stage, and the second read them all back, choosing the same
    assert solved_first == 3 and len(cache) == 3
    assert cache.solves == 3 and second == first


def test_the_plan_cache_drops_the_least_recently_used_plan_to_stay_within_its_bytes():
    # GIVEN a cache with room for two plans of 40 steps and 20 of work, holding two
    size = table_bytes(2, 40, 20)
    cache = PlanCache(2 * size + size // 2)
    first, second, third = (_inputs(cost) for cost in (0.1, 0.2, 0.3))
    cache.solve(first, 40, 20)
    cache.solve(second, 40, 20)
    # WHEN the first is used again, then a third plan is solved
    assert cache.get(first, 40, 20) is not None
    cache.solve(third, 40, 20)

    # THEN the second, used least recently, made room; the tables kept stay within the bound
    assert cache.get(second, 40, 20) is None
    assert cache.get(first, 40, 20) is not None and cache.get(third, 40, 20) is not None
    assert cache.nbytes == 2 * size <= cache.max_bytes


def test_a_cached_plan_serves_less_time_and_work_and_a_larger_solve_replaces_it():
    # GIVEN a cached plan for 40 steps and 20 of work
    cache = PlanCache(plan.PLAN_CACHE_BYTES)
    inputs = _inputs(0.1)
    small = cache.solve(inputs, 40, 20)

    # WHEN asked for less, then for more time left
    # THEN the plan serves the smaller question (its decisions do not depend on where the solve started), and the
    # larger one needs a solve, which replaces it
    assert cache.get(inputs, 30, 20) is small
    assert cache.get(inputs, 41, 20) is None
    bigger = cache.solve(inputs, 41, 20)
    assert len(cache) == 1 and cache.get(inputs, 40, 20) is bigger
    for running in ("idle", "spot", "on_demand"):
        assert (getattr(bigger, running)[:41] == getattr(small, running)).all()


def test_a_pass_over_more_stages_than_the_cache_holds_keeps_the_plans_it_has():
    # GIVEN a cache with room for two plans, and a guard checking three stages pass after pass
    size = table_bytes(2, 40, 20)
    cache = PlanCache(2 * size + size // 2)
    stages = [_inputs(cost) for cost in (0.1, 0.2, 0.3)]

    def guard_pass() -> int:
        solved = cache.solves
        for inputs in stages:
            if cache.get(inputs, 40, 20) is None:
                cache.solve(inputs, 40, 20)
        return cache.solves - solved

    # WHEN it makes three passes
    passes = [guard_pass() for _ in range(3)]

    # THEN after the first, each pass reads back the plan the cache kept and solves the two others (least recently
    # used out first would drop each plan just before its turn, and solve all three every pass)
    assert passes == [3, 2, 2]
    assert cache.nbytes <= cache.max_bytes and cache.latest is not None


def test_a_plan_the_cache_drops_is_not_kept_in_memory_while_the_next_one_is_solved(monkeypatch):
    # GIVEN a cache with room for one plan, holding one solved last
    size = table_bytes(2, 40, 20)
    cache = PlanCache(size + size // 2)
    first = cache.solve(_inputs(0.1), 40, 20)
    dropped = weakref.ref(first)
    del first
    alive_while_solving: list[bool] = []
    real_solve = plan.solve

    def solving(*args: Any) -> Plan:
        gc.collect()
        alive_while_solving.append(dropped() is not None)
        return real_solve(*args)

    monkeypatch.setattr(plan, "solve", solving)
    # WHEN another plan is solved, for which the first makes room
    cache.solve(_inputs(0.2), 40, 20)

    # THEN the first is gone from memory before the solve starts: the cache's bound holds at its peak
    assert alive_while_solving == [False]


def test_requests_of_other_sizes_for_the_same_inputs_share_one_plan():
    # GIVEN two stages with the same figures (fresh ones, say): one with more time left, the other with more work
    cache = PlanCache(plan.PLAN_CACHE_BYTES)
    inputs = _inputs(0.1)
    # WHEN a guard checks both, pass after pass
    for _ in range(3):
        for steps, work in ((100, 10), (50, 20)):
            if cache.get(inputs, steps, work) is None:
                cache.solve(inputs, steps, work)

    # THEN the second solve covers both, and no pass solves again
    assert cache.solves == 2 and len(cache) == 1
    assert cache.latest is not None and (cache.latest.steps, cache.latest.work) == (100, 20)
