"""The tick simulator: runs one policy over one window of blocked Spot capacity, for a job or a pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from spot_hpc.policy import Action, TickPolicy, TickState


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline, in ticks of work; a single job is a pipeline of one stage."""

    name: str
    work_ticks: int
    spot_allowed: bool = True


@dataclass(frozen=True)
class TickRecord:
    """One tick of a run's timeline, for explaining decisions."""

    tick: int
    capacity: bool
    stage: str
    action: Action
    productive: bool
    progress: int
    cost: float


@dataclass
class RunResult:
    """Outcome of one policy on one window. A run that misses the deadline stops at the window's end."""

    policy: str
    cost: float
    met: bool
    finish_ticks: int | None
    tick_hours: float
    timeline: list[TickRecord] = field(default_factory=list)

    @property
    def finish_hours(self) -> float | None:
        return None if self.finish_ticks is None else self.finish_ticks * self.tick_hours


@dataclass(frozen=True)
class Job:
    """What is simulated: the window's capacity per tick, the stages, and the prices for the whole job."""

    capacity: Sequence[bool]
    stages: tuple[Stage, ...]
    changeover_ticks: int
    tick_hours: float
    od_price: float
    spot_price: float

    @property
    def ticks(self) -> int:
        return len(self.capacity)

    @property
    def work_ticks(self) -> int:
        return sum(stage.work_ticks for stage in self.stages)


def simulate(job: Job, policy: TickPolicy, *, record: bool = False) -> RunResult:
    """Run `policy` over `job` under the benchmark's rules; `record` keeps the per-tick timeline."""
    running = Action.IDLE
    warmup_left = 0
    progress = 0
    stage_index = 0
    stage_progress = 0
    cost = 0.0
    timeline: list[TickRecord] = []
    total = job.work_ticks
    finish = 0
    prices = {Action.SPOT: job.spot_price * job.tick_hours, Action.ON_DEMAND: job.od_price * job.tick_hours}
    for tick in range(job.ticks):
        if progress >= total:
            break
        capacity = bool(job.capacity[tick])
        if running == Action.SPOT and not capacity:
            running, warmup_left = Action.IDLE, 0  # preempted
        stage = job.stages[stage_index]
        state = TickState(
            tick=tick,
            ticks=job.ticks,
            progress=progress,
            work_ticks=total,
            changeover_ticks=job.changeover_ticks,
            running=running,
            warmup_left=warmup_left,
            capacity=capacity,
            tick_hours=job.tick_hours,
            od_price=job.od_price,
            spot_price=job.spot_price,
            stage_work_left=(stage.work_ticks - stage_progress, *(s.work_ticks for s in job.stages[stage_index + 1 :])),
            stage_spot=tuple(s.spot_allowed for s in job.stages[stage_index:]),
        )
        action = Action(policy.choose(state))
        if action == Action.SPOT and not stage.spot_allowed:
            action = Action.ON_DEMAND  # the stage's jobs only run on an On-Demand queue
        if action == Action.SPOT and not capacity:
            action = Action.IDLE  # no instance could be had
        productive = False
        if action == Action.IDLE:
            running, warmup_left = Action.IDLE, 0
        else:
            if action != running:
                running, warmup_left = action, job.changeover_ticks
            cost += prices[action]
            if warmup_left > 0:
                warmup_left -= 1
            else:
                productive = True
                progress += 1
                stage_progress += 1
        if record:
            timeline.append(TickRecord(tick, capacity, stage.name, action, productive, progress, cost))
        if productive and stage_progress >= stage.work_ticks and progress < total:
            # The next stage is a new job: it starts on a new instance.
            stage_index, stage_progress = stage_index + 1, 0
            running, warmup_left = Action.IDLE, 0
        if progress >= total:
            finish = tick + 1
    met = progress >= total
    return RunResult(policy.name, cost, met, finish if met else None, job.tick_hours, timeline)
