"""`spotctl checkpoint-drill` for real: workload processes, a loopback S3 and a loopback instance-metadata service."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from spot_checkpoint import EXIT_CHECKPOINTED, REASON_SIGTERM, list_objects

from spotctl.cli import main
from spotctl.drill import runner
from spotctl.drill.metadata_server import MetadataStandIn
from spotctl.drill.runner import WORKLOADS, DrillResult, JobProcess, run_drills
from spotctl.drill.s3_server import EmbeddedS3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def drilled() -> list[DrillResult]:
    # GIVEN every example workload drilled with a Spot notice in instance metadata
    return run_drills(list(WORKLOADS), via="imds")


def test_every_workload_resumes_and_matches_the_uninterrupted_output(drilled: list[DrillResult]) -> None:
    # THEN each was interrupted once, exited with the checkpointed code, resumed, and produced identical output
    assert [result.workload for result in drilled] == list(WORKLOADS)
    for result in drilled:
        assert result.interruptions == 1
        assert result.resumed_from_checkpoint, result.workload
        assert result.output_matches_uninterrupted, result.workload
        assert set(result.exit_codes) == {86, 0}
        assert result.checkpoints_removed_after_success, result.workload
        assert result.notice_to_checkpoint_seconds >= 0.0
        assert result.lost_work_seconds >= 0.0
    assert next(result for result in drilled if result.workload == "hpc").parts == 2


def test_drill_via_sigterm_writes_the_json_report(tmp_path: Path) -> None:
    # GIVEN the command line, interrupting preprocess with SIGTERM as `docker stop` would
    out = tmp_path / "drill.json"
    # WHEN the drill runs
    exit_code = main(["checkpoint-drill", "--workload", "preprocess", "--via", "sigterm", "--json", str(out)])
    # THEN it succeeds and the report has the documented fields
    assert exit_code == 0
    row = json.loads(out.read_text())
    assert row["workload"] == "preprocess"
    assert row["interrupted_via"] == "sigterm"
    for name, kind in {
        "interruptions": int,
        "notice_to_checkpoint_seconds": float,
        "lost_work_seconds": float,
        "resumed_from_checkpoint": bool,
        "output_matches_uninterrupted": bool,
    }.items():
        assert isinstance(row[name], kind), name
    assert row["resumed_from_checkpoint"] and row["output_matches_uninterrupted"]


def test_bad_poll_interval_is_a_user_error() -> None:
    # GIVEN / WHEN a nonsensical option / THEN spotctl reports a user error (exit code 2)
    assert main(["checkpoint-drill", "--poll-seconds", "0"]) == 2


def test_a_job_that_outlives_the_drills_timeout_fails_the_drill_and_leaves_no_process_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN HPC parts given less time than they take (as a long --poll-seconds can keep a part waiting past the real
    # timeout; the preprocess output they read is made first, in its own time), and every job process recorded
    started: list[JobProcess] = []
    start = runner.Drill.start

    def recorded_start(self: runner.Drill, workload: str, *args: Any, **kwargs: Any) -> JobProcess:
        started.append(start(self, workload, *args, **kwargs))  # an HPC part's start runs preprocess to the end
        if workload == "hpc":
            monkeypatch.setattr(runner, "JOB_TIMEOUT_SECONDS", 0.1)
        return started[-1]

    monkeypatch.setattr(runner.Drill, "start", recorded_start)
    # WHEN the two-part HPC workload is drilled
    code = main(["checkpoint-drill", "--workload", "hpc"])
    # THEN it is a drill error naming the part that overran, not a traceback, and no part is left running
    assert code == 2
    assert "hpc node-0: still running after 0.1 s" in capsys.readouterr().err
    assert len(started) == 3 and all(job.process.poll() is not None for job in started)


def test_a_workload_that_cannot_be_drilled_keeps_the_results_of_those_drilled_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN preprocess drilled, and hpc a workload whose drill fails (a part that overran)
    drilled: list[str] = []

    def drill(self: runner.Drill, workload: str, via: str = "imds") -> DrillResult:
        drilled.append(workload)
        if workload == "hpc":
            raise runner.DrillError("hpc node-1: still running after 120 s")
        return DrillResult(
            workload=workload, interruptions=1, notice_to_checkpoint_seconds=0.1, lost_work_seconds=0.05,
            resumed_from_checkpoint=True, output_matches_uninterrupted=True, interrupted_via=via, parts=1,
            exit_codes=[86, 0], checkpoint_interval_seconds=0.25, progress_at_notice=0.2,
            checkpoints_removed_after_success=True, wall_seconds=1.5,
        )  # fmt: skip

    monkeypatch.setattr(runner.Drill, "drill", drill)
    out = tmp_path / "drill.json"
    # WHEN every workload is drilled
    code = main(["checkpoint-drill", "--workload", "all", "--json", str(out)])
    # THEN the drill stops at hpc and fails as a drill error, but preprocess's result is printed and written, with a
    # row for the workload that failed, and the error says which workloads were not drilled
    captured = capsys.readouterr()
    assert code == 2 and drilled == ["preprocess", "hpc"]
    assert captured.out.startswith("preprocess   via imds")
    assert captured.err == (
        "spotctl checkpoint-drill: error: hpc node-1: still running after 120 s (not drilled after it: postprocess)\n"
    )
    rows = json.loads(out.read_text())
    assert [row["workload"] for row in rows] == ["preprocess", "hpc"]
    assert rows[0]["output_matches_uninterrupted"] is True
    assert rows[1] == {"workload": "hpc", "interrupted_via": "imds", "error": "hpc node-1: still running after 120 s"}


def test_a_sigterm_while_a_job_copies_its_upload_stops_it_with_a_checkpoint_and_the_restart_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with EmbeddedS3() as s3_server, MetadataStandIn() as metadata:
        drill = runner.Drill(s3_server.endpoint)
        reference = list_objects(drill.s3, drill.reference("preprocess"))
        # GIVEN preprocess as a real process, sent SIGTERM (as `docker stop` sends it) once, when it asks S3 for the
        # upload it copies to local disk before it starts its checkpointed work
        job_pid: list[int] = []
        started, sent = threading.Event(), threading.Event()
        dispatch = s3_server._dispatch

        def sigterm_on_reading_the_upload(method: str, path: str, *args: Any) -> Any:
            if method == "GET" and runner.INPUT_KEY in path and not sent.is_set() and started.wait(timeout=30):
                sent.set()
                os.kill(job_pid[0], signal.SIGTERM)
            return dispatch(method, path, *args)

        monkeypatch.setattr(s3_server, "_dispatch", sigterm_on_reading_the_upload)
        try:
            # WHEN it runs, and is started again once it has exited
            first = drill.start("preprocess", "sigterm-at-input", metadata, {})
            job_pid.append(first.process.pid)
            started.set()
            first_code = first.wait()
            second = drill.start("preprocess", "sigterm-at-input", metadata, {})
            second_code = second.wait()
        finally:
            drill.stop_jobs()
        # THEN the signal was neither lost nor fatal: the job checkpointed its first unit and exited 86, as for any
        # SIGTERM (before, the process died of it here, and as a container's PID 1 it would have ignored it)
        assert sent.is_set(), "the job never read its upload"
        assert first_code == EXIT_CHECKPOINTED, first.other_lines[-5:]
        stopping = first.first("stopping")
        assert stopping is not None and (stopping["reason"], stopping["signals_received"]) == (REASON_SIGTERM, 1)
        assert first.first("checkpoint_saved", reason=REASON_SIGTERM) is not None
        # AND the restart resumed from that checkpoint and wrote the uninterrupted run's output
        assert second_code == 0 and second.first("resumed") is not None
        assert list_objects(drill.s3, drill.output_uri("sigterm-at-input", "preprocess")) == reference
