"""Every state of the pipeline's ASL runs, on a run that succeeds and on one whose HPC code is broken; and
duplicated or reordered Batch events lead to one action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from offline_runs import QUICK_STAGES
from template_grants import refused_calls

from spotctl.offline.runtime import OfflineControlPlane

pytestmark = pytest.mark.e2e
ASL = json.loads(Path("statemachines/pipeline.asl.json").read_text())
APPLICATION_BUG_EXIT_CODE = 3


def _entered_states(plane: OfflineControlPlane) -> set[str]:
    execution = plane.executions()[0]
    return {
        event["stateEnteredEventDetails"]["name"]
        for event in plane.history(execution["executionArn"])
        if "stateEnteredEventDetails" in event
    }


@pytest.fixture(scope="module")
def succeeded_states():
    # GIVEN a quick run with Spot capacity from the start (hour 75 of the default trace)
    with OfflineControlPlane(start_hour=75.0, stage_hours=QUICK_STAGES) as plane:
        plane.upload("incoming/ok.csv", b"a\n1\n", {"deadline-hours": "6"})
        status = plane.run_until_settled(max_hours=12)
        return status, _entered_states(plane), plane.aws_calls.actions, plane.stack.translated


@pytest.fixture(scope="module")
def failed_plane():
    # GIVEN a run whose HPC workload exits with an application error on every attempt
    with OfflineControlPlane(
        start_hour=75.0, stage_hours=QUICK_STAGES, failing_stages={"hpc": APPLICATION_BUG_EXIT_CODE}
    ) as plane:
        plane.upload("incoming/broken.csv", b"a\n1\n", {"deadline-hours": "6"})
        plane.run_until_settled(max_hours=12)
        yield plane


def test_every_state_of_the_asl_is_executed(succeeded_states, failed_plane):
    status, entered, _, _ = succeeded_states
    assert status == "SUCCEEDED"
    # THEN the two runs together entered every state of the definition
    assert entered | _entered_states(failed_plane) == set(ASL["States"])


def test_application_error_spends_the_retry_budget_then_fails_the_pipeline(failed_plane):
    from spotctl.offline.demo import control_plane_services

    # WHEN the HPC stage fails every time
    svc = control_plane_services(failed_plane)
    run = svc.ledger.list_runs()[0]
    stages, attempts = svc.ledger.get_run_items(run.run_id)
    hpc_attempts = [a for a in attempts if a.stage == "hpc"]
    # THEN it was retried exactly its budget, each failure classed as an application error, and the run failed
    budget = next(s for s in stages if s.stage == "hpc").retry_budget
    assert len(hpc_attempts) == budget + 1
    assert {a.failure_class for a in hpc_attempts} == {"application_error"}
    assert {a.exit_code for a in hpc_attempts} == {APPLICATION_BUG_EXIT_CODE}
    assert failed_plane.executions()[0]["status"] == "FAILED"
    # The failure's cause (SendTaskFailure) reaches the run's record through the state machine's Catch.
    assert run.status == "FAILED" and "StageFailed" in (run.error or "")
    assert f"exit code {APPLICATION_BUG_EXIT_CODE}" in (run.error or "")
    assert "postprocess" not in {a.stage for a in attempts}
    sent = [m.get("text") or "" for m in failed_plane.webhook.delivered_messages]
    assert any(text.startswith("Pipeline failed") for text in sent)


def test_duplicated_and_reordered_batch_events_change_nothing(failed_plane):
    from spotctl.offline.demo import control_plane_services
    from spotctl.offline.eventbus import make_event

    svc = control_plane_services(failed_plane)
    run = svc.ledger.list_runs()[0]
    _, before = svc.ledger.get_run_items(run.run_id)
    last = max((a for a in before if a.stage == "hpc"), key=lambda a: a.attempt)
    described = failed_plane.batch.describe([last.job_id])[0]
    # GIVEN the job's final FAILED event again, and a RUNNING event arriving after it
    duplicate = make_event("aws.batch", "Batch Job State Change", described)
    stale = make_event("aws.batch", "Batch Job State Change", {**described, "status": "RUNNING"})
    # WHEN both are delivered through the template's rule
    results = [failed_plane.invoke("BatchStateChangeFunction", event)[0] for event in (duplicate, stale)]
    # THEN both are ignored: no new attempt, no new submission, the attempt keeps its final state
    assert [r["status"] for r in results] == ["ignored", "ignored"]
    _, after = svc.ledger.get_run_items(run.run_id)
    assert len(after) == len(before)
    assert svc.ledger.get_attempt(run.run_id, "hpc", last.attempt).status == "FAILED"  # type: ignore[union-attr]


def test_every_aws_call_a_handler_makes_is_allowed_by_its_role(succeeded_states, failed_plane):
    # GIVEN the AWS calls every handler made on both runs (the offline runtime records them as IAM actions)
    _, _, succeeded_calls, template = succeeded_states
    calls = {fn: set(actions) for fn, actions in succeeded_calls.items()}
    for fn, actions in failed_plane.aws_calls.actions.items():
        calls.setdefault(fn, set()).update(actions)
    assert {
        "StartPipelineFunction",
        "StageRunnerFunction",
        "BatchStateChangeFunction",
        "SlaGuardFunction",
        "NotifyFunction",
    } <= set(calls)
    # AND a read of one version of an object is recorded as its own action (the upload's, headed by its version id)
    assert "s3:GetObjectVersion" in calls["StartPipelineFunction"]
    # WHEN each is checked against the role template.yaml gives the function
    missing = refused_calls(template, calls)
    # THEN nothing a deployed handler would do is refused by IAM
    assert missing == {}


def test_report_reads_the_deployed_stacks_ledger(failed_plane, tmp_path, capsys):
    from spotctl.cli import main

    # GIVEN the (offline) stack with its failed run in the ledger
    plot = tmp_path / "cost.png"
    # WHEN the report is asked of the stack, and of a stack that does not exist
    code = main(["report", "--stack", "spot-hpc", "--plot", str(plot)])
    printed = capsys.readouterr().out
    missing = main(["report", "--stack", "no-such-stack"])
    # THEN the run is in the table, the chart is written, and the unknown stack is a clear error
    run_id = failed_plane.executions()[0]["name"]
    assert code == 0 and run_id in printed
    assert plot.stat().st_size > 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert missing == 2 and "no-such-stack" in capsys.readouterr().err
