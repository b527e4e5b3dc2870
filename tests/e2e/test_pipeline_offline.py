"""The whole pipeline offline: upload -> preprocess (Spot, reclaimed, resumed) -> HPC multi-node -> postprocess."""

from __future__ import annotations

import pytest
from spot_hpc.cost import check_run_report_costs

from spotctl.offline.demo import DemoOptions, format_summary, run_demo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run():
    # GIVEN a trace whose Spot capacity drops 46 minutes into the run, and a tight 12-hour deadline
    return run_demo(
        DemoOptions(
            start_hour=75.0, deadline_hours=12.0, stage_hours={"preprocess": 2.0, "hpc": 4.0, "postprocess": 1.0}
        )
    )


def test_pipeline_succeeds_by_its_deadline(demo_run):
    report, _ = demo_run
    assert report["pipeline_status"] == "SUCCEEDED"
    assert report["deadline_met"] is True
    assert [s["status"] for s in report["stages"]] == ["SUCCEEDED"] * 3


def test_reclaimed_preprocess_resumes_from_checkpoint(demo_run):
    report, _ = demo_run
    attempts = report["stages"][0]["attempts"]
    assert attempts[0]["capacity"] == "spot" and attempts[0]["status"] == "FAILED"
    assert attempts[-1]["status"] == "SUCCEEDED" and attempts[-1]["resumed_from_checkpoint"] is True
    assert report["interruptions"] >= 1


def test_hpc_runs_multinode_on_the_hpc_queue_only(demo_run):
    report, _ = demo_run
    hpc = report["stages"][1]["attempts"]
    assert hpc and hpc[-1]["status"] == "SUCCEEDED"
    assert all(a["capacity"] == "on-demand" and a["nodes"] == 2 and "HpcJobQueue" in a["queue"] for a in hpc)


def test_tight_deadline_requeues_to_on_demand_and_is_notified(demo_run):
    report, _ = demo_run
    assert report["requeues_to_on_demand"] >= 1
    kinds = {(n["channel"], n["kind"]) for n in report["notifications"]}
    assert {("slack", "started"), ("slack", "interrupted"), ("slack", "requeued"), ("slack", "succeeded")} <= kinds


def test_report_costs_recompute_from_attempts(demo_run):
    report, _ = demo_run
    assert check_run_report_costs(report) == []
    assert 0 < report["cost_usd"] < report["on_demand_only_cost_usd"]


def test_summary_says_why_each_attempt_ended(demo_run):
    # GIVEN the run's report and timeline / WHEN the demo prints its summary
    report, timeline = demo_run
    text = format_summary(report, timeline)
    # THEN a reclaimed attempt is named by its class, not only by Batch's words, and hours read alike
    reclaimed = next(line for line in text.splitlines() if line.split()[:4] == ["preprocess", "spot", "x1", "FAILED"])
    assert "checkpointed_interruption: Essential container in task exited" in reclaimed
    assert f"{report['finished_hours']:.2f} h of {report['deadline_hours']:g} h: deadline met" in text


def test_summary_says_resumed_only_of_attempts_that_ran(demo_run):
    # GIVEN the run's report, with attempts that ran from a checkpoint and, in this run, one cancelled before it ran
    report, timeline = demo_run
    attempts = [a for stage in report["stages"] for a in stage["attempts"]]
    # WHEN the demo prints its summary
    table = format_summary(report, timeline).split("why it ended", 1)[1]
    rows = [line.split() for line in table.splitlines() if "  x" in line]
    # THEN "yes" stands only in the rows of attempts that started, from a checkpoint
    resumed = [a["resumed_from_checkpoint"] and a["started_hours"] is not None for a in attempts]
    assert len(rows) == len(attempts) and any(resumed)
    assert ["yes" in row for row in rows] == resumed
    assert any(a["started_hours"] is None and a["resumed_from_checkpoint"] for a in attempts)
