"""The pipeline state machine gateway (spot_hpc.stepfunctions) against botocore's Stubber: the exact requests, and
what a duplicate start or an answer to a task that is over comes back as."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from spot_hpc.stepfunctions import PipelineStateMachine

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:pipeline"


@pytest.fixture
def stubbed() -> tuple[PipelineStateMachine, Stubber]:
    client = boto3.client("stepfunctions", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.activate()
    return PipelineStateMachine(client, MACHINE), stubber


def test_a_run_starts_one_execution_named_by_its_run_id(stubbed):
    # GIVEN Step Functions that accepts the first start and refuses the second (same name)
    gateway, stubber = stubbed
    request = {
        "stateMachineArn": MACHINE,
        "name": "run-1",
        "input": '{"run_id": "run-1", "stage_timeout_seconds": 3600}',
    }
    started = {"executionArn": f"{MACHINE.replace(':stateMachine:', ':execution:')}:run-1", "startDate": "2026-01-05"}
    stubber.add_response("start_execution", started, request)
    stubber.add_client_error("start_execution", "ExecutionAlreadyExists", expected_params=request)
    # WHEN the run is started twice (the upload event came twice)
    first, second = gateway.start("run-1", 3600), gateway.start("run-1", 3600)
    # THEN the second finds the first's execution instead of failing
    assert first == (started["executionArn"], False)
    assert second == (started["executionArn"], True)
    stubber.assert_no_pending_responses()


def test_answers_succeed_or_fail_the_task_and_a_task_that_is_over_is_not_an_error(stubbed):
    # GIVEN a task that takes a success, one that takes a failure, and one whose token is gone
    gateway, stubber = stubbed
    stubber.add_response("send_task_success", {}, {"taskToken": "t-1", "output": '{"stage": "hpc"}'})
    stubber.add_response("send_task_failure", {}, {"taskToken": "t-2", "error": "StageFailed", "cause": "exit 3"})
    stubber.add_client_error("send_task_success", "TaskTimedOut")
    stubber.add_client_error("send_task_success", "ThrottlingException")
    # WHEN / THEN each is answered as its outcome says; only an unexpected error propagates
    assert gateway.answer("t-1", {"stage": "hpc"}) is True
    assert gateway.answer("t-2", None, cause="exit 3") is True
    assert gateway.answer("t-3", {"stage": "hpc"}) is False
    with pytest.raises(ClientError):
        gateway.answer("t-4", {"stage": "hpc"})
    stubber.assert_no_pending_responses()


def test_an_executions_status_is_read_and_a_missing_execution_is_none(stubbed):
    # GIVEN one aborted execution and one that does not exist
    gateway, stubber = stubbed
    arn = f"{MACHINE.replace(':stateMachine:', ':execution:')}:run-1"
    described = {
        "executionArn": arn,
        "stateMachineArn": MACHINE,
        "status": "ABORTED",
        "startDate": "2026-01-05",
    }
    stubber.add_response("describe_execution", described, {"executionArn": arn})
    stubber.add_client_error("describe_execution", "ExecutionDoesNotExist", expected_params={"executionArn": arn})
    # WHEN their status is asked
    statuses = [gateway.execution_status(arn), gateway.execution_status(arn)]
    # THEN the first is ABORTED and the second None
    assert statuses == ["ABORTED", None]
    stubber.assert_no_pending_responses()
