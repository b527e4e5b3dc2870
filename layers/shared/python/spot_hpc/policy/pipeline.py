"""Sharing a pipeline's deadline between its stages.

Every stage is first given what it needs to finish on On-Demand (its compute and one changeover). What is left, the
pipeline's slack, goes to the stages that may use Spot, in proportion to their compute: the slack a Spot stage
burns waiting out capacity gaps grows with its compute, and a stage that cannot use Spot has no use for slack.
The budgets are recomputed at every decision from the time actually left, so slack a stage does not use flows on
to the stages after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StageNeed:
    """A stage still to finish (the current one first): compute hours left, and whether it may use Spot."""

    compute_hours: float
    spot_allowed: bool = True


StageLike = StageNeed | tuple[float, bool]


def allocate_deadlines(hours_left: float, stages: Sequence[StageLike], changeover_hours: float) -> list[float]:
    """Time budget of each remaining stage, in hours, summing to `hours_left` (when the deadline can be met).

    `stages` are `StageNeed`s or `(compute_hours, spot_allowed)` pairs, the current stage first; the first budget is
    the current stage's: it must finish within that many hours from now.
    """
    needs = _needs(stages)
    if not needs:
        return []
    minimum = [stage.compute_hours + changeover_hours for stage in needs]
    slack = hours_left - sum(minimum)
    spot_work = sum(stage.compute_hours for stage in needs if stage.spot_allowed)
    if slack <= 0 or spot_work <= 0:
        # Nothing to share (or no stage can use it): the current stage gets whatever is beyond the others' needs.
        rest = sum(minimum[1:])
        return [max(hours_left - rest, 0.0), *minimum[1:]]
    return [
        need + (slack * stage.compute_hours / spot_work if stage.spot_allowed else 0.0)
        for need, stage in zip(minimum, needs, strict=True)
    ]


def stage_must_finish_in(hours_left: float, stages: Sequence[StageLike], changeover_hours: float) -> float:
    """Hours from now by which the current stage (stages[0]) must finish."""
    return allocate_deadlines(hours_left, stages, changeover_hours)[0]


def stage_latest_finish_in(hours_left: float, stages: Sequence[StageLike], changeover_hours: float) -> float:
    """Hours from now by which the current stage (stages[0]) must finish for the pipeline to still make its deadline,
    the later stages running on On-Demand (their compute and a changeover each): past it the deadline is lost,
    whereas its share (`stage_must_finish_in`) is only what the policy plans with."""
    later = _needs(stages)[1:]
    return max(hours_left - sum(stage.compute_hours + changeover_hours for stage in later), 0.0)


def _needs(stages: Sequence[StageLike]) -> list[StageNeed]:
    return [stage if isinstance(stage, StageNeed) else StageNeed(float(stage[0]), bool(stage[1])) for stage in stages]
