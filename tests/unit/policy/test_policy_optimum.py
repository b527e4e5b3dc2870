"""The optimum is exact: on tiny traces it equals the best of every possible action sequence."""

from __future__ import annotations

import itertools
import math

import pytest
from spot_hpc.policy import Action, DeadlinePolicy, GreedyPolicy, TickState

from spotctl.policy_sim.optimum import run_optimum, solve
from spotctl.policy_sim.simulator import Job, Stage, simulate


class Scripted:
    name = "scripted"

    def __init__(self, actions: tuple[Action, ...]) -> None:
        self.actions = actions

    def choose(self, state: TickState) -> Action:
        return self.actions[state.tick]


def brute_force(job: Job) -> float:
    best = math.inf
    for actions in itertools.product(list(Action), repeat=job.ticks):
        result = simulate(job, Scripted(actions))
        if result.met:
            best = min(best, result.cost)
    return best


CASES = [
    ((1, 0, 1, 1, 0, 1, 1), (Stage("job", 3),), 1),
    ((1, 1, 0, 0, 1, 1, 1), (Stage("job", 4),), 1),
    ((0, 1, 1, 1, 0, 1, 1), (Stage("job", 2),), 2),
    ((1, 0, 1, 0, 1, 0, 1), (Stage("job", 3),), 0),
    ((1, 1, 1, 0, 1, 1, 1), (Stage("pre", 1), Stage("hpc", 2, spot_allowed=False), Stage("post", 1)), 0),
    ((0, 1, 1, 0, 1, 1, 0), (Stage("pre", 2), Stage("hpc", 1, spot_allowed=False)), 1),
    ((0, 0, 0, 0, 0, 0), (Stage("job", 5),), 2),  # infeasible
]


@pytest.mark.parametrize(("capacity", "stages", "changeover"), CASES)
def test_optimum_equals_brute_force(capacity, stages, changeover):
    # GIVEN a tiny window, work and changeover
    job = Job(tuple(bool(c) for c in capacity), stages, changeover, 1.0, od_price=3.0, spot_price=1.0)
    # WHEN the optimum is solved and every action sequence is tried
    optimum, exhaustive = solve(job).cost, brute_force(job)
    # THEN they agree (inf when nothing meets the deadline)
    assert optimum == pytest.approx(exhaustive) if math.isfinite(exhaustive) else math.isinf(optimum)


def test_optimum_replay_reaches_its_cost_and_no_policy_beats_it():
    # GIVEN a longer window with gaps
    capacity = tuple(bool((t // 7) % 3) for t in range(120))
    job = Job(capacity, (Stage("job", 60),), 2, 0.25, od_price=4.0, spot_price=1.2)
    # WHEN the optimum is replayed and two online policies run
    optimum = run_optimum(job, record=True)
    others = [simulate(job, GreedyPolicy()), simulate(job, DeadlinePolicy())]
    # THEN it meets the deadline, its timeline ends at its finish, and no policy is cheaper
    assert optimum.met and optimum.timeline[-1].tick + 1 == optimum.finish_ticks
    assert all(other.cost >= optimum.cost - 1e-9 for other in others if other.met)
