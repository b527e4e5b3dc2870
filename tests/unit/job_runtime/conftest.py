"""Fixtures for the job runtime: an in-process moto S3 with one bucket, and a recorder of runtime events."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spot_checkpoint import CheckpointedJob, CheckpointInterval, CheckpointStore

BUCKET = "checkpoint-tests"
URI = f"s3://{BUCKET}/checkpoints/run-7/preprocess/"


@pytest.fixture
def s3(moto_aws: None) -> Iterator[Any]:
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client


class S3Passthrough:
    """An S3 client passing every call through to moto's; a test's subclass replaces the calls it makes fail."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


class S3Refusing(S3Passthrough):
    """An S3 client whose `operation` (a client method's name) fails with the error `code`; every other call passes."""

    def __init__(self, s3: Any, operation: str, code: str) -> None:
        super().__init__(s3)
        self._operation = operation
        self._code = code

    def __getattr__(self, name: str) -> Any:
        if name != self._operation:
            return super().__getattr__(name)

        def refused(**kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": self._code, "Message": "refused"}}, name)

        return refused


class EventRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


@pytest.fixture
def events() -> EventRecorder:
    return EventRecorder()


@contextmanager
def sigterm_unhandled() -> Iterator[None]:
    """SIGTERM ignored while the block runs, as Python ignores a signal it has no handler for as a container's PID 1
    (an image run without an init): a signal the runtime did not record is then lost, not fatal to the test run. The
    disposition before is put back after."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def make_job(s3: Any, events: EventRecorder, uri: str = URI, **kwargs: Any) -> CheckpointedJob:
    """A job on the stage's checkpoints at `uri` (its part "main" of 1 unless said), checkpointing hourly unless
    said, its events recorded."""
    store = CheckpointStore(s3, uri, part=kwargs.pop("part", "main"), parts_total=kwargs.pop("parts_total", 1))
    return CheckpointedJob(
        store, interval=kwargs.pop("interval", CheckpointInterval(fixed_seconds=3600)), events=events, **kwargs
    )
