"""The run report built from the ledger (the design's contract): billed time, field types, and JSON output."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from spot_hpc.cost import check_run_report_costs, savings_pct
from spot_hpc.ledger import CANCEL_EARLIER_SUCCEEDED, CANCEL_RUN_ENDED, Attempt, Run, Stage
from spot_hpc.run_report import build_run_report, run_report_json

STARTED_AT = "2026-01-05T00:00:00Z"
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_clock(utc_clock) -> None:
    utc_clock.now = NOW


def _run(**changes: object) -> Run:
    # As the ledger reads it: whole numbers in float fields are floats again (test_run_outcome_notice checks it).
    run = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T12:00:00Z", 12.0, STARTED_AT, {"hpc": 4})
    for name, value in changes.items():
        setattr(run, name, value)
    return run


def _hpc_stage() -> Stage:
    return Stage("run-1", "hpc", 1, 4.0, False, 2, status="SUCCEEDED", attempt=1)


def _attempt(started_at: str | None, stopped_at: str | None, usd_per_hour: float = 2.72) -> Attempt:
    return Attempt(
        "run-1", "hpc", 1, "job-1", "hpc-queue", "on-demand", 2, STARTED_AT, usd_per_hour=usd_per_hour,
        status="SUCCEEDED" if stopped_at else "RUNNING", exit_code=0 if stopped_at else None,
        started_at=started_at, stopped_at=stopped_at,
    )  # fmt: skip


def test_an_attempt_is_billed_its_whole_seconds_though_its_hours_are_rounded() -> None:
    # GIVEN an attempt of exactly 4 h 01 min (14,460 s) whose start and stop hours do not round to 6 decimals evenly
    attempt = _attempt("2026-01-05T02:29:00Z", "2026-01-05T06:30:00Z")

    # WHEN the run report is built
    report = build_run_report(_run(status="SUCCEEDED"), [_hpc_stage()], [attempt], {"hpc": 2.72})

    # THEN EC2 bills 14,460 s, not 14,461: 2.72 $/h x 14,460 s / 3,600 = $10.925333
    row = report["stages"][0]["attempts"][0]
    assert row["started_hours"] == 2.483333 and row["stopped_hours"] == 6.5
    assert row["cost_usd"] == pytest.approx(10.925333, abs=1e-9)
    assert report["cost_usd"] == pytest.approx(10.925333, abs=1e-9)
    # ... and the report's own figures check out against its rounded hours
    assert check_run_report_costs(report) == []


def test_numbers_of_the_contract_are_json_floats_even_when_whole() -> None:
    # GIVEN a run whose deadline, stage hours and prices are whole numbers
    attempt = _attempt("2026-01-05T01:00:00Z", "2026-01-05T05:00:00Z", usd_per_hour=3.0)

    # WHEN its report is built and written as JSON
    report = build_run_report(_run(status="SUCCEEDED", finished_at="2026-01-05T06:00:00Z"), [_hpc_stage()],
                              [attempt], {"hpc": 3})  # fmt: skip
    document = json.loads(run_report_json(report))

    # THEN the contract's float fields are floats (12.0, not 12): typed consumers read one type
    assert isinstance(document["deadline_hours"], float) and document["deadline_hours"] == 12.0
    assert isinstance(document["finished_hours"], float)
    assert isinstance(document["stages"][0]["compute_hours"], float)
    assert isinstance(document["stages"][0]["on_demand_usd_per_hour"], float)
    row = document["stages"][0]["attempts"][0]
    for name in ("usd_per_hour", "cost_usd", "started_hours", "stopped_hours"):
        assert isinstance(row[name], float), name
    for name in ("cost_usd", "on_demand_only_cost_usd", "savings_pct"):
        assert isinstance(document[name], float), name
    assert isinstance(row["nodes"], int) and isinstance(row["exit_code"], int)


def test_a_run_still_in_progress_is_reported_so_far() -> None:
    # GIVEN a run whose HPC attempt has run 3 h of the 9 h since the run started, and is still running
    stage = Stage("run-1", "hpc", 1, 4.0, False, 2, status="RUNNING", attempt=1)
    attempt = _attempt("2026-01-05T06:00:00Z", None)

    # WHEN its report is built now
    report = build_run_report(_run(), [stage], [attempt], {"hpc": 2.72})

    # THEN it is RUNNING, unfinished, its deadline not (yet) met, and costs what has run so far
    assert report["pipeline_status"] == "RUNNING"
    assert report["finished_hours"] is None and report["deadline_met"] is False
    assert report["stages"][0]["attempts"][0]["stopped_hours"] is None
    assert report["cost_usd"] == pytest.approx(2.72 * 3)
    # ... and checking its figures finds nothing wrong with the cost so far of the running attempt, billed up to when
    # the report was made
    assert report["as_of_hours"] == 9.0
    assert check_run_report_costs(report) == []


def test_the_cost_so_far_of_a_running_attempt_is_checked_against_when_the_report_was_made() -> None:
    # GIVEN the report of a run whose HPC attempt has run 3 h and is still running, with that attempt's cost so far
    # made a third lower (and the run's cost and savings with it)
    stage = Stage("run-1", "hpc", 1, 4.0, False, 2, status="RUNNING", attempt=1)
    report = build_run_report(_run(), [stage], [_attempt("2026-01-05T06:00:00Z", None)], {"hpc": 2.72})
    report["stages"][0]["attempts"][0]["cost_usd"] = report["cost_usd"] = 2.72 * 2
    report["savings_pct"] = savings_pct(report["cost_usd"], report["on_demand_only_cost_usd"])

    # WHEN its figures are checked, and those of the same report without the time it was made (made before reports
    # said it)
    problems = check_run_report_costs(report)
    undated = {key: value for key, value in report.items() if key != "as_of_hours"}

    # THEN the attempt's cost is found short of the 3 h it was billed; only the undated report must take it as told
    assert any("stage hpc attempt 0" in problem for problem in problems), problems
    assert check_run_report_costs(undated) == []


def test_an_empty_run_reports_zeros() -> None:
    # GIVEN a run with no stages or attempts yet
    # WHEN its report is built
    report = build_run_report(_run(), [], [], {})

    # THEN every figure is present and zero, and the JSON is strict
    assert (report["cost_usd"], report["on_demand_only_cost_usd"], report["savings_pct"]) == (0.0, 0.0, 0.0)
    assert report["stages"] == [] and report["interruptions"] == 0 and report["requeues_to_on_demand"] == 0
    assert json.loads(run_report_json(report))["savings_pct"] == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_report_json_never_writes_nan_or_infinity(bad: float) -> None:
    # GIVEN a report that somehow holds a non-finite number
    report = {"pipeline_status": "SUCCEEDED", "stages": [{"attempts": [{"cost_usd": bad}]}]}

    # WHEN / THEN it is refused rather than written as JSON no strict parser reads
    with pytest.raises(ValueError, match="not a finite number"):
        run_report_json(report)


# ------------------------------------------------------------------ the On-Demand-only base of the savings
def _stage_attempt(stage: str, number: int, capacity: str, start: str, stop: str | None, **fields: object) -> Attempt:
    status = fields.pop("status", "SUCCEEDED" if stop else "RUNNING")
    nodes = int(fields.pop("nodes", 1))  # type: ignore[call-overload]
    return Attempt(
        "run-1", stage, number, f"job-{stage}-{number}", f"{capacity}-queue", capacity, nodes, STARTED_AT,
        usd_per_hour=(1.0 if capacity == "on-demand" else 0.3) * nodes, status=status, started_at=start,
        stopped_at=stop, **fields,
    )  # type: ignore[arg-type]  # fmt: skip


PRICES = {"preprocess": 1.0, "hpc": 1.0, "postprocess": 1.0}


def _stages(*statuses: str) -> list[Stage]:
    """preprocess, hpc and postprocess declared at 2, 4 and 2 hours, with these statuses."""
    hours = {"preprocess": 2.0, "hpc": 4.0, "postprocess": 2.0}
    return [
        Stage("run-1", name, order, hours[name], True, 1, status=status)
        for order, (name, status) in enumerate(zip(hours, statuses, strict=True))
    ]


def test_an_uninterrupted_on_demand_run_faster_than_declared_saved_nothing() -> None:
    # GIVEN every stage run once on On-Demand, uninterrupted, in half its declared hours (1 + 2 + 1 h at $1/h)
    attempts = [
        _stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z"),
        _stage_attempt("hpc", 1, "on-demand", "2026-01-05T01:00:00Z", "2026-01-05T03:00:00Z"),
        _stage_attempt("postprocess", 1, "on-demand", "2026-01-05T03:00:00Z", "2026-01-05T04:00:00Z"),
    ]
    run = _run(status="SUCCEEDED", finished_at="2026-01-05T04:00:00Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"), attempts, PRICES)

    # THEN the On-Demand-only base is what the stages took, not the 8 h declared: nothing saved
    assert [stage["on_demand_only_hours"] for stage in report["stages"]] == [1.0, 2.0, 1.0]
    assert (report["cost_usd"], report["on_demand_only_cost_usd"], report["savings_pct"]) == (4.0, 4.0, 0.0)
    assert check_run_report_costs(report) == []


def test_an_uninterrupted_on_demand_run_saves_nothing_whatever_its_stages_cost_to_the_micro_dollar() -> None:
    # GIVEN every stage run once on On-Demand, uninterrupted, at $0.68/h: 60 s, 600 s and 60 s, each stage's cost
    # ($0.011333..., $0.113333..., $0.011333...) rounded down to the micro-dollar
    stages = _stages("SUCCEEDED", "SUCCEEDED", "SUCCEEDED")
    attempts = [
        replace(_stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T00:01:00Z"),
                usd_per_hour=0.68),
        replace(_stage_attempt("hpc", 1, "on-demand", "2026-01-05T00:01:00Z", "2026-01-05T00:11:00Z"),
                usd_per_hour=0.68),
        replace(_stage_attempt("postprocess", 1, "on-demand", "2026-01-05T00:11:00Z", "2026-01-05T00:12:00Z"),
                usd_per_hour=0.68),
    ]  # fmt: skip
    run = _run(status="SUCCEEDED", finished_at="2026-01-05T00:12:00Z")

    # WHEN its report is built
    report = build_run_report(run, stages, attempts, dict.fromkeys(PRICES, 0.68))

    # THEN its On-Demand-only base is its cost, to the micro-dollar, and it saved nothing: not $0.000001, 0.01%
    assert report["on_demand_only_cost_usd"] == report["cost_usd"] == 0.135999
    assert (report["savings_usd"], report["savings_pct"]) == (0.0, 0.0)
    assert check_run_report_costs(report) == []


def test_a_stage_finished_by_an_attempt_resumed_from_a_checkpoint_counts_its_declared_hours() -> None:
    # GIVEN an hpc stage reclaimed on Spot after an hour and finished on On-Demand from its checkpoint
    attempts = [
        _stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T02:00:00Z"),
        _stage_attempt("hpc", 1, "spot", "2026-01-05T02:00:00Z", "2026-01-05T03:00:00Z", status="FAILED",
                       failure_class="spot_reclaim"),
        _stage_attempt("hpc", 2, "on-demand", "2026-01-05T03:10:00Z", "2026-01-05T06:10:00Z",
                       resumed_from_checkpoint=True),
        _stage_attempt("postprocess", 1, "spot", "2026-01-05T06:10:00Z", "2026-01-05T08:10:00Z"),
    ]  # fmt: skip
    run = _run(status="SUCCEEDED", finished_at="2026-01-05T08:10:00Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"), attempts, PRICES)

    # THEN the resumed attempt did only the rest of hpc, so hpc counts its declared 4 h; the others what they took
    assert [stage["on_demand_only_hours"] for stage in report["stages"]] == [2.0, 4.0, 2.0]
    assert report["on_demand_only_cost_usd"] == 8.0 and check_run_report_costs(report) == []


def test_a_failed_run_saves_only_on_what_it_ran() -> None:
    # GIVEN preprocess failing after half an hour on Spot ($0.30/h, $1/h On-Demand), the later stages never reached
    failed = _stage_attempt("preprocess", 1, "spot", "2026-01-05T00:00:00Z", "2026-01-05T00:30:00Z", status="FAILED",
                            exit_code=3, failure_class="application_error")  # fmt: skip
    run = _run(status="FAILED", finished_at="2026-01-05T00:30:00Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("FAILED", "PENDING", "PENDING"), [failed], PRICES)

    # THEN the base is the same half hour on On-Demand, not the 8 h of stages it never ran (99% "saved")
    assert [stage["on_demand_only_hours"] for stage in report["stages"]] == [0.5]
    # AND the stages it never reached are named apart, so that every stage listed SUCCEEDED or FAILED (the contract)
    assert [stage["status"] for stage in report["stages"]] == ["FAILED"]
    assert report["stages_not_run"] == ["hpc", "postprocess"]
    assert (report["cost_usd"], report["on_demand_only_cost_usd"], report["savings_pct"]) == (0.15, 0.5, 70.0)
    assert check_run_report_costs(report) == []


def test_a_running_run_saves_so_far_on_what_it_ran_so_far() -> None:
    # GIVEN a run nine hours in on On-Demand only: preprocess done in 2 h, hpc running for 7 h (declared 4 h)
    attempts = [
        _stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T02:00:00Z"),
        _stage_attempt("hpc", 1, "on-demand", "2026-01-05T02:00:00Z", None),
    ]

    # WHEN its report is built
    report = build_run_report(_run(), _stages("SUCCEEDED", "RUNNING", "PENDING"), attempts, PRICES)

    # THEN the base is what ran so far, on On-Demand: nothing saved so far (all three stages' declared 8 h would have
    # told -12.5%)
    assert report["as_of_hours"] == 9.0 and report["stages_not_run"] == []
    assert [stage["on_demand_only_hours"] for stage in report["stages"]] == [2.0, 7.0, 0.0]
    assert (report["cost_usd"], report["on_demand_only_cost_usd"], report["savings_pct"]) == (9.0, 9.0, 0.0)
    # AND a report that changed the base is caught
    assert check_run_report_costs(report) == []
    assert check_run_report_costs({**report, "on_demand_only_cost_usd": 8.0})


def test_a_failed_array_counts_its_shards_instance_time_not_its_span() -> None:
    # GIVEN a 4-shard Spot array failed after a 3 h span in which its shards ran an hour each (4 instance-hours)
    array = _stage_attempt("preprocess", 1, "spot", "2026-01-05T00:00:00Z", "2026-01-05T03:00:00Z", status="FAILED",
                           failure_class="application_error", nodes=4, instance_seconds=4 * 3600)  # fmt: skip
    run = _run(status="FAILED", finished_at="2026-01-05T03:00:00Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("FAILED", "PENDING", "PENDING"), [array], PRICES)

    # THEN both its cost ($0.30 an instance-hour) and its On-Demand-only base count the shards' hour each, not four
    # instances for 3 h
    assert report["stages"][0]["on_demand_only_hours"] == 1.0
    assert report["stages"][0]["attempts"][0]["cost_usd"] == pytest.approx(4 * 0.3, abs=1e-9)
    assert check_run_report_costs(report) == []


def test_an_uninterrupted_on_demand_array_saves_nothing_though_its_shards_average_no_whole_second() -> None:
    # GIVEN a 3-shard array run once on On-Demand ($1/h an instance), uninterrupted, its shards billed 400 s, 300 s and
    # 301 s on their instances: 1,001 s, an average of 333.67 s a shard
    array = _stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T00:06:40Z", nodes=3,
                           instance_seconds=1001, run_seconds=1001)  # fmt: skip
    run = _run(status="SUCCEEDED", finished_at="2026-01-05T00:06:40Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("SUCCEEDED", "PENDING", "PENDING")[:1], [array], {"preprocess": 3.0})

    # THEN its On-Demand-only base is the 1,001 s its shards were billed, as its cost, not three shards of 334 s each
    # (1,002 s): nothing saved
    assert report["stages"][0]["on_demand_only_hours"] == round(1001 / 3 / 3600, 6)
    assert report["on_demand_only_cost_usd"] == report["cost_usd"] == round(1001 / 3600, 6)
    assert (report["savings_usd"], report["savings_pct"]) == (0.0, 0.0)
    assert check_run_report_costs(report) == []


def test_a_failed_array_counts_in_its_on_demand_only_base_the_shards_that_were_not_billed() -> None:
    # GIVEN a 4-shard Spot array ($0.30 an instance-hour) failed after its shards ran an hour each, one of them on an
    # instance EC2 interrupted within its first hour: 3 instance-hours billed, 4 run
    array = _stage_attempt("preprocess", 1, "spot", "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", status="FAILED",
                           failure_class="spot_reclaim", nodes=4, instance_seconds=3 * 3600,
                           run_seconds=4 * 3600)  # fmt: skip
    run = _run(status="FAILED", finished_at="2026-01-05T01:00:00Z")

    # WHEN its report is built
    report = build_run_report(run, _stages("FAILED", "PENDING", "PENDING"), [array], PRICES)

    # THEN its cost is the 3 instance-hours billed, and its On-Demand-only base the hour all four shards ran ($1/h
    # for the stage's nodes), which On-Demand would have billed in full: $0.90 saves 10% of $1, where the billed
    # 45 minutes alone ($0.75) would tell a 20% loss
    row = report["stages"][0]["attempts"][0]
    assert (row["instance_seconds"], row["run_seconds"]) == (3 * 3600, 4 * 3600)
    assert row["cost_usd"] == pytest.approx(0.9, abs=1e-9)
    assert report["stages"][0]["on_demand_only_hours"] == 1.0
    assert (report["cost_usd"], report["on_demand_only_cost_usd"], report["savings_pct"]) == (0.9, 1.0, 10.0)
    assert check_run_report_costs(report) == []
    # AND a report written before `run_seconds` was told, with `instance_seconds` alone, checks out as it was made
    del row["run_seconds"]
    report["stages"][0]["on_demand_only_hours"] = 0.75
    report.update(on_demand_only_cost_usd=0.75, savings_usd=-0.15, savings_pct=-20.0)
    assert check_run_report_costs(report) == []


def test_only_prices_a_figure_needed_are_counted_unknown() -> None:
    # GIVEN a run nine hours in: preprocess done in 2 h on On-Demand, placed while prices were down; hpc's first
    # attempt placed so too and cancelled before it got an instance, its second running; no On-Demand price known
    # for any stage, postprocess not reached yet
    attempts = [
        _stage_attempt("preprocess", 1, "on-demand", "2026-01-05T00:00:00Z", "2026-01-05T02:00:00Z",
                       price_unknown=True),
        _stage_attempt("hpc", 1, "spot", None, "2026-01-05T02:30:00Z", status="FAILED", price_unknown=True,
                       failure_class="cancelled_by_control_plane"),
        _stage_attempt("hpc", 2, "on-demand", "2026-01-05T02:40:00Z", None),
    ]  # fmt: skip
    prices = dict.fromkeys(PRICES)

    # WHEN its report is built
    report = build_run_report(_run(), _stages("SUCCEEDED", "RUNNING", "PENDING"), attempts, prices)

    # THEN the unknown prices counted are those a figure stood on: the attempt that ran, and the bases of the two
    # stages that count hours; not the attempt that never ran nor postprocess's base (each counts for nothing)
    assert [stage["on_demand_only_hours"] for stage in report["stages"]] == [2.0, pytest.approx(6 + 1 / 3), 0.0]
    assert report["prices_unknown"] == 3


@pytest.mark.parametrize(
    "uncharged",
    [{"interrupted_in_first_hour": True}, {"nodes": 4, "instance_seconds": 0, "run_seconds": 4 * 1200}],
    ids=["single-job", "array-every-shard"],
)
def test_a_price_unknown_of_an_attempt_aws_does_not_charge_is_not_counted(uncharged: dict[str, Any]) -> None:
    # GIVEN a run whose preprocess was placed on Spot while its price could not be looked up, and whose instance (or
    # each shard's) EC2 interrupted 20 minutes in (within its first hour: AWS charges nothing for it), then finished
    # on On-Demand
    reclaimed = _stage_attempt(
        "preprocess", 1, "spot", "2026-01-05T00:00:00Z", "2026-01-05T00:20:00Z", status="FAILED",
        failure_class="spot_reclaim", **uncharged,
    )  # fmt: skip
    attempts = [
        replace(reclaimed, usd_per_hour=0.0, price_unknown=True),
        _stage_attempt("preprocess", 2, "on-demand", "2026-01-05T00:30:00Z", "2026-01-05T02:30:00Z"),
    ]

    # WHEN its report is built
    report = build_run_report(_run(), _stages("SUCCEEDED", "PENDING", "PENDING"), attempts, PRICES)

    # THEN the Spot attempt costs nothing whatever its price, so no figure stands on the price that is unknown: the
    # notice must not say the cost counts a price it could not look up as $0
    assert report["stages"][0]["attempts"][0]["cost_usd"] == 0.0
    assert report["prices_unknown"] == 0


@pytest.mark.parametrize(
    ("cancel_reason", "started_at", "requeues"),
    [
        (None, "2026-01-05T02:40:00Z", 1),
        (CANCEL_EARLIER_SUCCEEDED, None, 0),
        (CANCEL_RUN_ENDED, None, 0),
        (CANCEL_RUN_ENDED, "2026-01-05T02:40:00Z", 1),
    ],
    ids=["ran", "earlier-succeeded-before-it-ran", "run-ended-before-it-ran", "run-ended-while-it-ran"],
)
def test_a_requeue_counts_only_when_its_on_demand_attempt_took_the_work(
    cancel_reason: str | None, started_at: str | None, requeues: int
) -> None:
    # GIVEN a Spot preprocess followed by an On-Demand attempt (the deadline at risk), which was either run, or ended
    # as it was placed because the stage settled meanwhile (the Spot job succeeded after all, or the run ended)
    attempts = [
        _stage_attempt("preprocess", 1, "spot", "2026-01-05T00:00:00Z", "2026-01-05T02:30:00Z"),
        replace(
            _stage_attempt("preprocess", 2, "on-demand", "2026-01-05T02:40:00Z", "2026-01-05T02:45:00Z"),
            status="FAILED",
            cancel_reason=cancel_reason,
            started_at=started_at,
        ),
    ]

    # WHEN its report is built
    report = build_run_report(_run(), _stages("SUCCEEDED", "PENDING", "PENDING"), attempts, PRICES)

    # THEN an attempt that never ran moved no work: the report counts no requeue for it (the notices told none)
    assert report["requeues_to_on_demand"] == requeues
