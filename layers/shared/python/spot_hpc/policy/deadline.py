"""The deployed policy: Spot, On-Demand or wait, for one stage with work left and a time budget.

Two layers, all in hours and from the past and present only:
- *Guard rails* (worst case): whatever runs off On-Demand must leave enough slack to start On-Demand and still
  finish, even if Spot is reclaimed at the next moment. So: idle only while the slack at the next decision still
  covers a changeover; start Spot only with two changeovers of slack (its own, and the On-Demand one after a
  reclaim); leave Spot for On-Demand once a reclaim would leave too little. A starting instance is kept through its
  changeover, which is already paid.
- *The plan* (expected cost): within the guard rails, the choice with the least expected cost of finishing by the
  deadline, from `spot_hpc.policy.plan`, a dynamic program over time left, work left, what runs now and Spot
  capacity with its age. Capacity is modelled by the stage's life table (`SpotStats`): the chance that a capacity
  run or a gap ends, by its age. Ages matter because capacity in real traces dies young: a run that has just
  appeared is likely to vanish within minutes, one that has lasted half an hour likely lasts hours. So the plan
  waits out gaps while slack is worth less than the On-Demand it would replace, returns from On-Demand to Spot
  when the run is likely to pay for its two changeovers, and trusts old capacity more than new.
"""

from __future__ import annotations

import math

from spot_hpc.policy.actions import Action, Decision
from spot_hpc.policy.plan import age_states, grid_multiple, plan_for, plan_inputs
from spot_hpc.policy.stats import DEFAULT_STEP_HOURS, SpotStats

_EPS = 1e-9


def decide(
    *,
    remaining_hours: float,
    hours_left: float,
    current: Action,
    spot_available: bool,
    changeover_hours: float,
    od_price: float,
    spot_price: float,
    stats: SpotStats,
    spot_allowed: bool = True,
    step_hours: float = DEFAULT_STEP_HOURS,
    warmup_left_hours: float = 0.0,
) -> Decision:
    """The default policy's choice for one stage now.

    `remaining_hours`: compute the stage still needs; `hours_left`: until the stage must be finished (its share of the
    pipeline deadline, see `allocate_deadlines`); `current`: what it runs on now; `warmup_left_hours`: changeover
    still to be paid on the current instance; `step_hours`: time until the policy is asked again. Prices are per
    hour for the whole stage.
    """
    current = Action(current)
    if current == Action.SPOT and not spot_available:
        current, warmup_left_hours = Action.IDLE, 0.0  # reclaimed
    if remaining_hours <= _EPS:
        return Decision(Action.IDLE, "no work left")
    if not spot_allowed:
        return Decision(Action.ON_DEMAND, "this stage cannot use Spot")
    eps = _EPS * max(1.0, hours_left)
    change = changeover_hours
    slack = hours_left - remaining_hours
    on_demand_start = warmup_left_hours if current == Action.ON_DEMAND else change
    if slack < on_demand_start - eps:
        return Decision(Action.ON_DEMAND, "deadline cannot be met any more: On-Demand to finish as early as possible")

    if current == Action.SPOT and slack - warmup_left_hours < change - eps:
        return Decision(Action.ON_DEMAND, "too little slack left to risk a reclaim")
    if warmup_left_hours > eps and current != Action.IDLE:
        return Decision(current, "changeover in progress: the new instance is kept")

    if not spot_available and not waiting_leaves_time(remaining_hours, hours_left, change, step_hours):
        return Decision(Action.ON_DEMAND, WAITING_LEAVES_NO_TIME)
    if spot_available and current != Action.SPOT and slack < 2 * change - eps:
        return Decision(Action.ON_DEMAND, "too little slack to pay a Spot changeover and a fallback")
    planned = _planned(
        remaining_hours, hours_left, current, spot_available, change, od_price, spot_price, stats, step_hours
    )
    if planned == Action.SPOT and spot_available:
        if current == Action.SPOT:
            return Decision(Action.SPOT, "on Spot with capacity, and a reclaim would still leave time for On-Demand")
        return Decision(Action.SPOT, "Spot capacity, expected to finish the stage in time for least")
    if planned == Action.IDLE and slack - step_hours >= change - eps:
        return Decision(Action.IDLE, "waiting is expected to cost least and still keep the deadline")
    if spot_available:
        return Decision(Action.ON_DEMAND, "Spot capacity is expected to end too soon to pay for its changeovers")
    return Decision(Action.ON_DEMAND, "no Spot capacity, and waiting for it is expected to cost more than On-Demand")


WAITING_LEAVES_NO_TIME = "waiting longer would leave no time for On-Demand"


def waiting_leaves_time(
    remaining_hours: float, hours_left: float, changeover_hours: float, step_hours: float = DEFAULT_STEP_HOURS
) -> bool:
    """The guard rail of a stage without capacity: whether it may wait until it is asked again, `step_hours` from
    now (the SLA guard's next pass by default), and still start On-Demand and finish in time."""
    eps = _EPS * max(1.0, hours_left)
    return hours_left - remaining_hours - step_hours >= changeover_hours - eps


def _planned(
    remaining_hours: float,
    hours_left: float,
    current: Action,
    spot_available: bool,
    change: float,
    od_price: float,
    spot_price: float,
    stats: SpotStats,
    step_hours: float,
) -> Action:
    """The least-expected-cost choice of `spot_hpc.policy.plan`, on a grid of whole decision steps."""
    multiple, steps_left, work = plan_grid(remaining_hours, hours_left, change, stats.band_hours, step_hours)
    grid = step_hours * multiple
    if work > steps_left:
        return Action.ON_DEMAND
    inputs = plan_inputs(stats, grid, change, spot_price, od_price)
    age_steps = max(1, math.ceil(stats.run_hours / grid - _EPS)) if stats.available == spot_available else 1
    return plan_for(inputs, steps_left, work).choose(current, spot_available, age_steps, steps_left, work)


def plan_grid(
    remaining_hours: float, hours_left: float, change: float, band_hours: float, step_hours: float
) -> tuple[int, int, int]:
    """The plan's grid: how many decision steps one grid step spans (`grid_multiple`), then the grid steps left and
    of work."""
    steps_left = math.floor(hours_left / step_hours + _EPS)
    work = math.ceil(remaining_hours / step_hours - _EPS)
    multiple = grid_multiple(steps_left, work, age_states(band_hours, step_hours), round(change / step_hours))
    return multiple, steps_left // multiple, math.ceil(work / multiple)
