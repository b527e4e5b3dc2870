"""The control plane on one machine: embedded AWS, the real template, handlers and state machine, virtual time.

with OfflineControlPlane(trace=..., stage_hours=...) as plane:
    plane.upload("incoming/sample.csv", body, metadata={"deadline-hours": "12"})
    plane.run_until_settled(max_hours=48)
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from spot_hpc import clock as control_plane_clock
from spot_hpc.pipeline import DEFAULT_STAGE_HOURS

from spotctl.offline import adapters, batch_emulator
from spotctl.offline.batch_emulator import BatchEmulator, SpotTrace
from spotctl.offline.eventbus import REGION, Delivery, EventBus, make_event
from spotctl.offline.stack import REPO_ROOT, DeployedStack, deploy
from spotctl.offline.webhook_sink import WebhookSink

DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_TRACE = REPO_ROOT / "data/spot-traces/availability/1-node/aws-02-15-2023/us-east-1a_v100_1.json"
VIRTUAL_EPOCH = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
CLOCK_STEP_MINUTES = 1.0  # how far virtual time moves at a time, unless the caller says otherwise
# Execution history events after which an execution waits on the outside world (a task token, or nothing).
_WAITING_EVENTS = {"TaskSubmitted", "ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut"}


class VirtualClock:
    def __init__(self, start: datetime = VIRTUAL_EPOCH) -> None:
        self.start = start
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, step: timedelta) -> datetime:
        self._now += step
        return self._now

    @property
    def hours(self) -> float:
        return (self._now - self.start).total_seconds() / 3600


class OfflineControlPlane:
    def __init__(
        self,
        trace: Path = DEFAULT_TRACE,
        start_hour: float = 0.0,
        stage_hours: dict[str, float] | None = None,
        template: Path = DEFAULT_TEMPLATE,
        parameters: dict[str, str] | None = None,
        webhook: WebhookSink | None = None,
        failing_stages: dict[str, int] | None = None,
        redeliver_events: bool = False,
        failing_nodes: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.trace = SpotTrace.load(trace, start_hour)
        self.redeliver_events = redeliver_events
        self.stage_hours = stage_hours or dict(DEFAULT_STAGE_HOURS)
        self.failing_stages = failing_stages or {}
        self.failing_nodes = failing_nodes or {}
        self.template = template
        self.parameters = parameters or {}
        self.clock = VirtualClock()
        self.webhook = webhook or WebhookSink()
        self._owns_webhook = webhook is None
        self._uninstall: list[Callable[[], None]] = []
        self._saved_env: dict[str, str] = {}
        self._mock: Any = None
        self.stack: DeployedStack
        self.bus: EventBus
        self.batch: BatchEmulator
        self.aws_calls: adapters.AwsCallRecorder
        self.clock_waits: adapters.VirtualClockWaits

    # ------------------------------------------------------------------ lifecycle
    _running: OfflineControlPlane | None = None  # moto's state is process-wide: one plane at a time

    def __enter__(self) -> OfflineControlPlane:
        from moto import mock_aws

        if OfflineControlPlane._running is not None:
            raise RuntimeError("an offline control plane is already running in this process; stop it first")
        OfflineControlPlane._running = self

        self._saved_env = dict(os.environ)
        # Never a real account: fixed fake credentials, one region.
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "offline",
                "AWS_SECRET_ACCESS_KEY": "offline",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
            }
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)
        self._mock = mock_aws(
            config={
                "stepfunctions": {"execute_state_machine": True},
                "lambda": {"use_docker": False},
                "batch": {"use_docker": False},
            }
        )
        self._mock.start()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        if self._owns_webhook:
            self.webhook.start()
        control_plane_clock.use_clock(self.clock.now)
        self._uninstall.append(lambda: control_plane_clock.use_clock(None))
        self.aws_calls, stop_recording = adapters.record_aws_calls()
        self._uninstall.append(stop_recording)
        self._uninstall.append(adapters.install_job_definition_adapter())
        self._uninstall.append(adapters.install_send_task_failure_adapter())
        self._uninstall.append(adapters.install_task_token_adapter())
        self._uninstall.append(adapters.install_stop_execution_adapter())
        self.clock_waits, stop_clock_waits = adapters.install_virtual_clock_waits(self.clock.now)
        self._uninstall.append(stop_clock_waits)
        self._uninstall.append(adapters.install_price_book_adapter(REPO_ROOT / "data"))
        self._uninstall.append(adapters.install_lambda_adapter(lambda name: self.stack.functions.get(name)))
        self._uninstall.append(batch_emulator.install(lambda: getattr(self, "batch", None)))
        self.stack = deploy(self.template, self.parameters)
        self.bus = EventBus(redeliver=self.redeliver_events)
        self.batch = BatchEmulator(
            self.trace,
            self.stage_hours,
            self.put_event,
            self.clock.now,
            failing_stages=self.failing_stages,
            failing_nodes=self.failing_nodes,
        )
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=self.parameters.get("SlackSecretName", "spot-hpc/slack-webhook"), SecretString=self.webhook.url
        )

    def __exit__(self, *exc: object) -> None:
        for uninstall in reversed(self._uninstall):
            uninstall()
        self._uninstall.clear()
        if self._owns_webhook:
            self.webhook.stop()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        os.environ.clear()
        os.environ.update(self._saved_env)
        OfflineControlPlane._running = None

    # ------------------------------------------------------------------ the outside world
    @property
    def bucket(self) -> str:
        return self.stack.physical_id("IngestBucket")

    def put_event(self, event: dict[str, Any]) -> list[Delivery]:
        """Puts one event on the default bus: the template's rules decide what runs."""
        deliveries = self.bus.put(event)
        self.settle()
        return deliveries

    def upload(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> list[Delivery]:
        """Puts an object and sends its "Object Created" event.

        S3 sends that event to EventBridge for a bucket with EventBridge notifications on; moto's S3 does not.
        """
        s3 = boto3.client("s3", region_name=REGION)
        put = s3.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata or {})
        detail = {
            "version": "0",
            "bucket": {"name": self.bucket},
            "object": {
                "key": key,
                "size": len(body),
                "etag": put["ETag"].strip('"'),
                "version-id": put.get("VersionId"),
                "sequencer": f"{time.monotonic_ns():018X}",
            },
            "request-id": "offline",
            "requester": self.stack.outputs.get("IngestBucketName", "offline"),
            "reason": "PutObject",
        }
        return self.put_event(make_event("aws.s3", "Object Created", detail, [f"arn:aws:s3:::{self.bucket}"]))

    def invoke(self, logical_id: str, event: Any) -> tuple[Any, bool]:
        """Runs one handler as `sam local invoke` would: returns (result or error payload, errored)."""
        physical = self.stack.physical_id(logical_id)
        client = boto3.client("lambda", region_name=REGION)
        response = client.invoke(FunctionName=physical, Payload=json.dumps(event).encode())
        payload = json.loads(response["Payload"].read() or b"null")
        self.settle()
        return payload, bool(response.get("FunctionError"))

    # ------------------------------------------------------------------ time
    @functools.cached_property
    def _sfn(self) -> Any:
        # One client: settle() polls every few milliseconds, and building a client costs more than the call.
        return boto3.client("stepfunctions", region_name=REGION)

    def executions(self) -> list[dict[str, Any]]:
        sfn = self._sfn
        arn = self.stack.physical_id("PipelineStateMachine")
        return [
            e for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn) for e in page["executions"]
        ]

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        sfn = self._sfn
        return [
            e
            for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
            for e in page["events"]
        ]

    def settle(self, timeout_seconds: float = 30.0) -> None:
        """Waits until every execution waits on the outside world (a task token not answered yet, or virtual time for
        a retry) or has ended.

        Step Functions runs executions on threads of their own; virtual time may only move once they are quiet.
        """
        deadline = time.monotonic() + timeout_seconds
        previous: object = None
        quiet_checks = 0
        while time.monotonic() < deadline:
            snapshot = []
            quiet = not adapters.invocation_in_progress()
            for execution in self.executions():
                events = self.history(execution["executionArn"])
                last = events[-1]["type"] if events else "none"
                snapshot.append((execution["executionArn"], execution["status"], len(events), last))
                arn = execution["executionArn"]
                waiting = (
                    last in _WAITING_EVENTS and not (last == "TaskSubmitted" and adapters.answer_untaken(arn))
                ) or self.clock_waits.waiting(arn)
                quiet = quiet and (execution["status"] != "RUNNING" or waiting)
            if quiet and snapshot == previous:
                quiet_checks += 1
                if quiet_checks >= 2:
                    return
            else:
                quiet_checks = 0
            previous = snapshot
            time.sleep(0.003)
        raise RuntimeError("the state machine did not settle (a handler or state is stuck)")

    def step(self, minutes: float = CLOCK_STEP_MINUTES) -> None:
        delta = timedelta(minutes=minutes)
        waits_due = self.clock_waits.due_times()  # read before time moves: none of them can have ended yet
        now = self.clock.advance(delta)
        self.batch.advance(now, delta)
        if self.bus.fire_due_schedules(now) or any(due <= now for due in waits_due):
            self.settle()

    def run_until_settled(self, max_hours: float, step_minutes: float = CLOCK_STEP_MINUTES) -> str:
        """Advances virtual time until every execution has ended (or `max_hours` pass); returns the last status."""
        while self.clock.hours < max_hours:
            executions = self.executions()
            if executions and all(e["status"] != "RUNNING" for e in executions):
                break
            self.step(step_minutes)
        executions = self.executions()
        return executions[-1]["status"] if executions else "NONE"
