"""A settled run's figures as CloudWatch EMF metrics (Powertools)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from spot_hpc import metrics as run_metrics


@pytest.fixture
def powertools_metrics() -> Iterator[Any]:
    metrics = run_metrics.new_metrics()
    metrics.clear_metrics()  # Powertools keeps metrics at class level: start and end clean
    yield metrics
    metrics.clear_metrics()


def _value(blob: dict[str, Any], name: str) -> float:
    """EMF holds a metric's values as a list when Powertools serialises them."""
    value = blob[name]
    assert not isinstance(value, list) or len(value) == 1
    return float(value[0] if isinstance(value, list) else value)


def _report() -> dict[str, Any]:
    return {
        "run_id": "run-3",
        "pipeline_status": "SUCCEEDED",
        "deadline_met": False,
        "stages": [
            {"name": "preprocess", "attempts": [
                {"capacity": "spot", "nodes": 1, "started_hours": 0.0, "stopped_hours": 0.5, "usd_per_hour": 1,
                 "status_reason": "Host EC2 (instance i-1) terminated.", "failure_class": "spot_reclaim"},
                {"capacity": "on-demand", "nodes": 1, "started_hours": 0.75, "stopped_hours": 1.5, "usd_per_hour": 2,
                 "status_reason": ""},
            ]},
            {"name": "hpc", "attempts": []},
        ],
        "interruptions": 2,
        "requeues_to_on_demand": 1,
        "cost_usd": 2.0,
        "on_demand_only_cost_usd": 5.0,
        "savings_pct": 60.0,
    }  # fmt: skip


def test_settled_run_is_recorded_as_emf(powertools_metrics: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a settled run that missed its deadline after a reclaim and a requeue
    report = _report()

    # WHEN its figures are recorded and the run-level metrics serialised
    run_metrics.record_settled_run(powertools_metrics, report)
    blob = powertools_metrics.serialize_metric_set()

    # THEN the run-level metrics carry the report's figures under the namespace and service dimension
    directive = blob["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == run_metrics.NAMESPACE
    assert directive["Dimensions"] == [[run_metrics.SERVICE_DIMENSION]]
    assert blob[run_metrics.SERVICE_DIMENSION] == run_metrics.SERVICE
    assert _value(blob, run_metrics.DEADLINES_MISSED) == 1.0 and _value(blob, run_metrics.DEADLINES_MET) == 0.0
    assert _value(blob, run_metrics.PIPELINES_SUCCEEDED) == 1.0 and _value(blob, run_metrics.PIPELINES_FAILED) == 0.0
    assert _value(blob, run_metrics.SPOT_INTERRUPTIONS) == 2.0
    assert _value(blob, run_metrics.SPOT_RECLAIMS) == 1.0
    assert _value(blob, run_metrics.REQUEUES_TO_ON_DEMAND) == 1.0
    assert _value(blob, run_metrics.RUN_COST_USD) == 2.0
    assert _value(blob, run_metrics.ON_DEMAND_ONLY_COST_USD) == 5.0
    assert _value(blob, run_metrics.SAVINGS_USD) == 3.0
    assert _value(blob, run_metrics.SAVINGS_PERCENT) == 60.0
    assert blob["run_id"] == "run-3"  # metadata, not a dimension

    # AND the stage duration went out as its own blob with a Stage dimension (only for stages that ran)
    stage_blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(stage_blobs) == 1
    stage_blob = stage_blobs[0]
    assert stage_blob[run_metrics.STAGE_DIMENSION] == "preprocess"
    assert _value(stage_blob, run_metrics.STAGE_DURATION_SECONDS) == 5400.0
    assert stage_blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == run_metrics.NAMESPACE


def test_reclaims_counted_from_the_report_when_given(powertools_metrics: Any) -> None:
    # GIVEN a report that counts its reclaims itself
    report = {**_report(), "reclaims": 4}

    # WHEN / THEN that count is used
    assert run_metrics.count_reclaims(report) == 4
    assert run_metrics.count_reclaims(_report()) == 1


def test_runs_the_guard_settles_are_counted_once_like_the_notify_functions(powertools_metrics: Any, capsys) -> None:
    from spot_hpc.outcome import Settlement, record_guard_pass

    # GIVEN a guard pass that settled two runs as failed, and met one already settled (counted before)
    failed = _report() | {"run_id": "run-4", "pipeline_status": "FAILED", "stages": []}
    settlements = [
        Settlement(failed, counted=True),
        Settlement(failed | {"run_id": "run-5", "cost_usd": 7.0}, counted=True),
        Settlement(_report(), counted=False),
    ]
    result = {"active_stages": 3, "deferred_stages": 1, "actions": [], "settlements": settlements}

    # WHEN the pass's outcome is recorded
    answer = record_guard_pass(powertools_metrics, result)
    blob = powertools_metrics.serialize_metric_set()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    # THEN each newly settled run went out as a record of its own, with its own run_id and cost, once
    assert [(r["run_id"], _value(r, run_metrics.RUN_COST_USD)) for r in records] == [("run-4", 2.0), ("run-5", 7.0)]
    assert all(_value(r, run_metrics.PIPELINES_FAILED) == 1.0 for r in records)
    assert all(_value(r, run_metrics.DEADLINES_MISSED) == 1.0 for r in records)
    # AND the pass's own figures stay for the handler's record, without any run's
    assert _value(blob, run_metrics.ACTIVE_STAGES) == 3.0 and _value(blob, run_metrics.DEFERRED_STAGES) == 1.0
    assert run_metrics.PIPELINES_FAILED not in blob and "run_id" not in blob
    # AND the handler answers with the three runs' summaries, not the settlements themselves
    assert [run["run_id"] for run in answer["settled_runs"]] == ["run-4", "run-5", "run-3"]
    assert "settlements" not in answer
    json.dumps(answer)


@pytest.mark.parametrize(
    ("unread", "active_counted"),
    [(["jobs"], 4.0), (["active stages"], None), (["active stages", "jobs"], None)],
)
def test_a_guard_pass_counts_what_it_could_not_read(powertools_metrics: Any, unread, active_counted) -> None:
    from spot_hpc.outcome import record_guard_pass

    # GIVEN a guard pass that could not read its active stages, or their jobs
    result = {"active_stages": 4 if active_counted else 0, "deferred_stages": 0, "actions": [], "unread": unread}

    # WHEN the pass's outcome is recorded
    record_guard_pass(powertools_metrics, result)
    blob = powertools_metrics.serialize_metric_set()

    # THEN the alarm's figure counts what it could not read, and active stages it did not read are not counted as none
    assert _value(blob, run_metrics.GUARD_UNREAD) == len(unread)
    assert (_value(blob, run_metrics.ACTIVE_STAGES) if run_metrics.ACTIVE_STAGES in blob else None) == active_counted


def test_a_guard_pass_that_read_all_counts_no_unread_source(powertools_metrics: Any) -> None:
    from spot_hpc.outcome import record_guard_pass

    # GIVEN a guard pass that read its active stages and their jobs
    result = {"active_stages": 2, "deferred_stages": 0, "actions": [], "unread": []}

    # WHEN the pass's outcome is recorded
    record_guard_pass(powertools_metrics, result)

    # THEN no unread source is counted (the alarm's metric is missing, not breaching)
    assert run_metrics.GUARD_UNREAD not in powertools_metrics.serialize_metric_set()


def test_a_failed_run_counts_its_cost_but_no_savings(powertools_metrics: Any) -> None:
    # GIVEN a failed run: its notice tells its cost only, not savings against stages it never ran
    report = _report() | {"pipeline_status": "FAILED", "cost_usd": 0.3, "savings_pct": 94.0}

    # WHEN its figures are recorded
    run_metrics.record_settled_run(powertools_metrics, report)
    blob = powertools_metrics.serialize_metric_set()

    # THEN its cost counts, and no savings or On-Demand-only baseline go to CloudWatch for it
    assert _value(blob, run_metrics.PIPELINES_FAILED) == 1.0
    assert _value(blob, run_metrics.RUN_COST_USD) == 0.3
    for name in (run_metrics.SAVINGS_PERCENT, run_metrics.SAVINGS_USD, run_metrics.ON_DEMAND_ONLY_COST_USD):
        assert name not in blob, name


def test_a_stage_whose_attempt_ran_to_the_run_s_end_lasts_until_that_end(
    powertools_metrics: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a run that failed at 10 h (its report billed as of then): preprocess succeeded at 1 h on On-Demand after
    # a Spot attempt whose end was never told; hpc was reclaimed on Spot at 3 h and was still on its On-Demand attempt,
    # from 3.2 h, when the run ended and terminated its job (whose own end is told later)
    report = _report() | {
        "pipeline_status": "FAILED",
        "as_of_hours": 10.0,
        "finished_hours": 10.0,
        "stages": [
            {"name": "preprocess", "status": "SUCCEEDED", "attempts": [
                {"capacity": "spot", "nodes": 1, "started_hours": 0.0, "stopped_hours": None, "usd_per_hour": 1},
                {"capacity": "on-demand", "nodes": 1, "started_hours": 0.2, "stopped_hours": 1.0, "usd_per_hour": 1},
            ]},
            {"name": "hpc", "status": "FAILED", "attempts": [
                {"capacity": "spot", "nodes": 1, "started_hours": 1.0, "stopped_hours": 3.0, "usd_per_hour": 1,
                 "failure_class": "spot_reclaim"},
                {"capacity": "on-demand", "nodes": 1, "started_hours": 3.2, "stopped_hours": None, "usd_per_hour": 2},
            ]},
        ],
    }  # fmt: skip

    # WHEN its figures are recorded
    run_metrics.record_settled_run(powertools_metrics, report)
    stage_blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    # THEN hpc lasted until the run's end, as its bill runs: 9 h, not the 2 h up to its reclaimed attempt's stop; and
    # preprocess until it succeeded, not the run's end
    durations = {
        blob[run_metrics.STAGE_DIMENSION]: _value(blob, run_metrics.STAGE_DURATION_SECONDS) for blob in stage_blobs
    }
    assert durations == {"preprocess": 3600.0, "hpc": 32400.0}
