"""Sharing a pipeline deadline between stages."""

from __future__ import annotations

import pytest
from spot_hpc.policy import StageNeed, allocate_deadlines, stage_latest_finish_in, stage_must_finish_in


def test_slack_goes_to_spot_stages_in_proportion_to_compute():
    # GIVEN 40 h for preprocess (2 h), a multi-node HPC stage (10 h, On-Demand only) and postprocess (4 h)
    stages = [StageNeed(2.0), StageNeed(10.0, spot_allowed=False), StageNeed(4.0)]
    # WHEN the deadline is shared with changeover 0.5 h
    budgets = allocate_deadlines(40.0, stages, 0.5)
    # THEN every stage gets its On-Demand need, the slack (22.5 h) goes 1:2 to the Spot stages
    assert budgets == pytest.approx([2.5 + 7.5, 10.5, 4.5 + 15.0])
    assert sum(budgets) == pytest.approx(40.0)


def test_without_slack_the_current_stage_gets_what_the_others_do_not_need():
    # GIVEN less time than every stage needs on On-Demand
    stages = [StageNeed(5.0), StageNeed(5.0)]
    # WHEN the deadline is shared
    budgets = allocate_deadlines(9.0, stages, 0.5)
    # THEN later stages keep their minimum and the current stage gets the rest
    assert budgets == pytest.approx([3.5, 5.5])


def test_current_stage_must_finish_time():
    # GIVEN two Spot stages of equal compute
    stages = [StageNeed(3.0), StageNeed(3.0)]
    # WHEN asked for the current stage's budget
    budget = stage_must_finish_in(10.0, stages, 0.0)
    # THEN half the slack is its own
    assert budget == pytest.approx(5.0)


def test_no_stages_no_budgets():
    # GIVEN nothing left
    # WHEN shared
    # THEN nothing
    assert allocate_deadlines(5.0, [], 0.1) == []


def test_stages_may_be_given_as_pairs():
    # GIVEN the same stages as StageNeed and as (compute_hours, spot_allowed) pairs
    needs = [StageNeed(2.0), StageNeed(10.0, spot_allowed=False)]
    pairs = [(2.0, True), (10.0, False)]
    # WHEN shared
    # THEN the budgets are the same
    assert allocate_deadlines(20.0, pairs, 0.5) == allocate_deadlines(20.0, needs, 0.5)


def test_the_latest_finish_leaves_the_later_stages_their_on_demand_time_whatever_the_shares():
    # GIVEN 10 h left for a Spot stage of 0.5 h, an On-Demand-only stage of 0.5 h and a Spot stage of 0.5 h
    stages = [(0.5, True), (0.5, False), (0.5, True)]
    # WHEN / THEN the On-Demand-only stage's share is its compute and a changeover (it gets no slack), but the latest
    # it may finish leaves only the last stage's On-Demand time (0.6 h) after it
    assert allocate_deadlines(9.4, stages[1:], 0.1)[0] == pytest.approx(0.6)
    assert stage_latest_finish_in(9.4, stages[1:], 0.1) == pytest.approx(8.8)
    assert stage_latest_finish_in(10.0, stages, 0.1) == pytest.approx(8.8)
    # AND past the time the later stages need, it is zero (the deadline is lost), never negative
    assert stage_latest_finish_in(1.0, stages, 0.1) == 0.0 and stage_latest_finish_in(2.0, [(0.5, True)], 0.1) == 2.0
