"""Blocking raw trace ticks into policy ticks, and windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotctl.policy_sim.scenarios import ScenarioError, build_job, parse_scenario
from spotctl.policy_sim.traces import block_trace


def write_trace(tmp_path: Path, values: list[int], gap: float) -> str:
    path = tmp_path / f"trace_{gap}_{len(values)}.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": gap}, "data": values}))
    return str(path)


def test_block_has_capacity_only_if_every_raw_tick_has_enough_nodes(tmp_path):
    # GIVEN 100-second raw ticks and 300-second policy ticks (blocks of 3), last partial block of 2
    path = write_trace(tmp_path, [4, 4, 4, 4, 3, 4, 2, 2, 2, 4, 4], 100)
    # WHEN blocked for 4 nodes and for 2 nodes
    four, two = block_trace(path, 300, 4), block_trace(path, 300, 2)
    # THEN a block needs every raw tick >= nodes, and the partial block is dropped
    assert four.capacity == (True, False, False)
    assert two.capacity == (True, True, True)
    assert four.tick_hours == pytest.approx(300 / 3600)


def test_a_capacity_past_the_largest_float_is_a_count_like_any_other(tmp_path):
    # GIVEN a trace one of whose capacities is an integer JSON allows, past the largest float
    path = write_trace(tmp_path, [10**400, 0, 1], 300)
    # WHEN blocked for one node
    blocked = block_trace(path, 300, 1)
    # THEN that tick has capacity, as any count of at least one node has
    assert blocked.capacity == (True, False, True)


def test_block_size_rounds_and_is_at_least_one(tmp_path):
    # GIVEN a 600-second trace and 300-second ticks, and a 195-second trace
    coarse = write_trace(tmp_path, [1, 0, 1], 600)
    fine = write_trace(tmp_path, [1] * 10, 195)
    # WHEN blocked
    # THEN one raw tick per block (600 s ticks), and round(300 / 195) = 2 raw ticks (390 s) per block
    assert block_trace(coarse, 300, 1).tick_hours == pytest.approx(600 / 3600)
    assert block_trace(fine, 300, 1).raw_ticks_per_tick == 2
    assert len(block_trace(fine, 300, 1).capacity) == 5


def test_window_past_the_end_of_the_trace_is_invalid(tiny_trace, scenario):
    # GIVEN a window of 36 ticks starting 20 ticks before the end of the 48 blocked ticks
    scenario["start_tick"] = 28
    # WHEN the job is built
    # THEN the scenario is invalid (no wrapping)
    with pytest.raises(ScenarioError, match="passes the end"):
        build_job(parse_scenario(scenario, 0), tiny_trace.parent.parent)


def test_window_work_and_changeover_in_ticks(tiny_trace, scenario):
    # GIVEN 5-minute ticks, 3 h deadline, 1.5 h compute, 0.1 h changeover
    # WHEN the job is built
    job = build_job(parse_scenario(scenario, 0), tiny_trace.parent.parent)
    # THEN n = 36, K = 18, d = round(1.2) = 1
    assert (job.ticks, job.work_ticks, job.changeover_ticks) == (36, 18, 1)


@pytest.mark.parametrize(
    ("changeover_hours", "ticks"),
    [
        (0.2975, 4),  # 3.5 ticks of 0.085 h, which floats compute as 3.4999999999999996: a tie, to even
        (0.2125, 2),  # 2.5 ticks: a tie, to even
        (0.2, 2),  # 2.35 ticks
    ],
)
def test_changeover_ticks_round_ties_to_even_despite_float_noise(tmp_path, changeover_hours, ticks):
    # GIVEN a trace sampled every 34 s, so that 300-second ticks are blocks of 9 samples (0.085 h)
    path = write_trace(tmp_path, [1] * 400, 34)
    raw = {"trace": path, "nodes": 1, "tick_seconds": 300, "start_tick": 0, "compute_hours": 1.0}
    raw.update(deadline_hours=2.0, changeover_hours=changeover_hours, od_price=3.0, spot_price=1.0)
    # WHEN the job is built
    job = build_job(parse_scenario(raw, 0), tmp_path)
    # THEN d = round(changeover_hours / h) as BENCHMARK says, exact ties going to the even number
    assert job.changeover_ticks == ticks


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": 0}, "nodes must be positive"),
        ({"deadline_hours": "soon"}, "deadline_hours must be a number"),
        ({"trace": None}, "trace must be a path"),
        ({"stages": [{"compute_hours": 1.0}]}, "sum of the stages"),
        # json.loads reads NaN and Infinity; NaN passes every `<= 0` check
        ({"deadline_hours": float("nan")}, "deadline_hours must be a finite number"),
        ({"od_price": float("inf")}, "od_price must be a finite number"),
        # a price no job pays, whose costs would print hundreds of digits long, or overflow to infinity
        ({"od_price": 1e300}, "od_price must be at most 1,000,000 USD per hour"),
        ({"spot_price": 2e6}, "spot_price must be at most 1,000,000 USD per hour"),
        ({"stages": [{"compute_hours": float("nan")}]}, "compute_hours must be a finite number"),
        # bool("false") is True, and a bool is an int
        ({"stages": [{"compute_hours": 1.5, "spot": "false"}]}, "spot must be true or false"),
        ({"advisor_bucket": True}, "advisor_bucket must be an integer"),
        # an integer JSON allows, past the largest float
        ({"nodes": 10**400}, "nodes must be a finite number, got an integer of 401 digits"),
        ({"stages": [{"compute_hours": 10**400}]}, "compute_hours must be a finite number, got an integer of 401"),
        # the timeline tells stages apart by name
        ({"stages": [{"name": "hpc", "compute_hours": 1.0}, {"name": "hpc", "compute_hours": 0.5}]},
         "stage names must be unique; given more than once: hpc$"),
        ({"stages": [{"compute_hours": 1.0}, {"compute_hours": 0.5}]},
         r"given more than once: stage \(a stage without a name is named 'stage'\)"),
        ({"stages": [{"name": 1, "compute_hours": 1.0}, {"name": "1", "compute_hours": 0.5}]},
         "a stage's name must be a non-empty string, got 1"),
    ],
)  # fmt: skip
def test_invalid_fields_are_reported(scenario, change, message):
    # GIVEN a scenario with one bad field
    scenario.update(change)
    # WHEN parsed
    # THEN the error names the problem
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(scenario, 0)
