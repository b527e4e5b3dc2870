"""The tick model of the policy benchmark, and the published baselines written against it.

Time is cut into ticks of equal length; each tick a policy sees the past, the current tick's Spot capacity and its
own state, and chooses what the job runs on. `TickState` is what a policy sees; the simulator (spotctl.policy_sim)
builds it. Work is counted in productive ticks; a changeover (starting a new instance) costs `changeover_ticks`
paid ticks without progress.

A pipeline is a sequence of stages; `stage_work_left[0]` is the current stage. Stages that cannot use Spot (multi-node
parallel jobs in AWS Batch) have `stage_spot[i]` False; there the simulator runs a SPOT choice on On-Demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from spot_hpc.policy.actions import Action
from spot_hpc.policy.deadline import decide
from spot_hpc.policy.pipeline import StageNeed, stage_must_finish_in
from spot_hpc.policy.stats import SpotStats, band_hours_for


@dataclass(frozen=True)
class TickState:
    """What a policy sees at the start of a tick, after any preemption."""

    tick: int
    ticks: int
    progress: int
    work_ticks: int
    changeover_ticks: int
    running: Action
    warmup_left: int
    capacity: bool
    tick_hours: float
    od_price: float
    spot_price: float
    stage_work_left: tuple[int, ...] = ()
    stage_spot: tuple[bool, ...] = ()

    @property
    def ticks_left(self) -> int:
        return self.ticks - self.tick

    @property
    def work_left(self) -> int:
        return self.work_ticks - self.progress

    @property
    def spot_allowed(self) -> bool:
        """Whether the current stage may use Spot at all."""
        return self.stage_spot[0] if self.stage_spot else True


class TickPolicy(Protocol):
    """A policy run by the tick simulator; one instance per run (policies may keep state)."""

    name: str

    def choose(self, state: TickState) -> Action: ...


class OnDemandPolicy:
    """On-Demand from the first tick."""

    name = "on_demand"

    def choose(self, state: TickState) -> Action:
        return Action.ON_DEMAND


class SpotOnlyPolicy:
    """Spot whenever there is capacity, else idle: what AWS Batch retries alone do. Ignores the deadline."""

    name = "spot_only"

    def choose(self, state: TickState) -> Action:
        return Action.SPOT if state.capacity else Action.IDLE


class _SafetyNetPolicy:
    """The safety net shared by the paper's Greedy and Uniform Progress: once the job is off Spot and fewer ticks
    are left than the remaining work plus two changeovers and one tick, On-Demand to the end."""

    name = "safety_net"

    def __init__(self) -> None:
        self.safety = False

    def choose(self, state: TickState) -> Action:
        if not self.safety:
            margin = 2 * state.changeover_ticks + 1
            self.safety = state.running != Action.SPOT and state.ticks_left < state.work_left + margin
        if self.safety:
            return Action.ON_DEMAND
        return self.choose_before_safety(state)

    def choose_before_safety(self, state: TickState) -> Action:
        raise NotImplementedError


class GreedyPolicy(_SafetyNetPolicy):
    """The paper's Greedy: Spot whenever there is capacity, else idle, until the safety net."""

    name = "greedy"

    def choose_before_safety(self, state: TickState) -> Action:
        return Action.SPOT if state.capacity else Action.IDLE


class UniformProgressPolicy(_SafetyNetPolicy):
    """The paper's Uniform Progress: keep progress on the straight line from 0 to the work by the deadline, using
    On-Demand only when behind it."""

    name = "uniform_progress"

    def choose_before_safety(self, state: TickState) -> Action:
        def expected_progress(tick: int) -> float:
            return state.work_ticks * tick / state.ticks

        if state.running == Action.ON_DEMAND and state.progress < expected_progress(
            state.tick + 2 * state.changeover_ticks
        ):
            return Action.ON_DEMAND
        if state.capacity:
            return Action.SPOT
        if state.running != Action.ON_DEMAND and state.progress < expected_progress(state.tick):
            return Action.ON_DEMAND
        return Action.IDLE


class DeadlinePolicy:
    """The deployed policy (`decide`) in the tick model: ticks become hours, Spot statistics are learnt from the
    capacity seen so far in the run, and a pipeline's deadline is shared out by `allocate_deadlines`."""

    name = "default"

    def __init__(self, advisor_bucket: int | None = None) -> None:
        self.stats: SpotStats | None = None
        self.advisor_bucket = advisor_bucket
        self.last_reason = ""

    def choose(self, state: TickState) -> Action:
        hours = state.tick_hours
        if self.stats is None:  # the life table counts ages in whole ticks
            band = band_hours_for(hours, state.changeover_ticks * hours)
            self.stats = SpotStats.with_prior(self.advisor_bucket, band_hours=band)
        self.stats.observe(state.capacity, hours)
        stage_work = state.stage_work_left or (state.work_left,)
        stage_spot = state.stage_spot or (True,)
        change = state.changeover_ticks * hours
        needs = [StageNeed(work * hours, spot) for work, spot in zip(stage_work, stage_spot, strict=True)]
        decision = decide(
            remaining_hours=stage_work[0] * hours,
            hours_left=stage_must_finish_in(state.ticks_left * hours, needs, change),
            current=state.running,
            spot_available=state.capacity,
            changeover_hours=change,
            od_price=state.od_price,
            spot_price=state.spot_price,
            stats=self.stats,
            spot_allowed=state.spot_allowed,
            step_hours=hours,
            warmup_left_hours=state.warmup_left * hours,
        )
        self.last_reason = decision.reason
        return decision.action
