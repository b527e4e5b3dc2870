"""Spot, On-Demand or wait: the deadline policy, one pure package (no AWS calls, no I/O; numpy for the planner).

The Lambdas call it with what they know; the simulator and the benchmark call the very same code on real traces.

Stable API:

    class Action(StrEnum): IDLE = "idle", SPOT = "spot", ON_DEMAND = "on_demand"
    @dataclass(frozen=True) class Decision: action: Action; reason: str

    @dataclass class SpotStats:                      # Spot availability learnt online; JSON via to_dict/from_dict
        SpotStats.with_prior(advisor_bucket: int | None, band_hours: float = 5 min) -> SpotStats
                                                                          # Spot Advisor bucket 0..4 as the prior
        observe(available: bool, hours: float) -> None                  # capacity seen (or not) for `hours`
        mean_up_hours, mean_down_hours, availability                      # current estimates
        hazards(available: bool) -> list[float]                           # ends per hour by age band (life table)
        to_dict() -> dict; SpotStats.from_dict(dict) -> SpotStats
    band_hours_for(step_hours: float, changeover_hours: float) -> float  # life-table band width to use

    decide(*, remaining_hours: float, hours_left: float, current: Action, spot_available: bool,
           changeover_hours: float, od_price: float, spot_price: float, stats: SpotStats,
           spot_allowed: bool = True, step_hours: float = DEFAULT_STEP_HOURS,
           warmup_left_hours: float = 0.0) -> Decision
        # the deployed policy for ONE stage now; hours_left is the stage's own budget (below)

    @dataclass(frozen=True) class StageNeed: compute_hours: float; spot_allowed: bool = True
    allocate_deadlines(hours_left: float, stages: Sequence[StageNeed | tuple[float, bool]],
                       changeover_hours: float) -> list[float]
    stage_must_finish_in(hours_left: float, stages: Sequence[StageNeed | tuple[float, bool]],
                         changeover_hours: float) -> float
        # a pipeline's time left shared between its remaining stages (current first);
        # a stage is a StageNeed or a (compute_hours, spot_allowed) pair
    stage_latest_finish_in(hours_left, stages, changeover_hours) -> float
        # the latest the current stage may finish, the later ones on On-Demand: past it the deadline is lost
    waiting_leaves_time(remaining_hours, hours_left, changeover_hours, step_hours=DEFAULT_STEP_HOURS) -> bool
        # the guard rail of an idle stage: may it wait one more step and still finish on On-Demand?

The tick model of the benchmark (`TickState`, `TickPolicy`) and its policies: `OnDemandPolicy`, `SpotOnlyPolicy`,
`GreedyPolicy`, `UniformProgressPolicy` (the published baselines) and `DeadlinePolicy` (`decide` in ticks).
`TICK_POLICIES` maps benchmark names to factories taking the Spot Advisor bucket.
"""

from __future__ import annotations

from collections.abc import Callable

from spot_hpc.policy.actions import Action, Decision
from spot_hpc.policy.deadline import WAITING_LEAVES_NO_TIME, decide, waiting_leaves_time
from spot_hpc.policy.pipeline import StageNeed, allocate_deadlines, stage_latest_finish_in, stage_must_finish_in
from spot_hpc.policy.stats import DEFAULT_STEP_HOURS, SpotStats, band_hours_for
from spot_hpc.policy.ticks import (
    DeadlinePolicy,
    GreedyPolicy,
    OnDemandPolicy,
    SpotOnlyPolicy,
    TickPolicy,
    TickState,
    UniformProgressPolicy,
)

TICK_POLICIES: dict[str, Callable[[int | None], TickPolicy]] = {
    "on_demand": lambda bucket: OnDemandPolicy(),
    "spot_only": lambda bucket: SpotOnlyPolicy(),
    "greedy": lambda bucket: GreedyPolicy(),
    "uniform_progress": lambda bucket: UniformProgressPolicy(),
    "default": DeadlinePolicy,
}

__all__ = [
    "DEFAULT_STEP_HOURS",
    "TICK_POLICIES",
    "WAITING_LEAVES_NO_TIME",
    "Action",
    "DeadlinePolicy",
    "Decision",
    "GreedyPolicy",
    "OnDemandPolicy",
    "SpotOnlyPolicy",
    "SpotStats",
    "StageNeed",
    "TickPolicy",
    "TickState",
    "UniformProgressPolicy",
    "allocate_deadlines",
    "band_hours_for",
    "decide",
    "stage_latest_finish_in",
    "stage_must_finish_in",
    "waiting_leaves_time",
]
