"""The job side: periodic checkpoints, checkpoint-and-exit on notice / request / SIGTERM, faults, finish."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from spot_checkpoint import (
    EXIT_CHECKPOINTED,
    EXIT_STOPPED_WITHOUT_CHECKPOINT,
    REASON_CHECKPOINT_REQUEST,
    REASON_SIGTERM,
    REASON_SPOT_INTERRUPTION,
    CheckpointedJob,
    CheckpointInterval,
    CheckpointStore,
    CheckpointStoreUnavailable,
    InputError,
    InstanceMetadata,
    InterruptionWatcher,
    MetadataUnavailable,
    RuntimeConfig,
    Stopped,
    run_job,
)
from spot_hpc.ledger import Stage
from spot_hpc.placement import request_checkpoint

from spotctl.drill.metadata_server import TOKEN_PATH, MetadataStandIn

from .conftest import BUCKET, URI, EventRecorder, S3Passthrough, S3Refusing, make_job, sigterm_unhandled


def unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def counting_job(job: CheckpointedJob, units: int, start: int = 0) -> int:
    """A job loop over integer units whose state is the count done."""
    done = start
    while done < units:
        done += 1
        job.step(lambda: str(done).encode(), progress=done / units)  # noqa: B023 - called at once
    return done


POLL_MUST_BE = "SPOT_CHECKPOINT_POLL_SECONDS must be a number from 0.01 to 60"


def test_interval_is_chosen_from_checkpoint_cost_within_bounds() -> None:
    # GIVEN the default policy (2 % overhead, 60..900 s) and a fixed one
    policy = CheckpointInterval()
    # WHEN / THEN a cheap checkpoint is taken every minute, an expensive one rarely, a fixed one as set
    assert policy.after_save(0.1) == 60.0
    assert policy.after_save(3.0) == pytest.approx(150.0)
    assert policy.after_save(60.0) == 900.0
    assert CheckpointInterval(fixed_seconds=5.0).after_save(60.0) == 5.0


def test_config_from_environment_names_the_part() -> None:
    # GIVEN the variables AWS Batch sets for a multi-node job, an array shard, and a plain job
    node = RuntimeConfig.from_environ({"AWS_BATCH_JOB_NODE_INDEX": "2", "AWS_BATCH_JOB_NUM_NODES": "4"})
    shard = RuntimeConfig.from_environ({"AWS_BATCH_JOB_ARRAY_INDEX": "5", "SPOT_CHECKPOINT_PARTS": "8"})
    plain = RuntimeConfig.from_environ({"AWS_EC2_METADATA_DISABLED": "true", "SPOT_CHECKPOINT_POLL_SECONDS": "0.2"})
    main_node = RuntimeConfig.from_environ(
        {"AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": "4", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0"}
    )
    # THEN checkpoints are keyed by node or shard, never by job id, and only the main node is told it is
    assert (main_node.part, main_node.is_main_node, node.is_main_node, plain.is_main_node) == (
        "node-0",
        True,
        False,
        False,
    )
    assert (node.part, node.part_index, node.parts_total) == ("node-2", 2, 4)
    assert (shard.part, shard.part_index, shard.parts_total) == ("shard-5", 5, 8)
    assert (plain.part, plain.parts_total, plain.metadata_endpoint, plain.poll_seconds) == ("main", 1, None, 0.2)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "5s"}, f"{POLL_MUST_BE}, not '5s'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "0"}, f"{POLL_MUST_BE}, not '0'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "1_0"}, f"{POLL_MUST_BE}, not '1_0'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "\uff15"}, POLL_MUST_BE),
        # Back-to-back polling, and a look so rare that a two-minute Spot notice can be seen too late to checkpoint
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "1e-9"}, f"{POLL_MUST_BE}, not '1e-9'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "0.009"}, f"{POLL_MUST_BE}, not '0.009'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "61"}, f"{POLL_MUST_BE}, not '61'"),
        ({"SPOT_CHECKPOINT_POLL_SECONDS": "1e308"}, f"{POLL_MUST_BE}, not '1e308'"),
        (
            {"SPOT_CHECKPOINT_INTERVAL_SECONDS": "-60"},
            "SPOT_CHECKPOINT_INTERVAL_SECONDS must be a number of at least 0",
        ),
        ({"SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS": "\u0666\u0660"}, "SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS must be a"),
        ({"SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS": "inf"}, "SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS must be a number"),
        ({"SPOT_CHECKPOINT_MAX_OVERHEAD": "2%"}, r"SPOT_CHECKPOINT_MAX_OVERHEAD must be a number in \(0, 1\]"),
        ({"SPOT_CHECKPOINT_MAX_OVERHEAD": "0"}, r"SPOT_CHECKPOINT_MAX_OVERHEAD must be a number in \(0, 1\]"),
        ({"SPOT_CHECKPOINT_KEEP": "0"}, "SPOT_CHECKPOINT_KEEP must be a whole number of at least 1, not '0'"),
        ({"SPOT_CHECKPOINT_KEEP": "2.5"}, "SPOT_CHECKPOINT_KEEP must be a whole number of at least 1, not '2.5'"),
        (
            {"AWS_BATCH_JOB_NODE_INDEX": "1_0", "AWS_BATCH_JOB_NUM_NODES": "16"},
            "AWS_BATCH_JOB_NODE_INDEX must be a whole number of at least 0, not '1_0'",
        ),
        (
            {"AWS_BATCH_JOB_NODE_INDEX": "1", "AWS_BATCH_JOB_NUM_NODES": "four"},
            "AWS_BATCH_JOB_NUM_NODES must be a whole number of at least 1, not 'four'",
        ),
        (
            {"AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": "2", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "-1"},
            "AWS_BATCH_JOB_MAIN_NODE_INDEX must be a whole number of at least 0, not '-1'",
        ),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "\uff13", "SPOT_CHECKPOINT_PARTS": "8"},
            "AWS_BATCH_JOB_ARRAY_INDEX must be a whole number of at least 0, not '\uff13'",
        ),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "3", "SPOT_CHECKPOINT_PARTS": "0"},
            "SPOT_CHECKPOINT_PARTS must be a whole number of at least 1, not '0'",
        ),
        # Settings each readable alone that cannot go together
        (
            {"SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS": "900", "SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS": "60"},
            r"SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS \(900 s\) must not be above SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS "
            r"\(60 s\)",
        ),
        (
            {"SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS": "1200"},
            r"SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS \(1200 s\) must not be above SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS "
            r"\(900 s\)",
        ),
        # An instance metadata endpoint no request can be sent to: the job would never see a Spot notice
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "169.254.169.254"},
            "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// or https:// URL, not '169.254.169.254'",
        ),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http:///latest/"},
            "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// or https:// URL, not 'http:///latest/'",
        ),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://169.254.169.254:80a/"},
            "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// or https:// URL, not 'http://169.254.169.254:80a/'",
        ),
        # A checkpoint prefix the store cannot take
        ({"CHECKPOINT_URI": "checkpoints/run-1/hpc/"}, "CHECKPOINT_URI: not an s3:// URI: 'checkpoints/run-1/hpc/'"),
        ({"CHECKPOINT_URI": "s3:///checkpoints/"}, "CHECKPOINT_URI: no bucket in 's3:///checkpoints/'"),
        ({"CHECKPOINT_URI": "s3://bucket/"}, r"CHECKPOINT_URI \('s3://bucket/'\) has no key prefix"),
        (
            {"AWS_BATCH_JOB_NODE_INDEX": "4", "AWS_BATCH_JOB_NUM_NODES": "4"},
            r"AWS_BATCH_JOB_NODE_INDEX \(4\) must be below AWS_BATCH_JOB_NUM_NODES \(4\): parts are numbered from 0",
        ),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "8", "SPOT_CHECKPOINT_PARTS": "8"},
            r"AWS_BATCH_JOB_ARRAY_INDEX \(8\) must be below SPOT_CHECKPOINT_PARTS \(8\)",
        ),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "1"},
            r"AWS_BATCH_JOB_ARRAY_INDEX \(1\) must be below SPOT_CHECKPOINT_PARTS \(1\): parts are numbered from 0, "
            "and Batch tells a shard its index, not the array size",
        ),
    ],
    ids=[
        "poll-with-a-unit",
        "poll-zero",
        "poll-underscore",
        "poll-fullwidth",
        "poll-back-to-back",
        "poll-under-a-hundredth",
        "poll-over-a-minute",
        "poll-overflowing",
        "interval-negative",
        "min-interval-arabic-indic",
        "max-interval-infinite",
        "overhead-percent",
        "overhead-zero",
        "keep-zero",
        "keep-a-fraction",
        "node-index-underscore",
        "num-nodes-a-word",
        "main-node-negative",
        "array-index-fullwidth",
        "parts-zero",
        "min-interval-above-max",
        "min-interval-above-the-default-max",
        "metadata-endpoint-without-a-scheme",
        "metadata-endpoint-without-a-host",
        "metadata-endpoint-port-not-a-number",
        "checkpoint-uri-not-s3",
        "checkpoint-uri-no-bucket",
        "checkpoint-uri-a-bucket-root",
        "node-index-past-num-nodes",
        "array-index-past-parts",
        "array-index-past-the-default-parts",
    ],
)
def test_a_runtime_setting_it_cannot_use_is_an_input_error_naming_it(environ: dict[str, str], message: str) -> None:
    # GIVEN a job definition (or Batch) giving the runtime a value it cannot work with: a word or a unit (a
    # ValueError's traceback before), ``1_0`` or the digits of another script (read by int() and float() as numbers),
    # or a 0 or a negative number (a 0 was replaced by the default without a word)
    # WHEN / THEN reading the configuration fails with an input error naming the setting and the value, as a job's own
    # setting does: the job reports it in one line and exits 1
    with pytest.raises(InputError, match=message):
        RuntimeConfig.from_environ(environ)


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({}, "http://169.254.169.254/"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": " "}, "http://169.254.169.254/"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[fd00:ec2::254]"}, "http://[fd00:ec2::254]"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1338/"}, "http://127.0.0.1:1338/"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "169.254.169.254", "AWS_EC2_METADATA_DISABLED": "true"}, None),
    ],
    ids=["unset", "blank", "ipv6", "loopback-with-a-port", "disabled"],
)
def test_an_instance_metadata_endpoint_url_is_taken(environ: dict[str, str], endpoint: str | None) -> None:
    # GIVEN an endpoint unset, blank or a URL, or any endpoint with instance metadata turned off
    # WHEN the runtime reads its settings
    config = RuntimeConfig.from_environ(environ)
    # THEN it polls that URL, the default one, or none
    assert config.metadata_endpoint == endpoint


@pytest.mark.parametrize("poll", ["0.01", "60"])
def test_a_poll_from_a_hundredth_of_a_second_to_a_minute_is_taken(poll: str) -> None:
    # GIVEN the shortest and the longest poll the runtime takes
    environ = {"SPOT_CHECKPOINT_POLL_SECONDS": poll}
    # WHEN the runtime reads its settings
    config = RuntimeConfig.from_environ(environ)
    # THEN the job polls at that interval
    assert config.poll_seconds == float(poll)


def test_runtime_settings_in_plain_ascii_are_read_and_blank_ones_take_their_defaults() -> None:
    # GIVEN settings in plain ASCII with whitespace around them, a fixed interval of 0, and settings left blank
    environ = {
        "SPOT_CHECKPOINT_POLL_SECONDS": " 0.5\n",
        "SPOT_CHECKPOINT_INTERVAL_SECONDS": "0",
        "SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS": "1e1",
        "SPOT_CHECKPOINT_MAX_OVERHEAD": ".05",
        "SPOT_CHECKPOINT_KEEP": "\t3",
        "SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS": " ",
        "AWS_BATCH_JOB_ARRAY_INDEX": "",
    }
    # WHEN the configuration is read
    config = RuntimeConfig.from_environ(environ)
    # THEN the numbers are the ones written, a fixed interval of 0 checkpoints after every unit, and blank is unset
    assert (config.poll_seconds, config.keep, config.part, config.parts_total) == (0.5, 3, "main", 1)
    assert config.interval == CheckpointInterval(
        fixed_seconds=0.0, min_seconds=10.0, max_seconds=900.0, max_overhead=0.05
    )


def test_periodic_checkpoints_and_resume_continue_the_count(s3: Any, events: EventRecorder) -> None:
    # GIVEN a job that checkpoints after every unit
    with make_job(s3, events, interval=CheckpointInterval(fixed_seconds=0.0)) as job:
        counting_job(job, 3)
    # THEN each unit was checkpointed with its progress
    saved = events.named("checkpoint_saved")
    assert [event["progress"] for event in saved] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # WHEN a new job starts on the same stage
    with make_job(s3, events) as resumed:
        # THEN it resumes from the last complete checkpoint
        assert resumed.resumed is not None and resumed.resumed.state == b"3"
    assert events.named("resumed")[0]["seq"] == 2


def test_checkpoint_request_stops_job_once_and_is_not_honoured_twice(s3: Any, events: EventRecorder) -> None:
    # GIVEN a checkpoint request from the control plane
    request_id = CheckpointStore(s3, URI).request_checkpoint("rebalance recommendation")
    # WHEN a job works
    with make_job(s3, events) as job, pytest.raises(Stopped) as stopped:
        job.watcher.poll_once()
        counting_job(job, 10)
    # THEN it checkpointed after its first unit and stopped with the recognised exit code
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert stopped.value.stop.reason == REASON_CHECKPOINT_REQUEST
    latest = CheckpointStore(s3, URI).latest()
    assert latest is not None and (latest.state, latest.request_id) == (b"1", request_id)
    # WHEN the resubmitted job starts while the same request is still there
    with make_job(s3, events) as job:
        job.watcher.poll_once()
        done = counting_job(job, 10, start=int(job.resumed.state))  # type: ignore[union-attr]
    # THEN it does not stop again for it, and finishes
    assert done == 10


def test_a_request_to_checkpoint_and_go_on_saves_once_and_keeps_the_job_working(s3: Any, events: EventRecorder) -> None:
    # GIVEN the control plane's request to checkpoint and go on working (EC2 recommends rebalancing the instance: it is
    # at risk, not yet going)
    request_id = CheckpointStore(s3, URI).request_save("rebalance recommendation", attempt=1)
    # WHEN a job of that attempt works, its watcher looking for requests before and after its units
    with make_job(s3, events, attempt=1) as job:
        job.watcher.poll_once()
        done = counting_job(job, 3)
        job.watcher.poll_once()
        done = counting_job(job, 6, start=done)
        stop = job.stop_signal
    # THEN it saved once after its first unit, recording the request, and worked on to its end without stopping
    assert (done, stop) == (6, None)
    saved = events.named("checkpoint_saved")
    assert [(event["reason"], event["progress"]) for event in saved] == [
        (REASON_CHECKPOINT_REQUEST, pytest.approx(1 / 3))
    ]
    latest = CheckpointStore(s3, URI).latest()
    assert latest is not None and (latest.state, latest.request_id) == (b"1", request_id)
    # AND a job resumed from that checkpoint does not save for it again
    with make_job(s3, events, attempt=2) as resumed:
        resumed.watcher.poll_once()
        counting_job(resumed, 6, start=int(resumed.resumed.state))  # type: ignore[union-attr]
    assert len(events.named("checkpoint_saved")) == 1


def test_a_request_to_stop_after_one_to_go_on_stops_the_job(s3: Any, events: EventRecorder) -> None:
    # GIVEN a job that saved for a request to checkpoint and go on
    store = CheckpointStore(s3, URI)
    store.request_save("rebalance recommendation")
    with make_job(s3, events) as job, pytest.raises(Stopped) as stopped:
        job.watcher.poll_once()
        counting_job(job, 2)
        # WHEN the control plane then asks it to checkpoint and stop (the deadline at risk: a requeue)
        stop_id = store.request_checkpoint("requeue to On-Demand")
        job.watcher.poll_once()
        counting_job(job, 6, start=2)
    # THEN it stops at its next unit with a checkpoint recording the second request
    assert stopped.value.code == EXIT_CHECKPOINTED and stopped.value.stop.request_id == stop_id
    latest = store.latest()
    assert latest is not None and (latest.state, latest.request_id) == (b"3", stop_id)


def test_spot_notice_from_instance_metadata_stops_the_job(s3: Any, events: EventRecorder) -> None:
    # GIVEN a job at work on an instance whose metadata then carries a Spot interruption notice
    with MetadataStandIn() as metadata:
        job = make_job(s3, events, metadata=InstanceMetadata(metadata.endpoint))
        # WHEN the job works
        with job, pytest.raises(Stopped) as stopped:
            metadata.post_notice()
            job.watcher.poll_once()
            counting_job(job, 10)
    # THEN it checkpoints and exits with the recognised code; the token was fetched before the notice
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert stopped.value.stop.reason == REASON_SPOT_INTERRUPTION
    assert metadata.requests[0][:2] == ("PUT", "/latest/api/token")
    assert ("GET", "/latest/meta-data/spot/instance-action", 200) in metadata.requests
    assert CheckpointStore(s3, URI).latest().state == b"1"  # type: ignore[union-attr]


def test_instance_metadata_without_notice_and_expired_token() -> None:
    # GIVEN a metadata service without a notice
    with MetadataStandIn() as metadata:
        client = InstanceMetadata(metadata.endpoint)
        # WHEN / THEN no notice (404) is None
        assert client.spot_instance_action() is None
        # WHEN the cached token is no longer valid (401), THEN the client gets a new token once
        client._token = "revoked"
        assert client.spot_instance_action() is None
        assert [method for method, _, _ in metadata.requests].count("PUT") == 2


def test_the_metadata_stand_in_refuses_a_token_past_its_ttl_and_the_client_takes_a_new_one() -> None:
    # GIVEN the stand-in on a clock of the test's, and a client that asked it for a token of 120 s
    now = [1000.0]
    with MetadataStandIn(clock=lambda: now[0]) as metadata:
        client = InstanceMetadata(metadata.endpoint, token_ttl_seconds=120)
        assert client.spot_instance_action() is None
        # WHEN the token's 120 s have passed on the stand-in's clock (the client, by its own, still holds it)
        now[0] += 120
        assert client.spot_instance_action() is None
    # THEN the stand-in refused it (401), as IMDS refuses an expired token, and the client took a new one and looked
    # again, where before the stand-in took any token it had ever given
    assert [status for method, _, status in metadata.requests if method == "GET"] == [404, 401, 404]
    assert [method for method, _, _ in metadata.requests].count("PUT") == 2


@pytest.mark.parametrize("ttl", ["²", "0", "21601", "1_0", ""])
def test_the_metadata_stand_in_refuses_a_token_ttl_imds_would_refuse(ttl: str) -> None:
    # GIVEN the stand-in for the instance metadata service
    with MetadataStandIn() as metadata:
        # WHEN a token is asked for with a TTL that is not 1-21600 seconds in ASCII digits
        request = urllib.request.Request(
            f"{metadata.endpoint.rstrip('/')}{TOKEN_PATH}",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
    # THEN it answers 400, as IMDS does, rather than dropping the connection
    assert refused.value.code == 400


def test_unreachable_metadata_service_keeps_the_job_working(s3: Any, events: EventRecorder) -> None:
    # GIVEN a metadata endpoint nobody listens on (not on EC2, or the hop limit blocks the container)
    unreachable = InstanceMetadata(f"http://127.0.0.1:{unused_loopback_port()}/", timeout=0.2)
    with pytest.raises(MetadataUnavailable):
        unreachable.spot_instance_action()
    job = make_job(s3, events, metadata=unreachable)
    # WHEN the job works and the watcher polls
    with job:
        assert job.watcher.poll_once() is None
        done = counting_job(job, 5)
    # THEN nothing stopped it
    assert done == 5
    # AND a checkpoint request still reaches a job whose metadata service is unreachable
    CheckpointStore(s3, URI).request_checkpoint("requeue to on-demand")
    with make_job(s3, events, metadata=unreachable) as job, pytest.raises(Stopped) as stopped:
        job.watcher.poll_once()
        counting_job(job, 5)
    assert stopped.value.code == EXIT_CHECKPOINTED


def test_sigterm_checkpoints_and_restores_the_previous_handler(s3: Any, events: EventRecorder) -> None:
    # GIVEN a running job
    previous = signal.getsignal(signal.SIGTERM)
    with make_job(s3, events) as job, pytest.raises(Stopped) as stopped:
        # WHEN Batch (or docker stop) sends SIGTERM mid-run
        os.kill(os.getpid(), signal.SIGTERM)
        counting_job(job, 10)
    # THEN the job checkpoints its first unit and exits with the recognised code
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert stopped.value.stop.reason == REASON_SIGTERM
    assert CheckpointStore(s3, URI).latest().state == b"1"  # type: ignore[union-attr]
    assert signal.getsignal(signal.SIGTERM) == previous


def test_second_interruption_during_the_checkpoint_does_not_break_it(s3: Any, events: EventRecorder) -> None:
    # GIVEN a job whose state serialisation is under way when more interruptions arrive
    def snapshot_hit_by_more_interruptions() -> bytes:
        os.kill(os.getpid(), signal.SIGTERM)
        job.watcher.trigger(REASON_SPOT_INTERRUPTION, "second notice")
        return b"state after unit"

    with make_job(s3, events) as job, pytest.raises(Stopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
        # WHEN the job checkpoints on the first SIGTERM and a second SIGTERM and a notice land during the write
        job.step(snapshot_hit_by_more_interruptions, progress=0.5)
    # THEN the checkpoint is complete and correct, the first reason is reported, and the exit code is the usual one
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert stopped.value.stop.reason == REASON_SIGTERM
    assert job.watcher.signals_received == 2
    latest = CheckpointStore(s3, URI).latest()
    assert latest is not None and (latest.state, latest.progress) == (b"state after unit", 0.5)
    assert len(events.named("checkpoint_saved")) == 1


def test_notice_during_periodic_checkpoint_stops_right_after_it(s3: Any, events: EventRecorder) -> None:
    # GIVEN a periodic checkpoint in progress when a Spot notice arrives
    def snapshot_with_notice() -> bytes:
        job.watcher.trigger(REASON_SPOT_INTERRUPTION, "terminate")
        return b"unit 1"

    job = make_job(s3, events, interval=CheckpointInterval(fixed_seconds=0.0))
    with job, pytest.raises(Stopped) as stopped:
        # WHEN the unit completes
        job.step(snapshot_with_notice, progress=0.1)
    # THEN the job stops at once without writing the same state twice
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert [event["reason"] for event in events.named("checkpoint_saved")] == ["periodic"]


class BrokenPuts(S3Passthrough):
    def put_object(self, **kwargs: Any) -> Any:
        raise ConnectionError("S3 unreachable")


def test_failed_checkpoint_on_stop_reports_work_lost(s3: Any, events: EventRecorder) -> None:
    # GIVEN a job whose checkpoint writes fail
    store = CheckpointStore(BrokenPuts(s3), URI)
    job = CheckpointedJob(store, interval=CheckpointInterval(fixed_seconds=0.0), events=events)
    with job, pytest.raises(Stopped) as stopped:
        # WHEN periodic checkpoints fail, the job keeps working; then it is told to stop
        job.step(lambda: b"1", progress=0.1)
        job.watcher.trigger(REASON_SPOT_INTERRUPTION, "terminate")
        job.step(lambda: b"2", progress=0.2)
    # THEN it exits with the code that tells the control plane no checkpoint was written
    assert stopped.value.code == EXIT_STOPPED_WITHOUT_CHECKPOINT
    assert len(events.named("checkpoint_failed")) == 3  # one periodic, two attempts on stop
    assert CheckpointStore(s3, URI).latest() is None


def test_job_without_checkpoint_uri_runs_and_reports_lost_work_on_stop(events: EventRecorder) -> None:
    # GIVEN a job started without CHECKPOINT_URI and with instance metadata disabled
    job = CheckpointedJob.from_environment(None, {"AWS_EC2_METADATA_DISABLED": "true"}, events=events)
    with job:
        assert counting_job(job, 3) == 3
        job.watcher.trigger(REASON_SIGTERM, "test")
        with pytest.raises(Stopped) as stopped:
            counting_job(job, 4, start=3)
    assert stopped.value.code == EXIT_STOPPED_WITHOUT_CHECKPOINT


def test_finish_cleans_single_part_stage(s3: Any, events: EventRecorder) -> None:
    # GIVEN a single-part stage with checkpoints and a request
    with make_job(s3, events, interval=CheckpointInterval(fixed_seconds=0.0)) as job:
        counting_job(job, 3)
        CheckpointStore(s3, URI).request_checkpoint("left over")
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/").get("KeyCount") > 0
        # WHEN it finishes
        job.finish()
    # THEN its checkpoints are gone
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/").get("KeyCount") == 0


def test_finish_of_a_part_keeps_a_final_marker_so_a_rerun_skips_it(s3: Any, events: EventRecorder) -> None:
    # GIVEN node 1 of a two-node stage finishing its part
    with make_job(s3, events, part="node-1", parts_total=2, interval=CheckpointInterval(fixed_seconds=0.0)) as job:
        counting_job(job, 3)
        job.finish()
    # WHEN the stage is resubmitted (another node was reclaimed)
    with make_job(s3, events, part="node-1", parts_total=2) as rerun:
        # THEN node 1 sees it is already done, and the stage progress counts it
        assert rerun.resumed is not None and rerun.resumed.final
    store = CheckpointStore(s3, URI)
    assert len(store._list(store.prefix)) == 2  # one small final checkpoint: payload + manifest
    # WHEN the control plane settles the successful stage
    store.cleanup()
    # THEN nothing is left
    assert store._list(store.prefix) == []


def test_finish_of_a_shard_that_does_not_know_the_part_count_leaves_the_other_parts_checkpoints(
    s3: Any, events: EventRecorder
) -> None:
    # GIVEN shard 1 of an array stage midway, and shard 0 told its index but not the array size (parts_total 1)
    CheckpointStore(s3, URI, part="shard-1").save(b"half way", 0.5)
    with make_job(s3, events, part="shard-0", interval=CheckpointInterval(fixed_seconds=0.0)) as job:
        counting_job(job, 3)
        # WHEN shard 0 finishes
        job.finish()
    # THEN shard 1's checkpoint is still there (only the stage's end may wipe it), and shard 0 kept a final one
    assert CheckpointStore(s3, URI, part="shard-1").latest().state == b"half way"  # type: ignore[union-attr]
    assert CheckpointStore(s3, URI, part="shard-0").latest().final  # type: ignore[union-attr]


@pytest.mark.parametrize("code", ["SlowDown", "AccessDenied"])
def test_failed_cleanup_after_the_outputs_are_written_does_not_fail_the_job(
    s3: Any, events: EventRecorder, code: str
) -> None:
    # GIVEN a single-part job that has done its work, on a client whose deletes fail
    store = CheckpointStore(S3Refusing(s3, "delete_objects", code), URI)
    job = CheckpointedJob(store, interval=CheckpointInterval(fixed_seconds=0.0), events=events)
    with job:
        counting_job(job, 3)
        # WHEN it finishes
        job.finish()
    # THEN finishing succeeds (the control plane and the bucket's lifecycle rule remove what is left), and says so
    assert len(events.named("finished")) == 1
    assert len(events.named("cleanup_failed")) == 1
    assert CheckpointStore(s3, URI).latest() is not None  # left for the control plane's cleanup


def test_watcher_ignores_a_broken_request_reader(events: EventRecorder) -> None:
    # GIVEN a store whose reads fail (S3 briefly unavailable)
    class Unreadable:
        def pending_request(self) -> None:
            raise ConnectionError("throttled")

    watcher = InterruptionWatcher(metadata=None, store=Unreadable(), poll_seconds=0.01)  # type: ignore[arg-type]
    # WHEN / THEN polling survives and nothing stops the job
    assert watcher.poll_once() is None


class FailingPrune(S3Passthrough):
    """An S3 client whose DeleteObjects fails outright (throttled, network blip)."""

    def delete_objects(self, **kwargs: Any) -> Any:
        raise ConnectionError("SlowDown")


def test_failed_prune_after_a_committed_checkpoint_still_counts_as_saved(s3: Any, events: EventRecorder) -> None:
    # GIVEN a part with an old checkpoint to prune, on a client whose deletes fail
    CheckpointStore(s3, URI, keep=1).save(b"old", 0.1)
    store = CheckpointStore(FailingPrune(s3), URI, keep=1)
    job = CheckpointedJob(store, interval=CheckpointInterval(fixed_seconds=3600), events=events)
    # WHEN the job is told to stop and checkpoints
    with job, pytest.raises(Stopped) as stopped:
        job.watcher.trigger(REASON_SIGTERM, "test")
        job.step(lambda: b"new state", progress=0.5)
    # THEN the save counts: the checkpoint exit code, one save, no failed save, and the prune failure is reported
    assert stopped.value.code == EXIT_CHECKPOINTED
    assert len(events.named("checkpoint_saved")) == 1
    assert events.named("checkpoint_failed") == []
    assert len(events.named("prune_failed")) == 1
    assert CheckpointStore(s3, URI).latest().state == b"new state"  # type: ignore[union-attr]


class TruncatingMetadataServer:
    """A loopback HTTP server that promises 40 bytes and sends 5 (http.client.IncompleteRead for the client)."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nAQAEA")

    def close(self) -> None:
        self._socket.close()


def test_garbled_metadata_answer_is_unavailable_and_the_job_starts(s3: Any, events: EventRecorder) -> None:
    # GIVEN a metadata service whose answers are cut short
    server = TruncatingMetadataServer()
    try:
        metadata = InstanceMetadata(server.endpoint, timeout=1.0)
        # WHEN / THEN the client reports it unavailable rather than raising http.client's error
        with pytest.raises(MetadataUnavailable):
            metadata.spot_instance_action()
        # AND a job polling it starts and works
        with make_job(s3, events, metadata=metadata) as job:
            assert counting_job(job, 2) == 2
    finally:
        server.close()


class FlakyMetadata:
    """Instance metadata whose first calls fail as given, then carry a Spot notice."""

    timeout = 0.1

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def spot_instance_action(self) -> dict[str, str] | None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"action": "terminate", "time": "soon"}


def test_watcher_thread_survives_an_unexpected_error_in_a_poll() -> None:
    # GIVEN a watcher whose first two polls raise something nobody expected
    metadata = FlakyMetadata(RuntimeError("bug"), RuntimeError("bug"))
    watcher = InterruptionWatcher(metadata=metadata, store=None, poll_seconds=0.01)  # type: ignore[arg-type]
    # WHEN it runs (first poll synchronous, then on its thread)
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while watcher.stop_signal is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.close()
    # THEN it kept polling and saw the notice
    assert watcher.stop_signal is not None and watcher.stop_signal.reason == REASON_SPOT_INTERRUPTION


class StallingReads(S3Passthrough):
    """An S3 client whose GetObject hangs, once told to, until released (30 s at most, so no test hangs)."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.stalling = threading.Event()
        self.stalled = threading.Event()  # a read is hanging now
        self.released = threading.Event()

    def get_object(self, **kwargs: Any) -> Any:
        if self.stalling.is_set():
            self.stalled.set()
            self.released.wait(timeout=30)
        return self._s3.get_object(**kwargs)


def test_spot_notice_is_noticed_while_the_checkpoint_request_read_hangs(s3: Any) -> None:
    # GIVEN a watcher whose read of the checkpoint request from S3 hangs
    reads = StallingReads(s3)
    noticed = threading.Event()
    with MetadataStandIn() as metadata:
        watcher = InterruptionWatcher(
            metadata=InstanceMetadata(metadata.endpoint),
            store=CheckpointStore(reads, URI),
            poll_seconds=0.01,
            on_signal=lambda stop: noticed.set(),
        )
        watcher.start()
        try:
            reads.stalling.set()
            assert reads.stalled.wait(timeout=5)
            # WHEN EC2 posts the Spot interruption notice
            metadata.post_notice()
            # THEN the watcher reports it while the S3 read still hangs (it is released only below)
            assert noticed.wait(timeout=5)
            assert watcher.stop_signal is not None and watcher.stop_signal.reason == REASON_SPOT_INTERRUPTION
        finally:
            reads.released.set()
            watcher.close()


def test_the_job_s3_client_gives_up_on_a_hung_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a job run as its container runs it, with the client options boto3 is given recorded
    options: list[dict[str, Any]] = []
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: options.append(kwargs))
    # WHEN it runs
    assert run_job("probe", lambda s3, environ: None) == 0
    # THEN its S3 client waits for a connection and for an answer far less than the two-minute Spot warning
    config = options[0]["config"]
    assert config.connect_timeout <= 10 and config.read_timeout <= 30


def test_one_failed_metadata_poll_does_not_pause_notice_polling() -> None:
    # GIVEN a metadata service that misses one answer, then has a notice
    metadata = FlakyMetadata(MetadataUnavailable("timed out"))
    watcher = InterruptionWatcher(metadata=metadata, store=None)  # type: ignore[arg-type]
    # WHEN the watcher polls twice
    assert watcher.poll_once() is None
    stop = watcher.poll_once()
    # THEN the second poll asked again and saw the notice
    assert stop is not None and stop.reason == REASON_SPOT_INTERRUPTION


def test_metadata_polling_backs_off_after_consecutive_failures_and_resets_on_success() -> None:
    # GIVEN a metadata service that fails three times in a row
    metadata = FlakyMetadata(*(MetadataUnavailable("unreachable") for _ in range(3)))
    watcher = InterruptionWatcher(metadata=metadata, store=None)  # type: ignore[arg-type]
    # WHEN the watcher polls five times
    for _ in range(5):
        watcher.poll_once()
    # THEN it asked three times, then backed off
    assert metadata.calls == 3
    # WHEN the back-off is over and the service answers (here: with a notice)
    watcher._metadata_retry_at = 0.0
    # THEN polling resumes and the failure count is reset
    assert watcher.poll_once() is not None
    assert watcher._metadata_failures == 0


def test_request_for_an_earlier_attempt_does_not_stop_the_replacement(s3: Any, events: EventRecorder) -> None:
    # GIVEN the control plane asked attempt 1 to checkpoint, then placed attempt 2 which starts first
    CheckpointStore(s3, URI).request_checkpoint("requeue to on-demand", attempt=1)
    replacement = CheckpointedJob.from_environment(
        s3, {"CHECKPOINT_URI": URI, "ATTEMPT": "2", "AWS_EC2_METADATA_DISABLED": "true"}, events=events
    )
    # WHEN the replacement works
    with replacement:
        replacement.watcher.poll_once()
        done = counting_job(replacement, 3)
    # THEN the request was not its own: it finished
    assert done == 3
    # AND the Spot job of attempt 1, and a job that does not know its attempt, still see it
    for attempt in (1, None):
        watcher = InterruptionWatcher(metadata=None, store=CheckpointStore(s3, URI), attempt=attempt)
        stop = watcher.poll_once()
        assert stop is not None and stop.reason == REASON_CHECKPOINT_REQUEST


def test_request_without_an_attempt_applies_to_every_attempt(s3: Any, events: EventRecorder) -> None:
    # GIVEN a request from an older control plane, without the attempt
    CheckpointStore(s3, URI).request_checkpoint("old control plane")
    # WHEN a job of attempt 3 works
    job = CheckpointedJob.from_environment(
        s3, {"CHECKPOINT_URI": URI, "ATTEMPT": "3", "AWS_EC2_METADATA_DISABLED": "true"}, events=events
    )
    with job, pytest.raises(Stopped) as stopped:
        job.watcher.poll_once()
        counting_job(job, 3)
    # THEN it stops for it, as before
    assert stopped.value.stop.reason == REASON_CHECKPOINT_REQUEST


@pytest.mark.parametrize(
    "raw",
    ["\u00b2", "\u0663", "\uff13", "3\u00a0"],
    ids=["superscript-two", "arabic-indic-three", "fullwidth-three", "no-break-space"],
)
def test_an_attempt_that_is_not_ascii_digits_is_unknown_and_every_request_applies(
    s3: Any, events: EventRecorder, raw: str
) -> None:
    # GIVEN a request for attempt 1, and a job whose ATTEMPT is not ASCII digits: "²" passed str.isdigit() and crashed
    # int() with a ValueError, and the other digits (or a no-break space) were read as attempt 3, which ignores it
    CheckpointStore(s3, URI).request_checkpoint("requeue to on-demand", attempt=1)
    environ = {"CHECKPOINT_URI": URI, "ATTEMPT": raw, "AWS_EC2_METADATA_DISABLED": "true"}
    # WHEN the job starts and works
    job = CheckpointedJob.from_environment(s3, environ, events=events)
    with job, pytest.raises(Stopped) as stopped:
        job.watcher.poll_once()
        counting_job(job, 3)
    # THEN its attempt is unknown, as for a job run by hand, so the request applies to it: it stopped for it
    assert RuntimeConfig.from_environ(environ).attempt is None
    assert stopped.value.stop.reason == REASON_CHECKPOINT_REQUEST
    # AND an ATTEMPT in ASCII digits, whitespace around it, is still the attempt
    assert RuntimeConfig.from_environ({"ATTEMPT": " 3\n"}).attempt == 3


def test_control_plane_request_names_the_attempt_it_is_for(s3: Any) -> None:
    # GIVEN a stage on its attempt 4
    stage = Stage("run-7", "preprocess", 0, 1.0, True, 1, attempt=4, checkpoint_uri=URI)
    # WHEN the control plane asks it to checkpoint
    request_checkpoint(SimpleNamespace(s3=s3), stage, "interruption warning")  # type: ignore[arg-type]
    # THEN jobs read the attempt from the request
    request = CheckpointStore(s3, URI).pending_request()
    assert request is not None and request.attempt == 4


class DuringCheckpointRead(S3Passthrough):
    """An S3 client that, while a job reads its checkpoint (at the manifest), makes something happen once."""

    def __init__(self, s3: Any, happening: Callable[[], object]) -> None:
        super().__init__(s3)
        self.happening = happening
        self.happened = False

    def get_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith("/manifest.json") and not self.happened:
            self.happened = True
            self.happening()
        return self._s3.get_object(**kwargs)


def test_sigterm_while_the_checkpoint_is_read_stops_the_job_before_its_first_unit(
    s3: Any, events: EventRecorder
) -> None:
    # GIVEN a part checkpointed after 3 units, a process that ignores a SIGTERM it has no handler for (as Python does as
    # a container's PID 1 without an init), and a SIGTERM that comes while the next attempt reads the checkpoint
    CheckpointStore(s3, URI).save(b"3", 0.3)
    reads = DuringCheckpointRead(s3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    job = CheckpointedJob(CheckpointStore(reads, URI), interval=CheckpointInterval(fixed_seconds=3600), events=events)
    with sigterm_unhandled():
        # WHEN that attempt starts
        with pytest.raises(Stopped) as stopped:
            job.start()
        after = signal.getsignal(signal.SIGTERM)
    # THEN it stopped as soon as the checkpoint was read, with the recognised code (before, the signal was lost: the job
    # worked on to the end here, and in its container until Batch's SIGKILL)
    assert reads.happened and events.named("resumed")[0]["seq"] == 0
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SIGTERM)
    # AND, having done no work, it wrote nothing: the next attempt resumes the checkpoint it resumed
    assert events.named("checkpoint_saved") == []
    latest = CheckpointStore(s3, URI).latest()
    assert latest is not None and (latest.seq, latest.state) == (0, b"3")
    # AND the process's own disposition is back once the job is over
    assert after == signal.SIG_IGN


def test_spot_notice_posted_while_the_checkpoint_is_read_stops_the_job_at_once(s3: Any, events: EventRecorder) -> None:
    # GIVEN a part checkpointed after 3 units, and EC2 posting the Spot notice while the next attempt reads the
    # checkpoint, whose watcher would poll again only an hour after its first look
    CheckpointStore(s3, URI).save(b"3", 0.3)
    with MetadataStandIn() as metadata:
        reads = DuringCheckpointRead(s3, metadata.post_notice)
        job = make_job(reads, events, metadata=InstanceMetadata(metadata.endpoint), poll_seconds=3600)
        # WHEN that attempt resumes
        with pytest.raises(Stopped) as stopped:
            job.start()
    # THEN the watcher's first look, once the checkpoint is loaded, saw the notice, which stays posted: the job
    # stopped at once, as a job started on an instance already marked does, and its checkpoint is as it was
    assert reads.happened and events.named("resumed")[0]["seq"] == 0
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SPOT_INTERRUPTION)
    latest = CheckpointStore(s3, URI).latest()
    assert latest is not None and (latest.seq, latest.state) == (0, b"3")


def test_a_job_whose_checkpoint_bucket_is_missing_leaves_the_sigterm_handler_as_it_was(
    s3: Any, events: EventRecorder
) -> None:
    # GIVEN a job whose checkpoint bucket does not exist
    previous = signal.getsignal(signal.SIGTERM)
    job = CheckpointedJob(CheckpointStore(s3, "s3://no-such-checkpoint-bucket/checkpoints/run-7/x/"), events=events)
    # WHEN it starts
    with pytest.raises(CheckpointStoreUnavailable):
        job.start()
    # THEN it fails (exit 1 in its container) with the handler it had before the checkpoint read put back
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.parametrize(
    ("checkpoint_uri", "exit_code"),
    [(URI, EXIT_CHECKPOINTED), (None, EXIT_STOPPED_WITHOUT_CHECKPOINT)],
    ids=["with-checkpoints", "without-checkpoints"],
)
def test_run_job_keeps_a_sigterm_sent_before_the_job_starts_and_the_job_stops_at_once(
    s3: Any, events: EventRecorder, monkeypatch: pytest.MonkeyPatch, checkpoint_uri: str | None, exit_code: int
) -> None:
    # GIVEN a process that ignores a SIGTERM it has no handler for (as Python does as a container's PID 1), and a job
    # run by run_job that is sent SIGTERM once before it starts its CheckpointedJob (while it reads its settings)
    def run(client: Any, environ: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        store = CheckpointStore(client, checkpoint_uri) if checkpoint_uri else None
        job = CheckpointedJob(store, interval=CheckpointInterval(fixed_seconds=3600), events=events)
        with job:
            counting_job(job, 10)

    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: s3)
    with sigterm_unhandled():
        # WHEN the job runs
        with pytest.raises(Stopped) as stopped:
            run_job("counting", run)
        after = signal.getsignal(signal.SIGTERM)
    # THEN it stopped as it started, before reading its checkpoint or doing any work, with the code of a stop with
    # nothing left unsaved (86), or of one without checkpoints (87); the signal counted once (before, it read its
    # checkpoint, worked a unit and checkpointed it; and before that, the signal was lost)
    assert (stopped.value.code, stopped.value.stop.reason) == (exit_code, REASON_SIGTERM)
    assert events.named("started") == [] and events.named("checkpoint_saved") == []
    assert CheckpointStore(s3, URI).latest() is None
    assert events.named("stopping")[0]["signals_received"] == 1
    # AND the process's own disposition is back once the job is over
    assert after == signal.SIG_IGN


def test_a_sigterm_while_waiting_stops_the_job_before_a_default_stop_timeout_runs_out(
    s3: Any, events: EventRecorder
) -> None:
    # GIVEN node 1 of a two-node stage whose work is done, waiting for something not done yet and looking every 35 s (a
    # poll the runtime takes), on an instance whose ECS agent kills a container 30 s after its SIGTERM (the default)
    job = make_job(s3, events, part="node-1", parts_total=2, poll_seconds=35)
    looks: list[float] = []

    def not_done() -> bool:
        looks.append(time.monotonic())
        return False

    sigterm = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGTERM))
    with job:
        job.finish()
        started = time.monotonic()
        # WHEN Batch sends SIGTERM while the job waits between two looks
        sigterm.start()
        try:
            with pytest.raises(Stopped) as stopped:
                job.wait_until(not_done, "the other node")
        finally:
            sigterm.cancel()
    waited = time.monotonic() - started
    # THEN it stops as a stop does (exit 86, its final checkpoint as it was) at once, long before the SIGKILL, not when
    # the poll interval is over (before, 35 s after it began to wait: killed by then, an application error)
    assert (stopped.value.code, stopped.value.stop.reason) == (EXIT_CHECKPOINTED, REASON_SIGTERM)
    assert waited < 5 and len(looks) == 1
    latest = CheckpointStore(s3, URI, part="node-1").latest()
    assert latest is not None and latest.final and len(events.named("checkpoint_saved")) == 1
