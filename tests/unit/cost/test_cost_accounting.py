"""Cost accounting: per-second billing with a 60-s minimum, run cost, On-Demand-only cost, savings, report checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from spot_hpc.cost import (
    Attempt,
    StagePlan,
    attempt_cost_usd,
    attempt_from_report,
    attempts_from_report,
    billed_seconds,
    check_run_report_costs,
    on_demand_only_cost_usd,
    on_demand_only_hours,
    run_cost_usd,
    savings_pct,
    settle_run,
)

SPOT_1 = 0.612  # p3.2xlarge us-east-1, On-Demand 3.06 less the advisor's 80 %
ON_DEMAND_1 = 3.06
THIRTY_SECONDS_H = 30 / 3600


def _run_report() -> dict[str, Any]:
    """A run whose HPC stage was reclaimed on Spot and finished on On-Demand; figures worked out by hand."""
    return {
        "pipeline_status": "SUCCEEDED",
        "deadline_hours": 10.0,
        "finished_hours": 4.5 + THIRTY_SECONDS_H,
        "deadline_met": True,
        "stages": [
            {
                "name": "preprocess",
                "status": "SUCCEEDED",
                "compute_hours": 1.0,
                "on_demand_usd_per_hour": ON_DEMAND_1,
                "attempts": [
                    # 1 h on Spot: 0.612
                    {"job_id": "j1", "queue": "spot", "capacity": "spot", "nodes": 1, "status": "SUCCEEDED",
                     "status_reason": "", "exit_code": 0, "started_hours": 0.0, "stopped_hours": 1.0,
                     "resumed_from_checkpoint": False, "usd_per_hour": SPOT_1, "cost_usd": 0.612},
                ],
            },
            {
                "name": "hpc",
                "status": "SUCCEEDED",
                "compute_hours": 3.5,
                "on_demand_usd_per_hour": 4 * ON_DEMAND_1,
                "attempts": [
                    # 1.5 h on 4 Spot nodes, reclaimed: 2.448 x 1.5 = 3.672
                    {"job_id": "j2", "queue": "spot", "capacity": "spot", "nodes": 4, "status": "FAILED",
                     "status_reason": "Host EC2 (instance i-0abc) terminated.", "exit_code": None,
                     "started_hours": 1.0, "stopped_hours": 2.5, "resumed_from_checkpoint": False,
                     "usd_per_hour": 4 * SPOT_1, "cost_usd": 3.672},
                    # the remaining 2 h on 4 On-Demand nodes from the checkpoint: 12.24 x 2 = 24.48
                    {"job_id": "j3", "queue": "on-demand", "capacity": "on-demand", "nodes": 4, "status": "SUCCEEDED",
                     "status_reason": "", "exit_code": 0, "started_hours": 2.5, "stopped_hours": 4.5,
                     "resumed_from_checkpoint": True, "usd_per_hour": 4 * ON_DEMAND_1, "cost_usd": 24.48},
                ],
            },
            {
                "name": "postprocess",
                "status": "SUCCEEDED",
                "compute_hours": THIRTY_SECONDS_H,
                "on_demand_usd_per_hour": ON_DEMAND_1,
                "attempts": [
                    # 30 s on Spot, billed the 60-s minimum: 0.612 / 60 = 0.0102
                    {"job_id": "j4", "queue": "spot", "capacity": "spot", "nodes": 1, "status": "SUCCEEDED",
                     "status_reason": "", "exit_code": 0, "started_hours": 4.5,
                     "stopped_hours": 4.5 + THIRTY_SECONDS_H, "resumed_from_checkpoint": False,
                     "usd_per_hour": SPOT_1, "cost_usd": 0.0102},
                ],
            },
        ],
        "interruptions": 1,
        "requeues_to_on_demand": 1,
        # 0.612 + 3.672 + 24.48 + 0.0102
        "cost_usd": 28.7742,
        # 3.06 x 1 + 12.24 x 3.5 + 3.06 / 60 (60-s minimum)
        "on_demand_only_cost_usd": 45.951,
        # (45.951 - 28.7742) / 45.951
        "savings_pct": 37.38,
        "notifications": [],
    }  # fmt: skip


def test_billing_is_per_second_with_a_60_second_minimum() -> None:
    # GIVEN attempts of 30 s, 61.2 s, exactly 30 min, none, and still running
    # WHEN / THEN EC2's Linux billing applies
    assert billed_seconds(0.0, THIRTY_SECONDS_H) == 60
    assert billed_seconds(0.0, 61.2 / 3600) == 62
    assert billed_seconds(1.0, 1.5) == 1800
    assert billed_seconds(2.0, 2.0) == 0
    assert billed_seconds(None, None) == 0
    assert billed_seconds(1.0, None) == 0
    assert billed_seconds(1.0, None, now_hours=1.25) == 900


def test_attempt_cost_is_price_for_all_nodes_times_billed_hours() -> None:
    # GIVEN a 4-node attempt of 1.5 h priced for all its nodes
    attempt = Attempt(capacity="spot", nodes=4, started_hours=1.0, stopped_hours=2.5, usd_per_hour=2.448)

    # WHEN / THEN its cost is price x hours; a running one costs what has run so far
    assert attempt_cost_usd(attempt) == pytest.approx(3.672)
    running = Attempt(capacity="on-demand", nodes=1, started_hours=0.0, stopped_hours=None, usd_per_hour=3.06)
    assert attempt_cost_usd(running, now_hours=0.5) == pytest.approx(1.53)
    assert run_cost_usd([attempt, running], now_hours=0.5) == pytest.approx(5.202)


def test_savings_are_relative_to_the_on_demand_only_cost() -> None:
    # GIVEN / WHEN / THEN savings are a share of the On-Demand-only cost, negative when the run cost more
    assert savings_pct(4.0, 10.0) == 60.0
    assert savings_pct(12.0, 10.0) == -20.0
    assert savings_pct(0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("cost", "on_demand_only", "pct"),
    [(100.004, 100.0, -0.01), (99.996, 100.0, 0.01), (0.004, 100.0, 99.99), (100.0, 100.0, 0.0), (0.0, 100.0, 100.0)],
    ids=["a-little-more", "a-little-less", "almost-nothing", "the-same", "nothing"],
)
def test_savings_are_never_rounded_to_none_or_all_when_they_are_not(cost, on_demand_only, pct) -> None:
    # GIVEN a run that cost a hair's breadth from its On-Demand-only cost, or from nothing
    # WHEN its savings are taken to two decimals
    # THEN they stay on their side of 0 % and 100 %: a run that cost more never reads as having saved 0.0 %
    assert savings_pct(cost, on_demand_only) == pct


def test_settle_run_returns_the_report_fields() -> None:
    # GIVEN the attempts and stage plans of the sample run
    report = _run_report()
    attempts = attempts_from_report(report)
    plans = [StagePlan(s["name"], s["compute_hours"], s["on_demand_usd_per_hour"]) for s in report["stages"]]

    # WHEN the run is settled
    settled = settle_run(attempts, plans)

    # THEN the figures are the hand-worked ones
    assert settled.cost_usd == pytest.approx(28.7742)
    assert settled.on_demand_only_cost_usd == pytest.approx(45.951)
    assert settled.savings_usd == pytest.approx(45.951 - 28.7742)
    assert settled.as_report_fields()["savings_pct"] == 37.38
    assert on_demand_only_cost_usd(plans) == settled.on_demand_only_cost_usd


def test_run_report_costs_recompute_from_attempts_and_prices() -> None:
    # GIVEN a run report
    report = _run_report()

    # WHEN every figure is recomputed from the attempts' billed time and prices
    problems = check_run_report_costs(report)

    # THEN they all agree, and the run cost is the sum of the attempts' costs
    assert problems == []
    attempt_costs = [a["cost_usd"] for s in report["stages"] for a in s["attempts"]]
    assert report["cost_usd"] == pytest.approx(sum(attempt_costs))
    # ... and those figures are what the cost code computes from billed time and price, not just the fixture's
    assert run_cost_usd(attempts_from_report(report)) == pytest.approx(report["cost_usd"])
    for attempt in (a for s in report["stages"] for a in s["attempts"]):
        assert attempt_cost_usd(attempt_from_report(attempt)) == pytest.approx(attempt["cost_usd"])


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("stages", 1, "attempts", 0, "cost_usd"), 1.0, "stage hpc attempt 0"),
        (("cost_usd",), 20.0, "run cost_usd"),
        (("on_demand_only_cost_usd",), 50.0, "on_demand_only_cost_usd"),
        (("savings_pct",), 90.0, "savings_pct"),
        (("stages", 0, "attempts", 0, "usd_per_hour"), 3.06, "stage preprocess attempt 0"),
    ],
)
def test_a_figure_that_disagrees_is_reported(path: tuple, value: float, expected: str) -> None:
    # GIVEN a run report with one figure tampered with
    report = copy.deepcopy(_run_report())
    target: Any = report
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    # WHEN the report is checked
    problems = check_run_report_costs(report)

    # THEN the disagreement is named
    assert any(expected in problem for problem in problems), problems


def test_attempt_rejects_impossible_values() -> None:
    # GIVEN / WHEN / THEN impossible attempts are refused
    with pytest.raises(ValueError):
        Attempt(capacity="spot", nodes=0, started_hours=0, stopped_hours=1, usd_per_hour=1)
    with pytest.raises(ValueError):
        Attempt(capacity="reserved", nodes=1, started_hours=0, stopped_hours=1, usd_per_hour=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Attempt(capacity="spot", nodes=1, started_hours=2, stopped_hours=1, usd_per_hour=1)
    with pytest.raises(ValueError):
        Attempt(capacity="spot", nodes=1, started_hours=0, stopped_hours=1, usd_per_hour=-1)


def test_a_summary_without_stages_has_nothing_to_check() -> None:
    # GIVEN a run summary that carries no stages (e.g. a ledger roll-up)
    summary = {"cost_usd": 1.0, "on_demand_only_cost_usd": 4.0, "savings_pct": 75.0}

    # WHEN / THEN the check has nothing to disagree with
    assert check_run_report_costs(summary) == []


def test_hours_rounded_for_the_report_bill_the_whole_seconds_they_stand_for() -> None:
    # GIVEN the report's hours (6 decimals) of attempts of exactly 2,640 s and 14,460 s, which do not round evenly
    # WHEN / THEN EC2 bills those seconds, not one more for the rounding
    assert billed_seconds(0.033333, 0.766667) == 2640
    assert billed_seconds(2.483333, 6.5) == 14460
    # ... while a real fraction of a second is still rounded up to the billed second
    assert billed_seconds(0.0, 2640.5 / 3600) == 2641


def test_a_running_attempt_cost_so_far_is_taken_as_reported_but_must_be_a_cost() -> None:
    # GIVEN a run still running: its last attempt has started and not stopped, and has cost 1.53 so far
    report = copy.deepcopy(_run_report())
    running = report["stages"][2]["attempts"][0]
    running.update(stopped_hours=None, cost_usd=1.53)
    report["cost_usd"] = round(28.7742 - 0.0102 + 1.53, 6)
    report["savings_pct"] = savings_pct(report["cost_usd"], report["on_demand_only_cost_usd"])

    # WHEN / THEN its figures check out, the cost so far counted in the run's sum
    assert check_run_report_costs(report) == []

    # ... and a cost so far that is no cost is named
    running["cost_usd"] = -1.0
    assert any("cost_usd so far -1.0" in problem for problem in check_run_report_costs(report))


def test_money_summed_over_no_attempts_is_a_float() -> None:
    # GIVEN a run that ended before any job was placed (no attempts), and a stage with no attempt
    # WHEN its cost and a stage's On-Demand-only hours are summed
    settled = settle_run([], [])
    hours = on_demand_only_hours({"name": "hpc", "status": "FAILED", "attempts": [], "compute_hours": 4.0})
    # THEN they are floats, as the report's JSON contract has them (0.0, not 0)
    assert isinstance(settled.cost_usd, float) and isinstance(hours, float)
