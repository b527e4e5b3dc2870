"""The whole pipeline offline: upload -> preprocess (Spot, reclaimed, resumed) -> HPC multi-node -> postprocess."""

from __future__ import annotations

import json

import pytest
from spot_hpc.cost import check_run_report_costs
from spot_hpc.pipeline import build_run_options
from spot_hpc.pricing import DataFilePriceBook
from template_grants import source_template

from spotctl.cli import main
from spotctl.offline.demo import DemoOptions, format_summary, run_demo
from spotctl.offline.runtime import OfflineControlPlane
from spotctl.offline.stack import REPO_ROOT

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


def test_each_attempt_is_billed_for_the_instance_type_its_compute_environment_launched(demo_run):
    # GIVEN the run's report, and the stack's instance types (the first of each compute environment's list)
    report, _ = demo_run
    parameters = source_template()["Parameters"]
    first = {name: parameters[name]["Default"].split(",")[0] for name in ("SpotInstanceTypes", "HpcInstanceTypes")}
    book = DataFilePriceBook.from_data_dir(REPO_ROOT / "data")
    # WHEN / THEN the multi-node HPC stage ran and is billed on the HPC type, both nodes at its On-Demand price, and
    # every Spot attempt that ran on the Spot type
    hpc = report["stages"][1]["attempts"][-1]
    assert hpc["instance_type"] == first["HpcInstanceTypes"]
    assert hpc["usd_per_hour"] == pytest.approx(2 * book.on_demand_usd_per_hour(first["HpcInstanceTypes"], "us-east-1"))
    ran_on_spot = [a for s in report["stages"] for a in s["attempts"] if a["capacity"] == "spot" and a["started_hours"]]
    assert ran_on_spot and all(a["instance_type"] == first["SpotInstanceTypes"] for a in ran_on_spot)


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


def test_a_spot_attempt_reclaimed_in_its_instances_first_hour_is_not_charged_and_the_summary_says_so(demo_run):
    # GIVEN the run's report: preprocess's first Spot instance was reclaimed 46 minutes into the run
    report, timeline = demo_run
    first = report["stages"][0]["attempts"][0]
    # WHEN the demo prints its summary
    text = format_summary(report, timeline)
    # THEN that attempt costs nothing (AWS does not charge for it), and its line says why
    assert first["interrupted_in_first_hour"] is True and first["cost_usd"] == 0
    assert first["stopped_hours"] - first["started_hours"] < 1
    line = next(line for line in text.splitlines() if line.split()[:4] == ["preprocess", "spot", "x1", "FAILED"])
    assert line.split()[6] == "0.00" and "not charged: EC2 interrupted the instance in its first hour" in line


def test_summary_tells_savings_of_a_succeeded_run_only_and_never_rounds_them_wrong(demo_run):
    # GIVEN the run's report, and the same report as if the run had failed, or had cost a hair more than On-Demand
    report, timeline = demo_run

    def cost_line(changes: dict) -> str:
        text = format_summary({**report, **changes}, timeline)
        return next(line for line in text.splitlines() if line.startswith("Cost $"))

    # WHEN / THEN the succeeded run tells what it saved; a failed one its cost only, as its notice does; a tiny
    # loss is not "-0.0% saved"
    assert cost_line({}).endswith(f"(saved {report['savings_pct']:.1f}%)")
    assert cost_line({"pipeline_status": "FAILED"}).endswith("(the run failed: no savings to tell)")
    assert cost_line({"savings_pct": -0.04}).endswith("(<0.1% more than On-Demand only)")


def test_summary_never_rounds_a_missed_deadline_onto_it(demo_run):
    # GIVEN the run's report, as if the run had finished 10 seconds after its deadline
    report, timeline = demo_run
    late = {"finished_hours": report["deadline_hours"] + 10 / 3600, "deadline_met": False}
    # WHEN the demo prints its summary
    text = format_summary({**report, **late}, timeline)
    # THEN its hours are past the deadline, as the run's notice shows them, not the deadline's own
    line = next(line for line in text.splitlines() if line.startswith("Pipeline "))
    deadline = report["deadline_hours"]
    assert line.endswith(f"in {deadline + 0.01:.2f} h of {deadline:g} h: deadline MISSED")


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


def test_upload_metadata_carries_the_hours_exactly():
    # GIVEN a deadline and stage hours with more digits than `:g` keeps
    options = DemoOptions(deadline_hours=12.3456789, stage_hours={"preprocess": 0.1234567, "hpc": 1 / 3})
    # WHEN the control plane reads the run options from the demo's upload metadata
    run_options = build_run_options(None, options.upload_metadata(), 1.0, 2)
    # THEN it gets the very same hours, not rounded to six significant digits
    assert run_options.deadline_hours == 12.3456789
    assert run_options.stage_hours["preprocess"] == 0.1234567 and run_options.stage_hours["hpc"] == 1 / 3


def test_a_run_shorter_than_the_start_delays_is_run_to_its_end(tmp_path, capsys):
    # GIVEN stages and a deadline of seconds: 3 x the deadline and the stage hours add up to less than the minutes
    # an On-Demand job takes to start
    report_path = tmp_path / "run.json"
    # WHEN the demo runs them
    code = main(["demo", "--stage-hours", "preprocess=0.001,hpc=0.001,postprocess=0.001", "--deadline-hours", "0.01",
                 "--json", str(report_path)])  # fmt: skip
    # THEN virtual time runs until the pipeline has ended, and every stage ran
    report = json.loads(report_path.read_text())
    assert code == 0
    assert report["pipeline_status"] == "SUCCEEDED"
    assert [s["status"] for s in report["stages"]] == ["SUCCEEDED"] * 3


def test_a_run_cut_off_by_the_horizon_is_an_error_with_its_report(tmp_path, capsys, monkeypatch):
    # GIVEN a runtime whose virtual time never moves, so that the run cannot end before the horizon
    monkeypatch.setattr(OfflineControlPlane, "run_until_settled", lambda self, max_hours: "RUNNING")
    report_path = tmp_path / "run.json"
    # WHEN the demo runs
    code = main(["demo", "--json", str(report_path)])
    # THEN it exits non-zero, saying that the run had not ended, and still writes the report of the run so far
    assert code == 1
    assert "had not ended" in capsys.readouterr().err
    assert json.loads(report_path.read_text())["pipeline_status"] == "RUNNING"
