"""The exact optimum: least cost of any policy that knows the whole window in advance.

Backward dynamic programming over (tick, instance state, progress), vectorised over progress. The instance state is
idle, or Spot / On-Demand with `r` changeover ticks still to pay (r = 0 is productive). A pipeline's stages are
stacked on one progress axis; finishing a stage drops the job to idle (the next stage is a new job on a new
instance), and Spot choices are masked out where the stage cannot use Spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from spot_hpc.policy import Action, TickState

from spotctl.policy_sim.simulator import Job, RunResult, simulate

# Above this many stored decisions the plan is not kept (the cost stays exact; only the finish time is unknown).
MAX_PLAN_CELLS = 200_000_000
IDLE, SPOT, ON_DEMAND = 0, 1, 2
_ACTIONS = (Action.IDLE, Action.SPOT, Action.ON_DEMAND)


@dataclass
class OptimumPlan:
    """The optimum's cost and, when small enough to keep, its decision for every reachable situation."""

    cost: float
    decisions: np.ndarray | None
    warmup_states: int

    def state_index(self, running: Action, warmup_left: int) -> int:
        if running == Action.IDLE:
            return 0
        return 1 + warmup_left + (self.warmup_states if running == Action.ON_DEMAND else 0)


def solve(job: Job) -> OptimumPlan:
    """Exact least cost over all policies for `job` (inf when no policy meets the deadline)."""
    n, work, d = job.ticks, job.work_ticks, job.changeover_ticks
    if work > 0 and work + d > n:
        # Not even On-Demand from the first tick finishes in the window (and the tables would be as large as the
        # work or the changeover, however absurd).
        return OptimumPlan(math.inf, None, max(min(d, n), 1))
    warm = max(d, 1)
    n_states = 1 + 2 * warm
    spot_row = [1 + r for r in range(warm)]
    od_row = [1 + warm + r for r in range(warm)]
    spot_tick, od_tick = job.spot_price * job.tick_hours, job.od_price * job.tick_hours

    spot_ok = np.zeros(work, dtype=bool)
    ends_stage = np.zeros(work, dtype=bool)  # productive tick at progress p finishes a stage that is not the last
    start = 0
    for stage in job.stages:
        spot_ok[start : start + stage.work_ticks] = stage.spot_allowed
        start += stage.work_ticks
        if start < work:
            ends_stage[start - 1] = True

    inf = math.inf
    value = np.full((n_states, work + 1), inf)
    value[:, work] = 0.0
    keep_plan = n * n_states * work <= MAX_PLAN_CELLS
    decisions = np.zeros((n, n_states, work), dtype=np.int8) if keep_plan else None
    new_value = np.empty_like(value)
    new_value[:, work] = 0.0
    for tick in range(n - 1, -1, -1):
        capacity = bool(job.capacity[tick])
        idle = value[0, :work]

        def productive(row: int, nxt: np.ndarray = value) -> np.ndarray:
            return np.where(ends_stage, nxt[0, 1:], nxt[row, 1:])

        od_new = od_tick + (value[od_row[d - 1], :work] if d > 0 else productive(od_row[0]))
        if capacity:
            spot_new = spot_tick + (value[spot_row[d - 1], :work] if d > 0 else productive(spot_row[0]))
            spot_new = np.where(spot_ok, spot_new, inf)
        else:
            spot_new = np.full(work, inf)

        def best(*options: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            stacked = np.stack(options)
            return stacked.min(axis=0), stacked.argmin(axis=0)

        # Options are stacked in the order IDLE, SPOT, ON_DEMAND so that argmin is the action code.
        from_idle, idle_choice = best(idle, spot_new, od_new)
        new_value[0, :work] = from_idle
        if decisions is not None:
            decisions[tick, 0] = idle_choice
        for r, row in enumerate(spot_row):
            if not capacity:
                new_value[row, :work] = from_idle  # preempted: idle before choosing
                if decisions is not None:
                    decisions[tick, row] = idle_choice
                continue
            keep = spot_tick + (value[spot_row[r - 1], :work] if r > 0 else productive(spot_row[0]))
            keep = np.where(spot_ok, keep, inf)
            new_value[row, :work], choice = best(idle, keep, od_new)
            if decisions is not None:
                decisions[tick, row] = choice
        for r, row in enumerate(od_row):
            keep = od_tick + (value[od_row[r - 1], :work] if r > 0 else productive(od_row[0]))
            new_value[row, :work], choice = best(idle, spot_new, keep)
            if decisions is not None:
                decisions[tick, row] = choice
        value, new_value = new_value, value
    return OptimumPlan(float(value[0, 0]), decisions, warm)


class OptimumReplay:
    """Replays the optimum's plan in the tick simulator, to get its finish time and timeline."""

    name = "optimum"

    def __init__(self, plan: OptimumPlan) -> None:
        assert plan.decisions is not None
        self.plan = plan
        self.decisions = plan.decisions

    def choose(self, state: TickState) -> Action:
        row = self.plan.state_index(state.running, state.warmup_left)
        return _ACTIONS[int(self.decisions[state.tick, row, state.progress])]


def run_optimum(job: Job, *, record: bool = False) -> RunResult:
    """The optimum as a run result: exact cost; finish time (and timeline) by replaying its plan when kept."""
    plan = solve(job)
    if math.isinf(plan.cost):
        return RunResult("optimum", math.inf, False, None, job.tick_hours)
    if plan.decisions is None:
        return RunResult("optimum", plan.cost, True, None, job.tick_hours)
    replay = simulate(job, OptimumReplay(plan), record=record)
    # The replay must reproduce the plan's cost; a mismatch would mean the model and the simulator disagree.
    assert replay.met and math.isclose(replay.cost, plan.cost, rel_tol=1e-9, abs_tol=1e-9), (replay, plan.cost)
    replay.cost = plan.cost
    return replay
