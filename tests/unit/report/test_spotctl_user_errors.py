"""User errors of `spotctl` commands outside the policy simulator: a one-line message and exit code 2, never a
traceback, and output paths refused before a long run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from spot_hpc.ledger import Attempt, Ledger, Run, Stage

from spotctl.cli import main

EVENTS = Path(__file__).resolve().parents[3] / "events"


def _refuse_to_run(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    def run(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran although the command should have stopped before")

    monkeypatch.setattr(target, run)


@pytest.fixture
def no_aws_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No credentials anywhere botocore looks, and a fresh default session."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return monkeypatch


@pytest.mark.parametrize(
    ("region", "env", "message"),
    [
        ("us-east-1", {}, "Unable to locate credentials"),
        ("not a region!", {}, "doesn't match a supported format"),
        (
            "us-east-1",
            {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
             "AWS_MAX_ATTEMPTS": "1"},
            "Could not connect to the endpoint URL",
        ),
    ],
)  # fmt: skip
def test_report_stack_without_a_reachable_account_is_a_user_error(
    no_aws_account: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], region: str, env: dict, message: str
) -> None:
    # GIVEN no credentials, an invalid region, or an endpoint nothing listens on
    for name, value in env.items():
        no_aws_account.setenv(name, value)
    # WHEN the report reads a deployed stack
    code = main(["report", "--stack", "spot-hpc", "--region", region])
    # THEN botocore's message is printed as a user error
    assert code == 2
    assert message in capsys.readouterr().err


def test_report_refuses_a_region_with_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a run report file (its content never read), and a region, which only a deployed stack has
    path = tmp_path / "run.json"
    path.write_text("[]")
    # WHEN the report is asked of the file in that region
    code = main(["report", "--from-json", str(path), "--region", "eu-west-1"])
    # THEN the region is refused as a user error rather than silently ignored
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "--region is the region of --stack; --from-json reads run reports from files" in captured.err


# The environment a deployed function has, as `spotctl report --stack` reads it from the stack's functions.
STACK_FUNCTION_ENV = {
    "LEDGER_TABLE": "ledger", "INGEST_BUCKET": "bucket", "SPOT_JOB_QUEUE": "q", "ON_DEMAND_JOB_QUEUE": "q",
    "HPC_JOB_QUEUE": "q", "PREPROCESS_JOB_DEFINITION": "d", "HPC_JOB_DEFINITION": "d",
    "HPC_SHARD_JOB_DEFINITION": "d", "POSTPROCESS_JOB_DEFINITION": "d",
    "NOTIFICATION_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:t", "NOTIFICATIONS_DLQ_URL": "https://sqs/q",
    "SLACK_SECRET_ID": "s", "DEFAULT_DEADLINE_HOURS": "8", "LEDGER_RETENTION_DAYS": "90", "HPC_NODES": "2",
    "HPC_MAX_VCPUS": "256",
}  # fmt: skip


@pytest.mark.parametrize("default_region", ["us-east-1", None])
def test_report_stack_reads_every_service_in_the_stacks_region(no_aws_account, default_region) -> None:
    from spot_hpc.services import Services
    from spot_hpc.settings import ControlPlaneSettings

    # GIVEN a stack in eu-west-1, and the user's default region another one, or none at all
    no_aws_account.delenv("AWS_REGION", raising=False)
    if default_region:
        no_aws_account.setenv("AWS_DEFAULT_REGION", default_region)
    else:
        no_aws_account.delenv("AWS_DEFAULT_REGION", raising=False)
    settings = ControlPlaneSettings.from_environ({**STACK_FUNCTION_ENV, "AWS_REGION": "eu-west-1"})
    # WHEN the report builds the stack's services
    services = Services.from_settings(settings)
    # THEN the ledger and every other client are the stack's region's (no NoRegionError, no other region's table)
    clients = [services.ledger._table.meta.client, services.s3, services.sns, services.sqs, services.secrets]
    clients += [services.batch._batch, services.batch._ecs, services.pipeline._client]
    assert {client.meta.region_name for client in clients} == {"eu-west-1"}


def _deploy_stack(name: str, environment: dict[str, str]) -> None:
    """A stack on moto with what `report --stack` reads of a stack besides its ledger: its stage runner function, with
    the environment the function has."""
    role = boto3.client("iam").create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    function = {
        "Runtime": "python3.11",
        "Handler": "index.handler",
        "Role": role,
        "Code": {"ZipFile": "def handler(event, context): pass"},
        "Environment": {"Variables": environment},
    }
    template = {"Resources": {"StageRunnerFunction": {"Type": "AWS::Lambda::Function", "Properties": function}}}
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def _report_stack(*options: str) -> int:
    return main(["report", "--stack", "spot-hpc", "--region", "us-east-1", *options])


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (None, "stack 'spot-hpc' in us-east-1: Stack with id spot-hpc does not exist"),
        (STACK_FUNCTION_ENV, "stack 'spot-hpc' in us-east-1: reading its ledger (table 'ledger'): Requested resource"),
        ({"POWERTOOLS_SERVICE_NAME": "other"}, "stack 'spot-hpc' in us-east-1: not a Spot HPC control plane stack: "),
    ],
)
def test_report_stack_that_has_no_ledger_to_read_names_the_stack(
    moto_aws: None, capsys: pytest.CaptureFixture[str], environment: dict[str, str] | None, message: str
) -> None:
    # GIVEN no such stack, the stack without its ledger table, or a stack whose function is not the control plane's
    if environment is not None:
        _deploy_stack("spot-hpc", environment)
    # WHEN the report reads it
    code = _report_stack()
    # THEN it is a one-line user error naming the stack and its region
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"spotctl report: error: {message}")


def _run_in_ledger(ledger: Ledger, usd_per_hour: float = 1.0) -> None:
    """run-1: preprocess ran an hour on Spot at `usd_per_hour`, and the run succeeded."""
    start, end = "2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z"
    run = Run("run-1", "ingest", "incoming/a.csv", "v1", "2026-01-05T08:00:00Z", 8.0, start, {"preprocess": 1.0})
    stage = Stage("run-1", "preprocess", 0, 1.0, True, 1, attempt=1, on_demand_usd_per_hour=1.0)
    ledger.create_run(replace(run, status="SUCCEEDED", finished_at=end), [stage])
    ledger.record_attempt(
        Attempt("run-1", "preprocess", 1, "job-1", "spot", "spot", 1, start, usd_per_hour, status="SUCCEEDED",
                started_at=start, stopped_at=end)
    )  # fmt: skip


def test_report_stack_with_a_run_whose_figures_no_run_can_have_names_the_stack_and_the_run(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the stack, and in its ledger a run billed at a price no instance has ($1e12 an hour)
    _deploy_stack("spot-hpc", STACK_FUNCTION_ENV)
    _run_in_ledger(ledger, usd_per_hour=1e12)
    # WHEN the report reads it
    code = _report_stack()
    # THEN the run is refused naming the stack as well as the run and the field, as a report file's names its file
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "spotctl report: error: stack 'spot-hpc' in us-east-1: run report 'run-1' is malformed: cost_usd is 1e+12, "
        "not an amount from 0 to 1,000,000,000 USD\n"
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"started_at": "yesterday"}, "run 'run-1' cannot be reported: Invalid isoformat string: 'yesterday'"),
        ({"finished_at": 5}, "run 'run-1' cannot be reported: not a time: 5"),
        ({"bucket": None}, "a run in its ledger cannot be read: "),
    ],
)
def test_report_stack_with_a_run_its_ledger_holds_in_no_run_s_shape_names_the_stack(
    ledger: Ledger, ledger_table: Any, capsys: pytest.CaptureFixture[str], item: dict[str, Any], message: str
) -> None:
    # GIVEN the stack, and in its ledger a run whose start or end is not a time, or whose item lacks a field every run
    # has
    _deploy_stack("spot-hpc", STACK_FUNCTION_ENV)
    _run_in_ledger(ledger)
    for name, value in item.items():
        key = {"pk": "RUN#run-1", "sk": "RUN"}
        if value is None:
            ledger_table.update_item(Key=key, UpdateExpression="REMOVE #f", ExpressionAttributeNames={"#f": name})
        else:
            ledger.update_run("run-1", **{name: value})
    # WHEN the report reads it
    code = _report_stack()
    # THEN it is a one-line user error naming the stack (and the run where its item could be read), not a traceback
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"spotctl report: error: stack 'spot-hpc' in us-east-1: {message}")


def test_report_stack_with_no_runs_to_chart_names_the_stack(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the stack, with an empty ledger
    _deploy_stack("spot-hpc", STACK_FUNCTION_ENV)
    plot = tmp_path / "cost.png"
    # WHEN the report reads it, then is asked to chart its runs
    listed = _report_stack()
    listed_out = capsys.readouterr().out
    charted = _report_stack("--plot", str(plot))
    # THEN there are no runs to report, which is no error; but no chart is written, which names the stack
    captured = capsys.readouterr()
    assert (listed, listed_out) == (0, "No runs to report.\n")
    assert charted == 1 and not plot.exists()
    no_chart = f"spotctl report: no chart written to {plot}: stack 'spot-hpc' in us-east-1 has no runs to chart\n"
    assert captured.err == no_chart


def test_report_stack_without_a_region_to_read_it_in_names_the_stack(
    no_aws_account: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN no --region and no AWS_REGION, and a profile that is not configured, where the region would come from
    no_aws_account.delenv("AWS_REGION", raising=False)
    no_aws_account.setenv("AWS_PROFILE", "missing")
    # WHEN the report reads a deployed stack
    code = main(["report", "--stack", "spot-hpc"])
    # THEN the error names the stack it was to read
    assert code == 2
    assert capsys.readouterr().err.startswith("spotctl report: error: stack 'spot-hpc': finding the AWS region: ")


def test_demo_refuses_a_start_too_close_to_the_end_of_the_trace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the default trace (about 1092 h) and a start at hour 1080: the run may need 3 x 12 + 7 h, and 6 minutes
    # for each of the 3 jobs to start: 43.3 h
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.OfflineControlPlane")
    # WHEN the demo runs
    code = main(["demo", "--start-hour", "1080"])
    # THEN it is refused before the run, with the trace's length and what the run may need
    err = capsys.readouterr().err
    assert code == 2
    assert "the trace has 1091.89 h; a run from hour 1080 may need 43.3 h" in err


def test_demo_refuses_a_trace_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a directory given as the trace
    # WHEN the demo runs
    code = main(["demo", "--trace", str(tmp_path)])
    # THEN it says the trace cannot be read
    assert code == 2
    assert f"cannot read {tmp_path}: Is a directory" in capsys.readouterr().err


def test_demo_refuses_an_unwritable_json_path_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a report path whose folder is a regular file
    (tmp_path / "a_file").write_text("")
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.run_demo")
    # WHEN the demo runs
    code = main(["demo", "--json", str(tmp_path / "a_file" / "run.json")])
    # THEN the path is refused before the run
    assert code == 2
    assert "is not a directory" in capsys.readouterr().err


def test_demo_refuses_a_json_path_over_a_file_in_a_folder_it_cannot_write_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an earlier report, writable itself, in a folder that takes no new file (the report is written beside it,
    # then renamed over it); the tests run as root, whom no file mode stops, so the folder's access is what is faked
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    (read_only / "run.json").write_text("{}")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != read_only and real_access(p, mode))
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.run_demo")
    # WHEN the demo runs
    code = main(["demo", "--json", str(read_only / "run.json")])
    # THEN the path is refused before the run, not after it when its report could not be written
    assert code == 2
    assert f"{read_only / 'run.json'}: permission denied" in capsys.readouterr().err


def test_demo_one_hpc_node_is_explained_in_the_demos_terms(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN / WHEN the demo is asked for a one-node HPC stage
    code = main(["demo", "--hpc-nodes", "1"])
    # THEN the message does not point at hpc_mode, which the demo has no option for
    err = capsys.readouterr().err
    assert code == 2
    assert "--hpc-nodes 1" in err and "at least 2 nodes" in err and "hpc_mode" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--trace", "t.json", "--compute-hours", "1", "--deadline-hours", "nan"],
        ["simulate", "--trace", "t.json", "--compute-hours", "1", "--deadline-hours", "3", "--od-price", "inf"],
        ["demo", "--start-hour", "nan"],
        ["demo", "--deadline-hours", "inf"],
        ["checkpoint-drill", "--poll-seconds", "nan"],
    ],
)
def test_float_options_refuse_nan_and_infinity(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN / WHEN a float option is nan or inf (float() accepts both)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    # THEN argparse refuses it
    assert exit_info.value.code == 2
    assert "not a finite number" in capsys.readouterr().err


TOO_LONG = "a drilled part works a second or two, and one that looks for its notice less often can finish"
TOO_SHORT = "a job that looks for its notice more often only has its watchers poll back to back"


@pytest.mark.parametrize(
    ("poll", "why"),
    [("1e308", TOO_LONG), ("1.5", TOO_LONG), ("0.009", TOO_SHORT), ("1e-9", TOO_SHORT), ("0", TOO_SHORT),
     ("-1", TOO_SHORT)],
)  # fmt: skip
def test_checkpoint_drill_refuses_a_poll_a_drilled_part_cannot_wait_for_or_that_busy_loops(
    poll: str, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a poll interval longer than a drilled part works (1e308 s overflows the jobs' waits), or so short (or none
    # at all) that the jobs' watchers would poll back to back
    _refuse_to_run(monkeypatch, "spotctl.drill.runner.run_drills")
    # WHEN the drill is asked to run with it
    code = main(["checkpoint-drill", "--poll-seconds", poll])
    # THEN it is refused before any job starts, with a one-line error giving the bounds and why
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--poll-seconds must be from 0.01 to 1, not {float(poll):g}: {why}" in err


@pytest.mark.parametrize("poll", ["0.01", "1"])
def test_checkpoint_drill_takes_a_poll_from_a_hundredth_of_a_second_to_a_second(
    poll: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a drill that records the poll interval it is given instead of running
    polls: list[float] = []

    def run_drills(workloads: list[str], via: str, poll_seconds: float) -> list[object]:
        polls.append(poll_seconds)
        return []

    monkeypatch.setattr("spotctl.drill.runner.run_drills", run_drills)
    # WHEN it is asked for the shortest or the longest poll it takes
    code = main(["checkpoint-drill", "--poll-seconds", poll])
    # THEN the drill runs with it
    assert (code, polls) == (0, [float(poll)])


def test_checkpoint_drill_help_gives_the_job_runtime_s_shortest_poll(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the job runtime's shortest poll, which the drill's help states without importing the runtime
    from spot_checkpoint import MIN_POLL_SECONDS

    # WHEN the drill's help is shown
    with pytest.raises(SystemExit):
        main(["checkpoint-drill", "--help"])
    # THEN it gives the runtime's figure as the shortest the drill takes
    assert f"from {MIN_POLL_SECONDS:g} to 1:" in " ".join(capsys.readouterr().out.split())


def test_put_events_refuses_a_directory_and_an_unwritable_json_path_before_deploying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a directory as the event file, and a deliveries path whose folder is a regular file
    (tmp_path / "a_file").write_text("")
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN put-events runs with each
    directory = main(["put-events", str(tmp_path)])
    directory_err = capsys.readouterr().err
    bad_json = main(["put-events", str(EVENTS / "spot_interruption_warning.json"), "--json",
                     str(tmp_path / "a_file" / "d.json")])  # fmt: skip
    # THEN both are user errors, before the stack is deployed
    assert (directory, bad_json) == (2, 2)
    assert "cannot read" in directory_err
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SpotInterruptionFuncton", "IngestBucket"])
def test_invoke_refuses_a_name_that_is_not_a_function_before_deploying(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a function name with a typo, or a resource of the template that is not a function
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN invoke is asked to run it
    code = main(["invoke", name, "-e", str(EVENTS / "spot_interruption_warning.json")])
    # THEN it is a user error naming the template's functions, before the stack is deployed
    assert code == 2
    err = capsys.readouterr().err
    assert f"no function {name!r} in template.yaml; functions: BatchStateChangeFunction, NotifyFunction, " in err
    assert "SpotInterruptionFunction" in err and "IngestBucket," not in err


def test_put_events_says_why_a_sample_event_matched_no_rule(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the sample Batch event, whose job queue is not one of the offline stack's
    # WHEN it is put on the stack's bus
    code = main(["put-events", str(EVENTS / "batch_job_failed_host_terminated.json")])
    # THEN stderr says it matched no rule, which field the Batch rule also matches, and what to do instead
    err = capsys.readouterr().err
    assert code == 0
    assert "matched no rule of the stack" in err and "detail.jobQueue" in err and "spotctl invoke" in err


def test_put_events_fails_when_a_handler_failed_on_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotctl.offline.eventbus import Delivery

    # GIVEN a stack on which one of two events' handler fails (the other's succeeds)
    class Plane:
        def __enter__(self) -> Plane:
            return self

        def __exit__(self, *exc_info: object) -> None:
            return None

        def put_event(self, event: dict) -> list[Delivery]:
            status, error = ("error", "RuntimeError: boom") if event["id"] == "bad" else ("ok", "")
            return [Delivery(event["id"], "rule", "arn:aws:lambda:us-east-1:123456789012:function:f", status, error)]

    monkeypatch.setattr("spotctl.offline.runtime.OfflineControlPlane", Plane)
    events = tmp_path / "events.json"
    probes = [{"id": i, "source": "aws.ec2", "detail-type": "Probe", "detail": {}} for i in ("good", "bad")]
    events.write_text(json.dumps(probes))
    out = tmp_path / "deliveries.json"
    # WHEN they are put on the bus
    code = main(["put-events", str(events), "--json", str(out)])
    # THEN every delivery is printed and written, and the command fails, as invoke does when its handler fails
    captured = capsys.readouterr()
    assert code == 1
    assert "bad  rule  error  RuntimeError: boom" in captured.out
    assert "1 of 2 deliveries failed" in captured.err
    assert [d["status"] for d in json.loads(out.read_text())["deliveries"]] == ["ok", "error"]


def test_put_events_reports_entries_putevents_refuses_as_failed_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an event no rule takes, then entries PutEvents refuses: a source that is not a string, a detail-type that
    # is a list, a detail that is JSON text rather than an object
    events = tmp_path / "events.json"
    probe = {"source": "aws.ec2", "detail-type": "Probe", "detail": {}}
    events.write_text(json.dumps([probe, {**probe, "source": 5}, {**probe, "detail-type": ["Probe"]},
                                  {**probe, "detail": "{}"}]))  # fmt: skip
    out = tmp_path / "deliveries.json"
    # WHEN they are put on the offline stack's bus
    code = main(["put-events", str(events), "--json", str(out)])
    # THEN the good one is put (and matches no rule), and each refused one is a failed entry with PutEvents' error
    # code, in the output and the JSON, and the command fails as it does when a delivery failed
    captured = capsys.readouterr()
    assert code == 1
    assert (
        "event [1]  failed entry  InvalidArgument: Parameter Source is not valid. Reason: Source must be a "
        "non-empty string, not 5." in captured.out
    )
    assert "event [2]  failed entry  InvalidArgument: Parameter DetailType is not valid." in captured.out
    assert 'event [3]  failed entry  MalformedDetail: Detail is malformed: not a JSON object but "{}".' in captured.out
    assert "(aws.ec2 / Probe) matched no rule" in captured.err and captured.err.count("matched no rule") == 1
    assert "3 of 4 events were not put: PutEvents refuses them as failed entries" in captured.err
    written = json.loads(out.read_text())
    assert written["deliveries"] == []
    assert [(e["entry"], e["error_code"]) for e in written["failed_entries"]] == [
        (1, "InvalidArgument"), (2, "InvalidArgument"), (3, "MalformedDetail")]  # fmt: skip


def test_put_events_reports_an_entry_without_source_detail_type_or_detail_as_a_failed_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN entries each without one of the fields PutEvents requires (detail, source, detail-type), then an event no
    # rule takes
    events = tmp_path / "events.json"
    probe = {"source": "aws.ec2", "detail-type": "Probe", "detail": {}}
    incomplete = [{k: v for k, v in probe.items() if k != field} for field in ("detail", "source", "detail-type")]
    events.write_text(json.dumps([*incomplete, probe]))
    out = tmp_path / "deliveries.json"
    # WHEN they are put on the offline stack's bus
    code = main(["put-events", str(events), "--json", str(out)])
    # THEN each entry missing a field is a failed entry with PutEvents' InvalidArgument, none is put with a detail made
    # up for it, the good one is put (and matches no rule), and the command fails
    captured = capsys.readouterr()
    assert code == 1
    for index, name in enumerate(("Detail", "Source", "DetailType")):
        line = f"event [{index}]  failed entry  InvalidArgument: Parameter {name} is not valid. Reason: {name} is a "
        assert f"{line}required argument." in captured.out
    assert "(aws.ec2 / Probe) matched no rule" in captured.err and captured.err.count("matched no rule") == 1
    assert "3 of 4 events were not put: PutEvents refuses them as failed entries" in captured.err
    written = json.loads(out.read_text())
    assert [(e["entry"], e["error_code"]) for e in written["failed_entries"]] == [
        (0, "InvalidArgument"), (1, "InvalidArgument"), (2, "InvalidArgument")]  # fmt: skip


def test_put_events_answers_a_file_of_refused_entries_only_without_deploying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a file whose every entry PutEvents refuses, and a stack that must not be deployed for it
    events = tmp_path / "events.json"
    events.write_text(json.dumps([{"source": "aws.ec2", "detail-type": "Probe"}, {"source": 5, "detail": {}}]))
    out = tmp_path / "deliveries.json"
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN they are put
    code = main(["put-events", str(events), "--json", str(out)])
    # THEN each is a failed entry, as with a good event beside it, and the command fails without a deployment
    captured = capsys.readouterr()
    assert code == 1
    assert "event [0]  failed entry  InvalidArgument: Parameter Detail is not valid." in captured.out
    assert "event [1]  failed entry  InvalidArgument: Parameter Source is not valid." in captured.out
    assert "no rule matched" not in captured.out
    assert "2 of 2 events were not put" in captured.err
    assert json.loads(out.read_text()) == {
        "deliveries": [],
        "failed_entries": [
            {"entry": 0, "error_code": "InvalidArgument",
             "error_message": "Parameter Detail is not valid. Reason: Detail is a required argument."},
            {"entry": 1, "error_code": "InvalidArgument",
             "error_message": "Parameter Source is not valid. Reason: Source must be a non-empty string, not 5."},
        ],
    }  # fmt: skip


def test_put_events_writes_its_json_when_the_reader_of_stdout_has_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a file of an entry PutEvents refuses, an earlier file of deliveries, and stdout a pipe whose reader has
    # gone (`spotctl put-events ... | head -1`), flushed at every line as output longer than the pipe's buffer is
    events = tmp_path / "events.json"
    events.write_text(json.dumps([{"source": "aws.ec2", "detail-type": "Probe"}]))
    out = tmp_path / "deliveries.json"
    out.write_text('{"deliveries": ["an earlier put"]}')
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        # WHEN the events are put
        code = main(["put-events", str(events), "--json", str(out)])
    # THEN the file is this put's, not the earlier one left as if it were new
    assert code == 1
    assert json.loads(out.read_text())["failed_entries"][0]["entry"] == 0


def test_put_events_names_the_entry_that_is_not_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a list of a good event, then an entry that is not a JSON object at all
    events = tmp_path / "events.json"
    events.write_text(json.dumps([{"source": "aws.ec2", "detail-type": "Probe", "detail": {}}, "aws.ec2"]))
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN they are put on the bus
    code = main(["put-events", str(events)])
    # THEN the file is refused before the stack is deployed, naming the bad entry by its index
    assert code == 2
    assert "event [1] is not an event: a JSON object with source, detail-type and detail" in capsys.readouterr().err


def test_put_events_refuses_an_event_over_putevents_size_limit_before_deploying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a good event, then one whose detail makes it larger than the 256 KB PutEvents takes of an entry
    events = tmp_path / "events.json"
    probe = {"source": "aws.ec2", "detail-type": "Probe", "detail": {}}
    events.write_text(json.dumps([probe, {**probe, "detail": {"blob": "x" * 300_000}}]))
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN they are put on the bus
    code = main(["put-events", str(events)])
    # THEN the file is refused before the stack is deployed, as PutEvents refuses the request, naming the entry
    assert code == 2
    err = capsys.readouterr().err
    assert "event [1] is 300,023 bytes, over the 262,144 (256 KB) PutEvents takes of an entry" in err
    assert "PutEvents refuses the request: no event was put" in err


def test_put_events_says_an_empty_list_has_no_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a file holding an empty list
    events = tmp_path / "events.json"
    events.write_text("[]")
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN it is put on the bus
    code = main(["put-events", str(events)])
    # THEN it is a user error saying there are no events, not that no rule matched
    captured = capsys.readouterr()
    assert code == 2
    assert "no events" in captured.err and "no rule matched" not in captured.out


READING_COMMANDS = [["report", "--from-json"], ["put-events"], ["invoke", "SpotInterruptionFunction", "-e"]]
EVENT = '{"source": "aws.ec2", "detail-type": "Probe", "detail": {"n": %s}}'


@pytest.mark.parametrize("command", [*READING_COMMANDS, ["demo", "--trace"]], ids=lambda command: command[0])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),  # deeper than Python's recursion limit
        (EVENT % ("9" * 5_000), "not JSON: Exceeds the limit (4300 digits)"),  # more digits than Python converts
    ],
    ids=["nested-too-deeply", "integer-too-long"],
)
def test_a_json_file_python_cannot_read_is_a_user_error(
    command: list[str], content: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # GIVEN a JSON file Python's reader cannot take
    path = tmp_path / "unreadable.json"
    path.write_text(content)
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.deploy")
    # WHEN a command reads it
    code = main([*command, str(path)])
    # THEN it is a one-line user error naming the file, not a traceback
    assert code == 2
    assert f"{path}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", READING_COMMANDS, ids=lambda command: command[0])
@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e400"])
def test_a_json_file_with_a_number_json_has_not_is_a_user_error(
    command: list[str], number: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # GIVEN an event or report file with a number Python's reader takes and JSON has not (no AWS service sends one)
    path = tmp_path / "not-json.json"
    path.write_text(EVENT % number)
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.deploy")
    # WHEN a command reads it
    code = main([*command, str(path)])
    # THEN it is refused as not JSON, naming the file and the number, before anything runs
    assert code == 2
    assert f"{path}: not JSON: {number} is not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["put-events"], ["invoke", "SpotInterruptionFunction", "-e"]])
def test_an_event_file_that_is_not_utf8_text_is_a_user_error(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an event file that is not UTF-8 text (a binary file picked by mistake)
    events = tmp_path / "events.json"
    events.write_bytes(b"\xff\xfe\x00binary")
    _refuse_to_run(monkeypatch, "spotctl.offline.runtime.OfflineControlPlane")
    # WHEN put-events or invoke reads it
    code = main([*command, str(events)])
    # THEN it is refused before the stack is deployed, naming the file, not with a traceback
    assert code == 2
    assert f"{events}: not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("trace", "start_hour", "message"),
    [
        (None, "1e308", "start hour 1e+308 is outside the trace"),
        ('{"metadata": {"gap_seconds": NaN}, "data": [1, 1]}', "0", "gap_seconds must be a positive finite number"),
        ('{"metadata": {"gap_seconds": Infinity}, "data": [1, 1]}', "0", "gap_seconds must be a positive finite"),
        ('{"metadata": {"gap_seconds": "300"}, "data": [1, 1]}', "0", "gap_seconds must be a positive finite number"),
        ('{"metadata": {"gap_seconds": 300}, "data": [1, -1]}', "0", "capacity [1] is -1: not a whole number >= 0"),
        ('{"metadata": {"gap_seconds": 300}, "data": [1.5, 1]}', "0", "capacity [0] is 1.5: not a whole number >= 0"),
        ('{"metadata": {"gap_seconds": 300}, "data": [1, "x"]}', "0", "capacity [1] is 'x': not a whole number >= 0"),
        # an integer JSON allows, past the largest float
        (
            '{"metadata": {"gap_seconds": 3%s}, "data": [1, 1]}' % ("0" * 400),
            "0",
            "gap_seconds must be a positive finite number, not an integer of 401 digits",
        ),
    ],
)
def test_demo_refuses_a_trace_or_start_hour_it_cannot_use(
    trace: str | None,
    start_hour: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a start hour past any trace, or a trace whose gap or capacities cannot be used
    argv = ["demo", "--start-hour", start_hour]
    if trace is not None:
        (tmp_path / "trace.json").write_text(trace)
        argv += ["--trace", str(tmp_path / "trace.json")]
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.OfflineControlPlane")
    # WHEN the demo runs
    code = main(argv)
    # THEN it is refused before the run with a one-line message, not a traceback
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stage_hours", "message"),
    [
        ("hpc=1,hpc=2", "stage hours: hpc is given twice"),
        ("", "stage hours: none given"),
        (" , ", "stage hours: none given"),
        ("hpc=9000", "stage hours must be more than 0 and at most 8760"),
        ("hpc=0", "stage hours must be more than 0 and at most 8760"),
    ],
)
def test_demo_refuses_stage_hours_it_cannot_use(
    stage_hours: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a stage given twice, no stages at all, or hours outside 0 < hours <= 8760
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.OfflineControlPlane")
    # WHEN the demo runs with them
    code = main(["demo", "--stage-hours", stage_hours])
    # THEN they are refused with the rule they break
    assert code == 2
    assert message in capsys.readouterr().err


def test_top_level_help_describes_the_tool(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN / WHEN `spotctl --help`
    with pytest.raises(SystemExit):
        main(["--help"])
    # THEN the description is for users, not about how subcommand modules are written
    out = capsys.readouterr().out
    assert "register(subparsers)" not in out and "Run the Spot HPC control plane offline" in out


@pytest.mark.parametrize(
    ("env", "profile_region", "expected"),
    [
        ({"AWS_DEFAULT_REGION": "eu-west-3"}, None, "eu-west-3"),
        ({"AWS_PROFILE": "dev"}, "ap-south-1", "ap-south-1"),
    ],
)
def test_report_stack_region_defaults_to_the_aws_configuration(
    no_aws_account: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    profile_region: str | None,
    expected: str,
) -> None:
    # GIVEN no --region, but a region in the environment or in the profile's configuration (and no credentials)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        no_aws_account.delenv(name, raising=False)
    for name, value in env.items():
        no_aws_account.setenv(name, value)
    if profile_region:
        (tmp_path / "no-config").write_text(f"[profile dev]\nregion = {profile_region}\n")
    # WHEN the report reads a deployed stack
    code = main(["report", "--stack", "spot-hpc"])
    # THEN the stack is looked for in that region, not in us-east-1
    assert code == 2
    assert f"stack 'spot-hpc' in {expected}:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (["demo", "--help"], ["relative to the current directory"]),
        (["invoke", "--help"], ["-e FILE, --event FILE JSON file of the event"]),
        (["report", "--help"], ["AWS_DEFAULT_REGION or the profile's region, else us-east-1"]),
        (
            ["simulate", "--help"],
            [
                "Only --policy default (the deployed policy) also says why",
                "rounded to a whole number (at least 1) of the trace's samples (default 300)",
                "rounded to whole ticks (default 0.2)",
                "at least this many (default 1)",
                "not the current directory",
                "(default: the project root,",
            ],
        ),
        (["bench", "policy", "--help"], ["never more than the CPUs", "or the scenarios in the file"]),
    ],
)
def test_help_says_where_paths_and_regions_come_from(
    argv: list[str], phrases: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a wide terminal, so that no phrase is wrapped
    monkeypatch.setenv("COLUMNS", "400")
    # WHEN the help is printed
    with pytest.raises(SystemExit):
        main(argv)
    # THEN it says what paths are relative to, what -e is, where the region comes from, which policy explains
    # itself, and how ticks and changeovers are rounded
    out = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert phrase in out


@pytest.mark.parametrize("module", ["spotctl", "spotctl.cli"])
def test_run_as_a_module_a_user_error_is_one_line_and_exit_2(tmp_path, module):
    # GIVEN spotctl run as `python -m` (where the environment's scripts are not on PATH), on a report file that is not
    # there
    missing = tmp_path / "missing.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # WHEN it runs
    done = subprocess.run(
        [sys.executable, "-m", module, "report", "--from-json", str(missing)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    # THEN it fails as the installed command does: exit 2 and one line naming the file, no traceback (before, `-m
    # spotctl` was no command at all, and `-m spotctl.cli` printed a ToolError traceback)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("spotctl report: error: ") and str(missing) in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "reads"),
    [
        (["bench", "policy", "--scenarios", "{input}", "--json", "{input}"], "--scenarios"),
        (["bench", "policy", "--scenarios", "{input}", "--json", "{other}", "--summary", "{input}"], "--scenarios"),
        (["bench", "planner", "--template", "{input}", "--json", "{input}"], "--template"),
        (["simulate", "--trace", "{input}", "--deadline-hours", "3", "--json", "{input}"], "--trace"),
        (["demo", "--trace", "{input}", "--json", "{input}"], "--trace"),
        (["put-events", "{input}", "--json", "{input}"], "the events file"),
    ],
    ids=["bench-json", "bench-summary", "planner", "simulate", "demo", "put-events"],
)
def test_an_output_path_that_is_a_file_the_command_reads_is_refused_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], reads: str
) -> None:
    # GIVEN an input file, and a command told to write its output over it (a slip of the shell's history)
    given = tmp_path / "input.json"
    given.write_text('{"kept": true}')
    _refuse_to_run(monkeypatch, "spotctl.offline.demo.run_demo")
    # WHEN the command runs
    code = main([part.format(input=given, other=tmp_path / "rows.json") for part in argv])
    # THEN it is refused naming the option that reads the file, and the file is as it was
    assert code == 2
    assert f"is the file {reads} reads: give another file to write" in capsys.readouterr().err
    assert given.read_text() == '{"kept": true}'
