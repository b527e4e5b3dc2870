"""A transient S3 error at a job's start (throttling when an array of shards starts at once on one prefix, a 500, a
connection reset) is tried again for a bounded time, then ends the job as the control plane resubmits without spending
the stage's retries; a permanent one (no bucket, no input) stays an application error, told in one line."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError
from spot_checkpoint import (
    EXIT_CHECKPOINTED,
    EXIT_S3_UNAVAILABLE,
    REASON_S3_UNAVAILABLE,
    REASON_SIGTERM,
    REASON_SPOT_INTERRUPTION,
    CheckpointedJob,
    CheckpointInterval,
    CheckpointStore,
    InstanceMetadata,
    StartRetry,
    Stopped,
    list_objects,
)
from spot_checkpoint import job as job_module
from spot_hpc.job_events import classify_failure
from spot_hpc.run_report import FailureClass

from jobs.hpc import hpc
from jobs.preprocess import preprocess
from spotctl.drill.metadata_server import MetadataStandIn

from . import test_workloads
from .conftest import BUCKET, EventRecorder, S3Passthrough, S3Refusing, make_job, sigterm_unhandled
from .test_workloads import INPUT_CSV, as_in_container, stage_env

pipeline_inputs, hpc_input = test_workloads.pipeline_inputs, test_workloads.hpc_input

URI = f"s3://{BUCKET}/checkpoints/run-9/hpc/"


class FakeTime:
    """The clock and sleep a job's start retries by: sleeping moves the clock, and nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep: Any = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            action, self.on_sleep = self.on_sleep, None
            action()

    def retry(self) -> StartRetry:
        return StartRetry(sleep=self.sleep, clock=self.clock, jitter=lambda: 0.5)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(job_module, "START_RETRY", fake.retry())
    return fake


def _slow_down(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        operation,
    )


class ThrottledAtStart(S3Passthrough):
    """S3 throttling (past botocore's retries) the first `checkpoint_failures` listings of the checkpoint prefix and the
    first `input_failures` reads of `input_key`, which it cuts by a connection reset; all else passes through."""

    def __init__(self, s3: Any, input_key: str, checkpoint_failures: int, input_failures: int) -> None:
        super().__init__(s3)
        self.input_key = input_key
        self.checkpoint_failures = checkpoint_failures
        self.input_failures = input_failures

    def list_objects_v2(self, **kwargs: Any) -> Any:
        if kwargs.get("Prefix", "").startswith("checkpoints/") and self.checkpoint_failures:
            self.checkpoint_failures -= 1
            raise _slow_down("ListObjectsV2")
        return self._s3.list_objects_v2(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        response = self._s3.get_object(**kwargs)
        if kwargs["Key"] == self.input_key and self.input_failures:
            self.input_failures -= 1
            response["Body"] = CutShort(response["Body"])
        return response


class CutShort:
    """A body whose connection is reset after its first piece."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.pieces = 0

    def read(self, size: int = -1) -> bytes:
        self.pieces += 1
        if self.pieces > 1:
            raise ConnectionClosedError(endpoint_url="https://s3.amazonaws.com")
        return bytes(self.body.read(min(size, 100) if size > 0 else 100))

    def close(self) -> None:
        self.body.close()


def test_a_job_starting_into_s3_throttling_and_a_reset_input_read_tries_again_and_succeeds(
    pipeline_inputs: Any, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    # GIVEN a preprocess job whose checkpoint listing S3 throttles 3 times and whose input read is reset part way twice
    env = stage_env("thr", "preprocess", INPUT_CSV)
    client = ThrottledAtStart(pipeline_inputs, "incoming/sources.csv", checkpoint_failures=3, input_failures=2)
    as_in_container(monkeypatch, env, client)
    # WHEN it runs as its container does
    code = preprocess.main()
    # THEN it waited between tries, each longer than the one before, and succeeded on the same input as ever (before,
    # the first SlowDown ended it with a traceback and exit 1, an application error spending a stage retry)
    assert code == 0
    assert client.checkpoint_failures == 0 and client.input_failures == 0
    assert fake_time.now == pytest.approx(0.75 + 1.5 + 3.0 + 0.75 + 1.5)
    reference = stage_env("ref", "preprocess", INPUT_CSV)
    preprocess.run(pipeline_inputs, reference)
    outputs, expected = (list_objects(pipeline_inputs, e["OUTPUT_URI"]) for e in (env, reference))
    assert outputs["sources.csv"] == expected["sources.csv"]


def test_a_shard_throttled_past_its_start_retries_stops_for_a_resubmission_not_an_application_error(
    s3: Any, hpc_input: str, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    # GIVEN shard 3 of an HPC array whose checkpoint prefix S3 throttles on every listing
    env = stage_env("thr", "hpc", hpc_input, AWS_BATCH_JOB_ARRAY_INDEX="3", SPOT_CHECKPOINT_PARTS="4")
    client = ThrottledAtStart(s3, "none", checkpoint_failures=10**6, input_failures=0)
    as_in_container(monkeypatch, env, client)
    # WHEN it runs as its container does
    with pytest.raises(Stopped) as stopped:
        hpc.main()
    # THEN it tried for the bounded time, no longer, and stopped with the code of S3 unavailable
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_S3_UNAVAILABLE, REASON_S3_UNAVAILABLE)
    assert 250 <= fake_time.now <= StartRetry().seconds
    assert max(fake_time.slept) <= StartRetry().max_delay
    # AND the control plane reads that code as S3's failure to resubmit, neither the application's error nor an
    # interruption
    detail = SimpleNamespace(status_reason="Essential container in task exited", exit_code=stopped.value.code)
    attempt = SimpleNamespace(cancel_reason=None, shard_failure=None, capacity="spot")
    assert classify_failure(detail, attempt) == FailureClass.S3_UNAVAILABLE  # type: ignore[arg-type]


def test_a_sigterm_while_the_start_waits_to_try_again_stops_the_job_at_once(
    s3: Any, events: EventRecorder, fake_time: FakeTime
) -> None:
    # GIVEN a part whose checkpoint listing S3 throttles on every try, and a SIGTERM during the first wait
    client = ThrottledAtStart(s3, "none", checkpoint_failures=10**6, input_failures=0)
    job = CheckpointedJob(CheckpointStore(client, URI), interval=CheckpointInterval(fixed_seconds=3600), events=events)
    fake_time.on_sleep = lambda: os.kill(os.getpid(), signal.SIGTERM)
    # WHEN it starts
    with sigterm_unhandled(), pytest.raises(Stopped) as stopped:
        job.start()
    # THEN it stopped within that wait, as for a SIGTERM while the checkpoint is read: exit 86, nothing written
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SIGTERM)
    assert fake_time.slept == [0.1]
    assert events.named("checkpoint_saved") == []


def test_a_sigterm_after_a_checkpoint_request_while_the_input_read_waits_to_try_again_stops_the_job_at_once(
    s3: Any, events: EventRecorder, fake_time: FakeTime
) -> None:
    # GIVEN a started part that has seen the control plane's checkpoint request (a requeue asks, then terminates the
    # job), and whose input read S3 throttles on every try
    CheckpointStore(s3, URI).request_checkpoint("requeue to On-Demand", attempt=2)
    job = make_job(s3, events, uri=URI, attempt=2)

    def throttled_read() -> bytes:
        raise _slow_down("GetObject")

    fake_time.on_sleep = lambda: os.kill(os.getpid(), signal.SIGTERM)
    # WHEN Batch's SIGTERM comes during the first wait to read the input again
    with sigterm_unhandled(), job, pytest.raises(Stopped) as stopped:
        assert job.stop_signal is not None and job.stop_signal.request_id is not None
        job.read_input(throttled_read, "input")
    # THEN it stopped within that wait, exit 86 with nothing written, as for a SIGTERM with no request before it (the
    # request had claimed the stop, so the SIGTERM was ignored and the job waited out its 300 s of tries, well past
    # Batch's stop timeout and its SIGKILL)
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert fake_time.slept == [0.1]
    assert events.named("checkpoint_saved") == []


def test_a_spot_notice_while_the_start_waits_to_try_again_stops_the_job_at_once(
    s3: Any, events: EventRecorder, fake_time: FakeTime
) -> None:
    # GIVEN a part whose checkpoint listing S3 throttles on every try, and EC2 posting the Spot notice during the first
    # wait, with the watcher's pollers not running yet
    client = ThrottledAtStart(s3, "none", checkpoint_failures=10**6, input_failures=0)
    with MetadataStandIn() as metadata:
        job = make_job(client, events, uri=URI, metadata=InstanceMetadata(metadata.endpoint), poll_seconds=1)
        fake_time.on_sleep = metadata.post_notice
        # WHEN it starts
        with pytest.raises(Stopped) as stopped:
            job.start()
    # THEN the next look during that wait saw the notice and the job stopped, exit 86 with nothing written, long before
    # the notice's two minutes
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SPOT_INTERRUPTION)
    assert fake_time.now <= 1.1
    assert events.named("checkpoint_saved") == []


class NoRouteToS3(S3Passthrough):
    def list_objects_v2(self, **kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="https://checkpoint-tests.s3.amazonaws.com")


def test_a_job_that_never_reaches_s3_is_an_application_error_told_in_one_line(
    s3: Any, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a job on a network with no route to S3
    env = stage_env("net", "preprocess", INPUT_CSV)
    as_in_container(monkeypatch, env, NoRouteToS3(s3))
    # WHEN it runs as its container does
    code = preprocess.main()
    # THEN after the bounded tries it exits 1 (its retry budget bounds the resubmissions) saying why in one line
    assert code == 1
    assert fake_time.now <= StartRetry().seconds
    told = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preprocess:")]
    assert len(told) == 1 and "could not be reached" in told[0] and "network route to S3" in told[0]


class ThrottledThenTimingOut(S3Passthrough):
    """S3 throttling every listing of the checkpoint prefix for the first `throttled_seconds` of `fake_time`, then every
    connection to it timing out (a NAT gateway swamped by the shards starting together, say)."""

    def __init__(self, s3: Any, fake_time: FakeTime, throttled_seconds: float) -> None:
        super().__init__(s3)
        self.fake_time = fake_time
        self.throttled_seconds = throttled_seconds

    def list_objects_v2(self, **kwargs: Any) -> Any:
        if self.fake_time.now < self.throttled_seconds:
            raise _slow_down("ListObjectsV2")
        raise ConnectTimeoutError(endpoint_url="https://checkpoint-tests.s3.amazonaws.com")


def test_a_job_that_reached_s3_before_its_connections_timed_out_stops_for_a_resubmission(
    s3: Any, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    # GIVEN a job whose checkpoint listing S3 throttles for its first 100 s and whose connections then time out
    env = stage_env("mix", "preprocess", INPUT_CSV)
    as_in_container(monkeypatch, env, ThrottledThenTimingOut(s3, fake_time, throttled_seconds=100))
    # WHEN it runs as its container does
    with pytest.raises(Stopped) as stopped:
        preprocess.main()
    # THEN S3 answered it (throttled): its network has a route to S3, so it stops with the code of S3 unavailable for a
    # resubmission, not exit 1 blaming the route, which the last failure alone made it (spending a stage retry)
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_S3_UNAVAILABLE, REASON_S3_UNAVAILABLE)


@pytest.mark.parametrize("code", ["AccessDenied", "NoSuchBucket"])
def test_a_checkpoint_bucket_refused_for_good_is_an_application_error_at_once(
    s3: Any, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime, code: str
) -> None:
    # GIVEN a job whose checkpoint bucket S3 refuses for good
    as_in_container(monkeypatch, stage_env("acc", "preprocess", INPUT_CSV), S3Refusing(s3, "list_objects_v2", code))
    # WHEN it runs
    # THEN it exits 1 without waiting to try again
    assert preprocess.main() == 1
    assert fake_time.slept == []


def test_a_missing_input_is_an_application_error_at_once(
    s3: Any, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    # GIVEN a job whose input does not exist
    as_in_container(monkeypatch, stage_env("gone", "preprocess", f"s3://{BUCKET}/incoming/none.csv"), s3)
    # WHEN it runs
    # THEN it exits 1 without waiting to try again
    assert preprocess.main() == 1
    assert fake_time.slept == []
