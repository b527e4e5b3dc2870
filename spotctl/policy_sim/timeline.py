"""A run's timeline as text: consecutive ticks with the same capacity, choice and reason on one line."""

from __future__ import annotations

from dataclasses import dataclass

from spot_hpc.policy import Action, DeadlinePolicy, TickPolicy, TickState

from spotctl.policy_sim.simulator import Job, RunResult


class ExplainedPolicy:
    """Wraps a policy to keep, per tick, the reason given (the deployed policy gives one; the others do not)."""

    def __init__(self, policy: TickPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.reasons: list[str] = []

    def choose(self, state: TickState) -> Action:
        action = self.policy.choose(state)
        self.reasons.append(self.policy.last_reason if isinstance(self.policy, DeadlinePolicy) else "")
        return action


@dataclass(frozen=True)
class Segment:
    first_tick: int
    last_tick: int
    capacity: bool
    action: Action
    reason: str


def segments(result: RunResult, reasons: list[str]) -> list[Segment]:
    out: list[Segment] = []
    for record, reason in zip(result.timeline, reasons, strict=False):
        key = (record.capacity, record.action, reason)
        if out and (out[-1].capacity, out[-1].action, out[-1].reason) == key:
            out[-1] = Segment(out[-1].first_tick, record.tick, *key)
        else:
            out.append(Segment(record.tick, record.tick, *key))
    return out


def format_timeline(job: Job, result: RunResult, reasons: list[str]) -> str:
    h = job.tick_hours
    lines = [
        f"{result.policy}: {job.work_ticks} ticks of work ({job.work_ticks * h:.2f} h), deadline {job.ticks} ticks "
        f"({job.ticks * h:.2f} h), tick {h * 60:.2f} min, changeover {job.changeover_ticks} ticks",
        f"{'hours':>15}  {'spot':>4}  {'choice':<9}  {'progress':>9}  {'cost':>10}  reason",
    ]
    by_tick = {record.tick: record for record in result.timeline}
    for segment in segments(result, reasons):
        end = by_tick[segment.last_tick]
        span = f"{segment.first_tick * h:6.2f}-{(segment.last_tick + 1) * h:6.2f}"
        lines.append(
            f"{span:>15}  {'yes' if segment.capacity else 'no':>4}  {segment.action.value:<9}  "
            f"{end.progress * 100 / job.work_ticks:8.1f}%  {end.cost:10.2f}  {segment.reason}"
        )
    if not result.met:
        outcome = "missed the deadline"
    elif result.finish_hours is None:
        # The optimum keeps its exact cost but not its plan when the plan is too large (optimum.MAX_PLAN_CELLS).
        outcome = "met the deadline; its finish time is not known (the plan was too large to keep)"
    else:
        outcome = f"finished at {result.finish_hours:.2f} h"
    lines.append(f"cost ${result.cost:,.2f}; {outcome}")
    return "\n".join(lines)
