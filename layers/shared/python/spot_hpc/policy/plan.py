"""The least expected cost of finishing a stage by its deadline, and the choice now that reaches it.

A dynamic program over (time left, work left, what runs now, Spot capacity and its age), on a grid of `step` hours:
- Capacity is a chain of runs and gaps whose chance of ending depends on their age, from the stage's life table
  (`SpotStats.hazards`). Ages are counted in steps up to the last band of the table; older runs share its hazard.
- Each step the stage runs on Spot (only with capacity), runs On-Demand or waits, as in the benchmark's model: a new
  instance pays `change` steps without progress, Spot is lost when capacity goes, waiting costs nothing.
- Missing the deadline costs `MISS_COST`, far more than any run: the plan never takes a chance of missing it that it
  could avoid. (`decide` also keeps its own worst-case guard rails.)
- Finishing sooner is worth a little (`TIME_VALUE`): among choices of (nearly) the same expected cost, the plan makes
  progress rather than wait.

Decisions for every smaller time and work left come with one solve, and do not depend on where the solve started, so a
plan is solved once and read many times while the stage's hazards, rounded by `HAZARD_STEPS_PER_E`, stay the same
(`PLANS` keeps the plans of a process, bounded in bytes).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spot_hpc.policy.actions import Action
from spot_hpc.policy.stats import SpotStats, age_edges, band_overlaps

MISS_COST = 1e18
# Hazards are rounded on a log scale to this many steps per factor e (about 10% apart), so that the plan is re-solved
# when what is known of capacity changes, not at every observation.
HAZARD_STEPS_PER_E = 10.0
MIN_CHANCE, MAX_CHANCE = 1e-3, 1.0 - 1e-3
# Each step with work left costs this share of a Spot step. The model takes the capacity seen so far as the guide to
# the rest of the stage, and a long wait is where that guide fails worst (a day-long gap after hours of capacity):
# with plenty of slack, waiting and running on Spot look equally cheap to it, and this settles it for progress.
TIME_VALUE = 0.05
# The grid is made coarser (whole multiples of the step) past this many cells of time x work x capacity states (the
# decision tables, a byte each), which bounds the time and memory of one solve (about 1 s and 50 MB; measured by
# `spotctl bench planner`).
MAX_CELLS = 16_000_000
# ... or past this many cells of the expected costs the solve keeps, (changeover + 1) x work x capacity states, eight
# bytes each for each of the three things that may run: they grow with the changeover, not with the time left, and only
# a changeover of hours makes them bind (24 MB at most).
MAX_VALUE_CELLS = 1_000_000

_IDLE, _SPOT, _ON_DEMAND = 0, 1, 2
_ACTIONS = (Action.IDLE, Action.SPOT, Action.ON_DEMAND)


@dataclass(frozen=True)
class PlanInputs:
    """What a plan depends on, in grid steps (hashable: plans are cached by it)."""

    change_steps: int
    up_chances: tuple[float, ...]  # chance a capacity run of age 1, 2, ... steps ends within the next step
    down_chances: tuple[float, ...]  # the same for a gap
    spot_cost: float  # per step
    od_cost: float
    step_value: float = 0.0  # cost of a step with work left, whatever runs (see `TIME_VALUE`)


@dataclass(frozen=True)
class Plan:
    """Decision tables by what runs now: `[steps_left, capacity_state, work_left]` -> 0 idle, 1 Spot, 2 On-Demand.

    Capacity states are `ages` gap states (age 1 .. ages steps, the last meaning older) then `ages` run states."""

    inputs: PlanInputs
    steps: int
    work: int
    idle: np.ndarray
    spot: np.ndarray
    on_demand: np.ndarray

    @property
    def ages(self) -> int:
        return len(self.inputs.up_chances)

    @property
    def cells(self) -> int:
        """Cells of one decision table: time left x capacity states x work left."""
        return int(self.idle.size)

    @property
    def nbytes(self) -> int:
        return self.idle.nbytes + self.spot.nbytes + self.on_demand.nbytes

    def choose(self, running: Action, available: bool, age_steps: int, steps_left: int, work_left: int) -> Action:
        """The planned choice; `running` is what runs now, warm (a changeover in progress is the caller's)."""
        state = (self.ages if available else 0) + min(max(age_steps, 1), self.ages) - 1
        table = {Action.IDLE: self.idle, Action.SPOT: self.spot, Action.ON_DEMAND: self.on_demand}[running]
        return _ACTIONS[int(table[steps_left, state, work_left])]


def age_states(band_hours: float, step_hours: float) -> int:
    """How many ages, in steps, the plan tells apart: up to the first whose step lies wholly in the open band."""
    return math.ceil(age_edges(band_hours)[-1] / step_hours - 1e-9) + 1


def end_chances(hazards: list[float], band_hours: float, step_hours: float) -> tuple[float, ...]:
    """Chance that a run of age 1, 2, ... steps ends within its next step, from hazards per hour by age band, rounded
    (see `HAZARD_STEPS_PER_E`). The last age is the first whose step lies wholly in the open band."""
    chances = []
    for age in range(1, age_states(band_hours, step_hours) + 1):
        overlaps = band_overlaps((age - 1) * step_hours, age * step_hours, band_hours)
        expected_ends = sum(rate * hours for rate, hours in zip(hazards, overlaps, strict=True))
        steps = round(math.log(max(expected_ends, MIN_CHANCE)) * HAZARD_STEPS_PER_E)
        chances.append(min(max(math.exp(steps / HAZARD_STEPS_PER_E), MIN_CHANCE), MAX_CHANCE))
    return tuple(chances)


def grid_multiple(steps_left: int, work_left: int, ages: int, change_steps: int = 0) -> int:
    """How many steps one grid step spans: 1 unless the plan would pass `MAX_CELLS` or `MAX_VALUE_CELLS`."""
    multiple = 1
    while True:
        cells = (math.ceil(work_left / multiple) + 1) * 2 * ages
        kept = round(change_steps / multiple) + 1
        if (steps_left // multiple + 1) * cells <= MAX_CELLS and kept * cells <= MAX_VALUE_CELLS:
            return multiple
        multiple += 1


def plan_inputs(
    stats: SpotStats, step_hours: float, change_hours: float, spot_price: float, od_price: float
) -> PlanInputs:
    return PlanInputs(
        change_steps=round(change_hours / step_hours),
        up_chances=end_chances(stats.hazards(True), stats.band_hours, step_hours),
        down_chances=end_chances(stats.hazards(False), stats.band_hours, step_hours),
        spot_cost=spot_price * step_hours,
        od_cost=od_price * step_hours,
        step_value=TIME_VALUE * spot_price * step_hours,
    )


def plan_for(inputs: PlanInputs, steps: int, work: int) -> Plan:
    """A plan covering `steps` steps left and `work` steps of work: a cached one for the same inputs when it covers
    them, else a new solve."""
    cached = PLANS.get(inputs, steps, work)
    return cached if cached is not None else PLANS.solve(inputs, steps, work)


class PlanCache:
    """Solved plans by their inputs, least recently used out first, up to `max_bytes` of decision tables.

    A Lambda process keeps it across invocations, and the SLA guard checks every active stage each pass, each with a
    plan of its own: with one plan kept, every pass over several stages solved them all again. A plan solved while
    the cache is full goes in as the least recently used, and moves up only when it is read again: a guard pass over
    more stages than the cache holds then keeps the plans it has and solves the rest (plain LRU would drop each plan
    just before the next pass needs it, and solve nearly all of them every pass)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.solves = 0
        # Which plan was solved or read last, by its key: a reference to the plan itself would keep it in memory
        # after the cache dropped it.
        self._latest: PlanInputs | None = None
        self._plans: OrderedDict[PlanInputs, Plan] = OrderedDict()

    def __len__(self) -> int:
        return len(self._plans)

    @property
    def nbytes(self) -> int:
        return sum(plan.nbytes for plan in self._plans.values())

    @property
    def latest(self) -> Plan | None:
        """The plan solved or read last, while the cache keeps it."""
        return self._plans.get(self._latest) if self._latest is not None else None

    def get(self, inputs: PlanInputs, steps: int, work: int) -> Plan | None:
        plan = self._plans.get(inputs)
        if plan is None or plan.steps < steps or plan.work < work:
            return None
        self._plans.move_to_end(inputs)
        self._latest = inputs
        return plan

    def solve(self, inputs: PlanInputs, steps: int, work: int) -> Plan:
        """Solves and keeps a plan. Room is made before the solve, so that the tables kept and the new ones together
        stay within `max_bytes` (a plan larger than that on its own is kept alone). A plan kept for the same inputs
        is replaced by one covering both it and the request, when that fits one grid (`grid_multiple`): two stages
        with the same figures and other sizes would otherwise replace each other's plan at every turn."""
        kept = self._plans.pop(inputs, None)
        if kept is not None:
            steps_both, work_both = max(steps, kept.steps), max(work, kept.work)
            if grid_multiple(steps_both, work_both, len(inputs.up_chances), inputs.change_steps) == 1:
                steps, work = steps_both, work_both
            del kept
        needed = table_bytes(len(inputs.up_chances), steps, work)
        full = False
        while self._plans and self.nbytes + needed > self.max_bytes:
            self._plans.popitem(last=False)
            full = True
        plan = solve(inputs, steps, work)
        self.solves += 1
        self._plans[inputs] = plan
        if full:
            self._plans.move_to_end(inputs, last=False)
        self._latest = inputs
        return plan


def table_bytes(ages: int, steps: int, work: int) -> int:
    """Bytes of a plan's three decision tables (a byte per cell)."""
    return 3 * (steps + 1) * 2 * ages * (work + 1)


# The bound leaves room in the smallest function (256 MB, about 120 MB after its cold start) for the largest solve
# (`MAX_CELLS`: 48 MB of tables, plus the expected costs it works with), measured by `spotctl bench planner`.
PLAN_CACHE_BYTES = 64 * 2**20
PLANS = PlanCache(PLAN_CACHE_BYTES)


@lru_cache(maxsize=8)
def _chain(up: tuple[float, ...], down: tuple[float, ...], change: int) -> tuple[np.ndarray, np.ndarray]:
    """One-step transition matrix over the capacity states, and its `change`-th power."""
    ages = len(up)
    size = 2 * ages
    step = np.zeros((size, size))
    for age in range(ages):
        older = min(age + 1, ages - 1)
        step[age, ages] += down[age]  # the gap ends: a run of age 1
        step[age, older] += 1.0 - down[age]
        step[ages + age, 0] += up[age]  # the run ends: a gap of age 1
        step[ages + age, ages + older] += 1.0 - up[age]
    return step, np.linalg.matrix_power(step, change)


def solve(inputs: PlanInputs, steps: int, work: int) -> Plan:
    """Backward induction over steps left 1..`steps`, for every work left 0..`work`."""
    up, down, change = inputs.up_chances, inputs.down_chances, inputs.change_steps
    ages = len(up)
    size = 2 * ages
    # Every step with work left costs its `step_value`, idle or paid.
    wait_cost = inputs.step_value
    spot, od = inputs.spot_cost + wait_cost, inputs.od_cost + wait_cost
    step, step_change = _chain(up, down, change)
    # Starting Spot at run age a: lost after k steps (paid, no progress, a gap of age 1), or warm at age a + change.
    lost_after = np.zeros((ages, max(change, 1)))
    kept = np.ones(ages)
    warm_age = np.arange(ages)
    for age in range(ages):
        for k in range(change):
            current = min(age + k, ages - 1)
            lost_after[age, k] = kept[age] * up[current]
            kept[age] *= 1.0 - up[current]
        warm_age[age] = min(age + change, ages - 1)

    width = work + 1
    unreachable = np.full((size, width), MISS_COST)
    done = unreachable.copy()
    done[:, 0] = 0.0
    keep = change + 1  # values of the last `change` + 1 steps are all the recursion reads
    idle_v: list[np.ndarray] = [done] * keep
    spot_v: list[np.ndarray] = [done] * keep
    od_v: list[np.ndarray] = [done] * keep
    tables = {name: np.zeros((steps + 1, size, width), dtype=np.int8) for name in ("idle", "spot", "od")}

    def progressed(values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[:, 0] = 0.0
        out[:, 1:] = values[:, :-1]
        return out

    for left in range(1, steps + 1):
        prev = (left - 1) % keep
        wait = wait_cost + step @ idle_v[prev]
        od_on = od + progressed(step @ od_v[prev])
        # On Spot: kept while capacity lasts (run states), idle when it goes (gap states).
        spot_on = spot + progressed(step @ np.concatenate((idle_v[prev][:ages], spot_v[prev][ages:])))
        spot_on[:ages] = MISS_COST
        if change == 0:
            od_start, spot_start = od_on, spot_on
        elif left >= change:
            back = (left - change) % keep
            od_start = od * change + step_change @ od_v[back]
            spot_start = unreachable.copy()
            expected = kept[:, None] * (spot * change + spot_v[back][ages + warm_age])
            for k in range(1, change + 1):
                expected = expected + lost_after[:, k - 1 : k] * (spot * k + idle_v[(left - k) % keep][0][None, :])
            spot_start[ages:] = expected
        else:
            od_start = spot_start = unreachable
        too_late = left + 1  # more work left than steps
        now = left % keep
        idle_v[now], tables["idle"][left] = _best((wait, od_start, spot_start), (_IDLE, _ON_DEMAND, _SPOT), too_late)
        spot_v[now], tables["spot"][left] = _best((spot_on, od_start, wait), (_SPOT, _ON_DEMAND, _IDLE), too_late)
        od_v[now], tables["od"][left] = _best((od_on, spot_start, wait), (_ON_DEMAND, _SPOT, _IDLE), too_late)
    return Plan(inputs, steps, work, tables["idle"], tables["spot"], tables["od"])


def _best(
    options: tuple[np.ndarray, ...], codes: tuple[int, ...], first_too_late: int
) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest option per cell (the first on ties) and its code; work from `first_too_late` on cannot be done."""
    value = options[0]
    choice = np.full(value.shape, codes[0], dtype=np.int8)
    for option, code in zip(options[1:], codes[1:], strict=True):
        cheaper = option < value
        np.putmask(choice, cheaper, code)
        value = np.minimum(option, value)
    np.minimum(value, MISS_COST, out=value)
    value[:, 0] = 0.0
    value[:, first_too_late:] = MISS_COST
    return value, choice
