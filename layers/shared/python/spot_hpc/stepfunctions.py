"""The pipeline state machine, as the control plane uses it: start a run's execution once, answer a stage's task.

Both calls are made knowing events come at least once: a second start of the same run finds its execution, and an
answer for a task the state machine no longer waits on (timed out, retried with a new token, execution gone) is
not an error.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

# The task is over (its attempt was retried with a new token, timed out, or its execution ended).
_TOKEN_GONE = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
MAX_CAUSE_CHARS = 32_768  # SendTaskFailure's limit


class PipelineStateMachine:
    def __init__(self, client: Any, state_machine_arn: str | None) -> None:
        self._client = client
        self._arn = state_machine_arn

    def start(self, run_id: str, stage_timeout_seconds: int) -> tuple[str, bool]:
        """Starts the run's execution, named by its run id; returns (execution ARN, whether Step Functions refused it
        as existing). The state machine waits on each stage for at most `stage_timeout_seconds` (its
        TimeoutSecondsPath).

        A second start of the same name starts nothing, so a duplicate event starts nothing: Step Functions refuses it
        (ExecutionAlreadyExists), or, while the first runs with the same input, answers with the first's ARN as if it
        had just started it (the flag is then False).
        """
        if not self._arn:
            raise RuntimeError("STATE_MACHINE_ARN is not set for the start-pipeline function")
        try:
            execution_input = {"run_id": run_id, "stage_timeout_seconds": stage_timeout_seconds}
            response = self._client.start_execution(
                stateMachineArn=self._arn, name=run_id, input=json.dumps(execution_input)
            )
            return str(response["executionArn"]), False
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                raise
        return self._arn.replace(":stateMachine:", ":execution:") + f":{run_id}", True

    def execution_status(self, execution_arn: str) -> str | None:
        """RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED; None when there is no such execution."""
        try:
            response = self._client.describe_execution(executionArn=execution_arn)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
                raise
            return None
        return str(response["status"])

    def answer(self, task_token: str, output: dict[str, Any] | None, cause: str = "") -> bool:
        """Succeeds the task with `output`, or fails it with `cause` when `output` is None; False when the state
        machine no longer waits on that token."""
        try:
            if output is not None:
                self._client.send_task_success(taskToken=task_token, output=json.dumps(output))
            else:
                self._client.send_task_failure(taskToken=task_token, error="StageFailed", cause=cause[:MAX_CAUSE_CHARS])
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _TOKEN_GONE:
                raise
            return False
        return True
