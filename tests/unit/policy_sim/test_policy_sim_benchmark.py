"""The benchmark runner: rows per scenario and policy, error rows for invalid scenarios, the summary."""

from __future__ import annotations

import math

import pytest
from spot_hpc.policy import DeadlinePolicy, GreedyPolicy

from spotctl.policy_sim.benchmark import POLICY_ORDER, format_summary, run_benchmark, summarise
from spotctl.policy_sim.plots import plot_benchmark
from spotctl.policy_sim.simulator import Job, Stage, simulate


def test_rows_for_every_policy_and_error_rows_for_invalid_scenarios(tiny_trace, scenario):
    # GIVEN a valid scenario, one on a missing trace, one past the trace's end, and one that is not an object
    missing = {**scenario, "id": "gone", "trace": "traces/nope.json"}
    too_late = {**scenario, "id": "late", "start_tick": 40}
    # WHEN the benchmark runs
    rows = run_benchmark([scenario, missing, too_late, 7], tiny_trace.parent.parent)
    # THEN one row per scenario and policy; invalid ones carry an error instead of a crash
    assert len(rows) == 4 * len(POLICY_ORDER)
    valid = [row for row in rows if row["id"] == "t1"]
    assert {row["policy"] for row in valid} == set(POLICY_ORDER)
    assert all("error" not in row and row["met"] for row in valid if row["policy"] != "spot_only")
    errors = {row["id"]: row["error"] for row in rows if "error" in row}
    assert "nope.json: no such file" in errors["gone"] and "passes the end" in errors["late"] and "#3" in errors


def test_a_trace_with_values_no_trace_has_gives_error_rows(tiny_trace, scenario):
    # GIVEN scenarios on traces whose gap is NaN, infinite or a string, or whose capacities are negative or fractional
    broken = {
        "nan-gap": '{"metadata": {"gap_seconds": NaN}, "data": [1, 1]}',
        "inf-gap": '{"metadata": {"gap_seconds": Infinity}, "data": [1, 1]}',
        "text-gap": '{"metadata": {"gap_seconds": "300"}, "data": [1, 1]}',
        "negative": '{"metadata": {"gap_seconds": 300}, "data": [1, -1]}',
        "fraction": '{"metadata": {"gap_seconds": 300}, "data": [1, 0.5]}',
        "bad-price": '{"metadata": {"gap_seconds": 300}, "data": [1, 1], "prices": [0.3, NaN]}',
    }
    scenarios = []
    for name, text in broken.items():
        (tiny_trace.parent / f"{name}.json").write_text(text)
        scenarios.append({**scenario, "id": name, "trace": f"traces/{name}.json"})
    # WHEN the benchmark runs
    rows = run_benchmark(scenarios, tiny_trace.parent.parent)
    # THEN each gets error rows saying what is wrong with its trace, and nothing crashed
    errors = {row["id"]: row["error"] for row in rows}
    assert len(rows) == len(broken) * len(POLICY_ORDER) and set(errors) == set(broken)
    assert all(
        "gap_seconds must be a positive finite number" in errors[name] for name in ("nan-gap", "inf-gap", "text-gap")
    )
    assert "capacity [1] is -1" in errors["negative"] and "capacity [1] is 0.5" in errors["fraction"]
    assert "prices must be" in errors["bad-price"]


def test_a_scenario_whose_id_is_not_an_id_gets_error_rows_named_by_its_place(tiny_trace, scenario):
    # GIVEN scenarios whose ids are null, a list and an empty string, and one with a whole-number id
    scenarios = [{**scenario, "id": None}, {**scenario, "id": ["x"]}, {**scenario, "id": ""}, {**scenario, "id": 7}]
    # WHEN the benchmark runs
    rows = run_benchmark(scenarios, tiny_trace.parent.parent)
    # THEN the first three are error rows named by their place in the file, saying what is wrong; 7 is an id
    errors = {row["id"]: row["error"] for row in rows if "error" in row}
    assert set(errors) == {"#0", "#1", "#2"} and all("id must be" in error for error in errors.values())
    assert {row["policy"] for row in rows if row["id"] == "7" and "error" not in row} == set(POLICY_ORDER)


def test_stages_that_are_not_a_list_are_error_rows_saying_so(tiny_trace, scenario):
    # GIVEN scenarios whose stages are a string and an object instead of a list of stages
    scenarios = [
        {**scenario, "id": "text", "stages": "pre"},
        {**scenario, "id": "object", "stages": {"compute_hours": 1}},
    ]
    # WHEN the benchmark runs
    rows = run_benchmark(scenarios, tiny_trace.parent.parent)
    # THEN both are error rows saying what stages must be (not that a stage lacks compute_hours)
    errors = {row["id"]: row["error"] for row in rows}
    assert errors == {"text": "stages must be a list of stages", "object": "stages must be a list of stages"}


def test_optimum_is_the_cheapest_row(tiny_trace, scenario):
    # GIVEN a valid scenario
    # WHEN the benchmark runs
    rows = run_benchmark([scenario], tiny_trace.parent.parent)
    # THEN no policy that met the deadline is cheaper than the optimum
    costs = {row["policy"]: row["cost"] for row in rows if row["met"]}
    assert all(cost >= costs["optimum"] - 1e-9 for cost in costs.values())


def test_summary_judges_only_scenarios_the_optimum_meets():
    # GIVEN one feasible and one infeasible scenario's rows
    rows = [
        {"id": "a", "policy": "optimum", "cost": 10.0, "met": True, "finish_hours": 5, "slack": 1.5},
        {"id": "a", "policy": "default", "cost": 11.0, "met": True, "finish_hours": 5, "slack": 1.5},
        {"id": "b", "policy": "optimum", "cost": math.inf, "met": False, "finish_hours": None, "slack": 1.1},
        {"id": "b", "policy": "default", "cost": 30.0, "met": False, "finish_hours": None, "slack": 1.1},
        {"id": "c", "policy": "default", "error": "bad"},
    ]
    # WHEN summarised
    summary = {s.policy: s for s in summarise(rows)}
    text = format_summary(rows)
    # THEN only scenario a counts
    assert summary["default"].scenarios == 1 and summary["default"].mean_ratio == 1.1
    assert "1 invalid" in text and "| default | 1 | 1.100 | 1/1 |" in text


def test_a_cost_over_an_optimum_of_nothing_is_infinitely_worse_not_as_good():
    # GIVEN a scenario whose optimum costs nothing (free Spot all along), On-Demand paid, greedy paid nothing
    rows = [
        {"id": "free", "policy": "optimum", "cost": 0.0, "met": True, "finish_hours": 2, "slack": 1.5},
        {"id": "free", "policy": "on_demand", "cost": 6.12, "met": True, "finish_hours": 2, "slack": 1.5},
        {"id": "free", "policy": "greedy", "cost": 0.0, "met": True, "finish_hours": 2, "slack": 1.5},
    ]
    # WHEN summarised
    summary = {s.policy: s for s in summarise(rows)}
    # THEN a policy that paid anything is infinitely far from the optimum; one that paid nothing is at it
    assert summary["on_demand"].mean_ratio == math.inf
    assert summary["greedy"].mean_ratio == 1.0


def test_a_policy_infinitely_above_the_optimum_is_plotted_off_scale(tmp_path):
    # GIVEN rows where greedy paid on a scenario whose optimum costs nothing, and paid 10% over it on another
    rows = [
        {"id": "free", "policy": "optimum", "cost": 0.0, "met": True, "finish_hours": 2, "slack": 1.5},
        {"id": "free", "policy": "greedy", "cost": 1.0, "met": True, "finish_hours": 2, "slack": 1.5},
        {"id": "paid", "policy": "optimum", "cost": 2.0, "met": True, "finish_hours": 2, "slack": 2.2},
        {"id": "paid", "policy": "greedy", "cost": 2.2, "met": True, "finish_hours": 2, "slack": 2.2},
    ]
    # WHEN the benchmark's chart is drawn
    plot_benchmark(rows, tmp_path / "cost.png")
    # THEN it is a PNG (the infinite mean is drawn at the top edge, not as the axis's limit)
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_stage_without_spot_runs_on_demand():
    # GIVEN a pipeline whose middle stage cannot use Spot, with capacity throughout
    job = Job((True,) * 12, (Stage("pre", 2), Stage("hpc", 3, spot_allowed=False), Stage("post", 2)), 1, 1.0, 3.0, 1.0)
    # WHEN greedy and the default policy run it
    runs = [simulate(job, GreedyPolicy(), record=True), simulate(job, DeadlinePolicy(), record=True)]
    # THEN both meet it and the HPC stage ran only On-Demand
    for run in runs:
        assert run.met
        assert {r.action.value for r in run.timeline if r.stage == "hpc"} == {"on_demand"}


def test_work_or_a_changeover_that_cannot_fit_the_window_is_unmeetable_at_once(tiny_trace, scenario):
    # GIVEN scenarios whose compute, or changeover, is absurdly longer than their 3-hour window (a typo): sized by
    # them, the optimum's tables would take terabytes
    scenarios = [
        {**scenario, "id": "work", "compute_hours": 1e12},
        {**scenario, "id": "change", "changeover_hours": 1e12},
    ]
    # WHEN the benchmark runs them
    rows = run_benchmark(scenarios, tiny_trace.parent.parent)
    # THEN no policy meets them, the optimum included (inf cost), and every row is there
    assert len(rows) == 2 * len(POLICY_ORDER) and not any(row["met"] for row in rows)
    assert [row["cost"] for row in rows if row["policy"] == "optimum"] == [math.inf, math.inf]


def test_numbers_too_large_to_simulate_are_error_rows(tiny_trace, scenario):
    # GIVEN a scenario whose hours are finite but overflow when turned into ticks
    huge = {**scenario, "id": "huge", "compute_hours": 1e308, "deadline_hours": 1e308}
    # WHEN the benchmark runs it beside a valid one
    rows = run_benchmark([huge, scenario], tiny_trace.parent.parent)
    # THEN the huge one has error rows and the valid one still runs
    assert all("error" in row for row in rows if row["id"] == "huge")
    assert all("error" not in row for row in rows if row["id"] == "t1")


def test_compute_shorter_than_a_tick_still_takes_a_tick(tiny_trace, scenario):
    # GIVEN a job, and a pipeline's first stage, needing far less than a tick of compute (less than the float
    # tolerance of a tick count)
    tiny = {**scenario, "id": "tiny", "compute_hours": 1e-12}
    stages = [{"name": "setup", "compute_hours": 1e-12}, {"name": "solve", "compute_hours": 1.0}]
    pipeline = {**scenario, "id": "pipeline", "compute_hours": 1.0 + 1e-12, "stages": stages}
    # WHEN the benchmark runs them
    rows = run_benchmark([tiny, pipeline], tiny_trace.parent.parent)
    # THEN K = ceil(compute_hours / h) >= 1: the tiny job is paid for (On-Demand: a changeover and a tick of work),
    # and the pipeline's rows are all there, none cheaper than the optimum
    on_demand = next(row for row in rows if row["id"] == "tiny" and row["policy"] == "on_demand")
    assert on_demand["cost"] == pytest.approx(2 * scenario["od_price"] / 12) and on_demand["finish_hours"] > 0
    optimum = next(row for row in rows if row["id"] == "pipeline" and row["policy"] == "optimum")
    assert all(row["cost"] >= optimum["cost"] - 1e-9 for row in rows if row["id"] == "pipeline" and row["met"])
