"""Everything moto does not do the way AWS does, filled in one place. Each adapter says what AWS does there.

The runtime (runtime.py) installs them around one embedded AWS and removes them after; each has a test under
tests/integration/ (test_offline_adapters.py, test_offline_stack.py) or tests/e2e/.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# CloudFormation: DefinitionSubstitutions
# AWS substitutes ${Name} in a state machine's definition with DefinitionSubstitutions[Name] (values resolved
# like any property). moto's CloudFormation ignores DefinitionSubstitutions; the same semantics are a Fn::Sub with a
# variable map, which moto resolves.


def _literal_join(value: Any) -> Any:
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        if all(isinstance(part, str) for part in parts):
            return separator.join(parts)
    return value


# moto's Fn::Sub runs Python's string.Template, which turns "$$" (the ASL context object prefix) into "$"; AWS leaves
# it alone. "$$" is parked behind a placeholder through the Sub and restored when the state machine is registered.
CONTEXT_PREFIX_PLACEHOLDER = "__ASL_CONTEXT_OBJECT__"


def apply_definition_substitutions(template: dict[str, Any]) -> None:
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != "AWS::StepFunctions::StateMachine":
            continue
        props = resource.get("Properties", {})
        substitutions = props.pop("DefinitionSubstitutions", None)
        definition = _literal_join(props.get("DefinitionString"))
        if "Definition" in props and "DefinitionString" not in props:
            definition = json.dumps(props.pop("Definition"))
        if substitutions and isinstance(definition, str):
            parked = definition.replace("$$", CONTEXT_PREFIX_PLACEHOLDER)
            props["DefinitionString"] = {"Fn::Sub": [parked, substitutions]}
        elif isinstance(definition, str):
            props["DefinitionString"] = definition


# ---------------------------------------------------------------------------------------------------------------
# CloudFormation: list parameters
# AWS resolves a Ref to a CommaDelimitedList or List<...> parameter to a list; moto's CloudFormation resolves it to
# the raw comma-separated string (Batch then sees instance types "c", "6", ...). The values are inlined as lists.


def inline_list_parameters(template: dict[str, Any], values: dict[str, Any]) -> None:
    lists: dict[str, list[str]] = {}
    for name, spec in template.get("Parameters", {}).items():
        kind = spec.get("Type", "")
        if kind == "CommaDelimitedList" or kind.startswith("List<"):
            raw = values.get(name, spec.get("Default", ""))
            lists[name] = [item.strip() for item in str(raw).split(",") if item.strip()]

    def inline(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"Ref"} and value["Ref"] in lists:
                return list(lists[value["Ref"]])
            return {k: inline(v) for k, v in value.items()}
        if isinstance(value, list):
            return [inline(v) for v in value]
        return value

    template["Resources"] = inline(template.get("Resources", {}))
    template["Outputs"] = inline(template.get("Outputs", {}))


# ---------------------------------------------------------------------------------------------------------------
# Batch: a compute environment that names no ServiceRole uses the AWSServiceRoleForBatch service-linked role, and
# only such environments are updated in place (a new launch template or instance types replace the others, ending
# the jobs on them). moto requires a ServiceRole; a stand-in role is given to the environments that name none.
BATCH_SERVICE_ROLE_STAND_IN = "OfflineBatchServiceLinkedRole"


def add_batch_service_role(template: dict[str, Any]) -> None:
    resources = template.get("Resources", {})
    environments = [
        resource["Properties"]
        for resource in resources.values()
        if resource.get("Type") == "AWS::Batch::ComputeEnvironment" and "ServiceRole" not in resource["Properties"]
    ]
    if not environments:
        return
    resources[BATCH_SERVICE_ROLE_STAND_IN] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ]
            }
        },
    }
    for properties in environments:
        properties["ServiceRole"] = {"Fn::GetAtt": [BATCH_SERVICE_ROLE_STAND_IN, "Arn"]}


# CloudFormation: resource types moto cannot create. AWS creates them; moto's CloudFormation skips them with a
# warning and leaves a Ref to them unresolved. They change no behaviour the offline runtime exercises, so they are
# removed up front and listed (`spotctl demo` prints the list) with what AWS would do.

NOT_EMULATED: dict[str, str] = {
    "AWS::S3::BucketPolicy": "TLS-only bucket policy: offline traffic is in-process, there is no transport",
    "AWS::SQS::QueuePolicy": "queue policy for EventBridge: offline delivery to the dead-letter queue is direct",
    "AWS::Lambda::EventInvokeConfig": "async retry/on-failure destination: offline handler errors are reported",
    "AWS::EC2::PlacementGroup": "cluster placement group: the Batch emulator places nodes without a network model",
    "AWS::CloudWatch::Alarm": "CloudWatch alarms: offline handlers emit no metrics to alarm on",
    "AWS::SNS::TopicPolicy": "topic policy for CloudWatch alarms: resource policies are not enforced offline",
}
_REPLACEMENT_REFS = {"AWS::EC2::PlacementGroup": "spot-hpc-offline-placement-group"}


def drop_unemulated_resources(template: dict[str, Any]) -> list[dict[str, str]]:
    resources = template.get("Resources", {})
    dropped: list[dict[str, str]] = []
    for logical_id, resource in list(resources.items()):
        kind = resource.get("Type", "")
        if kind in NOT_EMULATED:
            del resources[logical_id]
            dropped.append({"logical_id": logical_id, "type": kind, "reason": NOT_EMULATED[kind]})
    replacements = {d["logical_id"]: _REPLACEMENT_REFS[d["type"]] for d in dropped if d["type"] in _REPLACEMENT_REFS}
    dropped_ids = {d["logical_id"] for d in dropped}

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"Ref"} and value["Ref"] in replacements:
                return replacements[value["Ref"]]
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    for resource in resources.values():
        if "DependsOn" in resource:
            depends = resource["DependsOn"] if isinstance(resource["DependsOn"], list) else [resource["DependsOn"]]
            resource["DependsOn"] = [d for d in depends if d not in dropped_ids]
        resource.update(scrub({k: v for k, v in resource.items() if k != "DependsOn"}))
    return dropped


# ---------------------------------------------------------------------------------------------------------------
# Lambda: AWS runs a function's handler in its own sandbox with the function's environment. moto runs functions
# in Docker (or returns a canned answer without it). Offline, the handler runs in-process: its module is loaded from
# the function's CodeUri under the function's environment (its cold start). Invocations are serialised (moto's
# backends are not thread-safe), and the function's environment is visible only on the thread that runs it: Step
# Functions invokes from threads of its own while the runtime reads the process environment (every boto3 client it
# creates walks os.environ for proxies), so swapping the process-wide environment would race with those readers.

_INVOKE_LOCK = threading.RLock()
_in_progress = 0
_in_progress_lock = threading.Lock()  # `+=` on a global is not atomic across threads
_current = threading.local()  # the function whose handler runs on this thread, if any


def current_function() -> str | None:
    return getattr(_current, "logical_id", None)


def invocation_in_progress() -> bool:
    return _in_progress > 0


@dataclass
class LocalFunction:
    logical_id: str
    code_dir: Path
    module: ModuleType | None = None
    invocations: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class LambdaContextStandIn:
    """What a handler reads from its context object. Its time left counts down from the function's Timeout as the
    invocation runs, as Lambda's does: a handler sizes its work by it, and the control plane's notification claims
    last as long as it says."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 256
    timeout_seconds: float = 60.0
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000))


# Offline environment every function gets on top of its own: no X-Ray daemon, no CloudWatch agent.
OFFLINE_FUNCTION_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "SLACK_ALLOW_LOOPBACK": "true",
}


_sandbox = threading.local()  # the environment of the function running on this thread, if any


class _SandboxedEnviron(os._Environ[str]):
    """os.environ, but a thread running a function sees that function's environment instead of the process's."""

    @property  # type: ignore[misc]
    def _data(self) -> dict[bytes, bytes]:
        data: dict[bytes, bytes] | None = getattr(_sandbox, "environ", None)
        return self.__dict__["_data"] if data is None else data  # type: ignore[no-any-return]


def _process_environ() -> dict[str, str]:
    """The process environment, whatever the calling thread runs."""
    environ = os.environ
    process = dict(environ.__dict__["_data"])  # one copy in C, so a concurrent setenv cannot change it under us
    return {environ.decodekey(k): environ.decodevalue(v) for k, v in process.items()}  # type: ignore[attr-defined]


@contextlib.contextmanager
def function_environment(env: dict[str, Any]) -> Iterator[None]:
    """Runs the block with `env` (over the process environment) as os.environ, on this thread only."""
    environ = os.environ
    if not isinstance(environ, _SandboxedEnviron):
        # Same object, so modules that imported `environ` from os see it too.
        environ.__class__ = _SandboxedEnviron
    # CloudFormation hands every environment value to Lambda as a string; moto keeps resolved numbers as numbers.
    values = {**_process_environ(), **OFFLINE_FUNCTION_ENV, **{name: str(value) for name, value in env.items()}}
    outer = getattr(_sandbox, "environ", None)  # a function invoking another synchronously, on the same thread
    _sandbox.environ = {environ.encodekey(k): environ.encodevalue(v) for k, v in values.items()}  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _sandbox.environ = outer


def run_local_function(
    local: LocalFunction,
    function_name: str,
    function_arn: str,
    handler: str,
    env: dict[str, str],
    event: Any,
    timeout_seconds: float = LambdaContextStandIn.timeout_seconds,
    memory_mb: int = LambdaContextStandIn.memory_limit_in_mb,
) -> tuple[Any, bool]:
    """Runs the handler in-process, its context telling the function's `timeout_seconds` and `memory_mb`; returns
    (result or error payload, errored)."""
    global _in_progress
    module_name, _, attribute = handler.rpartition(".")
    caller = current_function()  # a function invoking another synchronously, on the same thread
    with _in_progress_lock:
        _in_progress += 1  # counted from the request on, so the runtime never advances time under a waiting call
    try:
        with _INVOKE_LOCK, function_environment({**env, "AWS_LAMBDA_FUNCTION_NAME": function_name}):
            local.invocations += 1
            _current.logical_id = local.logical_id
            if local.module is None:
                path = local.code_dir / f"{module_name.replace('.', '/')}.py"
                spec = importlib.util.spec_from_file_location(f"offline_fn_{local.logical_id}", path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                local.module = module
            context = LambdaContextStandIn(function_name, function_arn, memory_mb, timeout_seconds)
            result = getattr(local.module, attribute)(event, context)
            return result, False
    except Exception as exc:
        local.errors.append(f"{type(exc).__name__}: {exc}")
        return {
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc)[-5:],
        }, True
    finally:
        _current.logical_id = caller
        with _in_progress_lock:
            _in_progress -= 1


FunctionRegistry = Callable[[str], "LocalFunction | None"]


def install_lambda_adapter(registry: FunctionRegistry) -> Callable[[], None]:
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.awslambda_simple.models import LambdaSimpleBackend

    original = LambdaFunction.invoke
    original_simple = LambdaSimpleBackend.invoke
    # Without Docker moto answers every invoke with a canned payload; route it to the function instead.
    LambdaSimpleBackend.invoke = LambdaBackend.invoke  # type: ignore[method-assign]

    def invoke(self: Any, body: str, request_headers: Any, response_headers: Any) -> str | bytes:
        local = registry(self.function_name)
        if local is None:
            return original(self, body, request_headers, response_headers)  # type: ignore[no-any-return]
        event = json.loads(body) if body else {}
        result, errored = run_local_function(
            local,
            self.function_name,
            self.function_arn,
            self.handler,
            dict(self.environment_vars or {}),
            event,
            timeout_seconds=float(self.timeout),
            memory_mb=int(self.memory_size),
        )
        if errored:
            response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(result, default=str).encode()

    LambdaFunction.invoke = invoke  # type: ignore[method-assign]

    def uninstall() -> None:
        LambdaFunction.invoke = original  # type: ignore[method-assign]
        LambdaSimpleBackend.invoke = original_simple  # type: ignore[method-assign]
        if isinstance(os.environ, _SandboxedEnviron):
            os.environ.__class__ = os._Environ  # type: ignore[assignment]

    return uninstall


# ---------------------------------------------------------------------------------------------------------------
# CloudFormation: AWS::Batch::JobDefinition
# AWS registers the definition with its Type (container or multinode), Timeout, PlatformCapabilities and
# PropagateTags. moto's CloudFormation registers every definition as a container job and drops those properties,
# so a multi-node definition fails to register. The definition is registered with all its properties.


def install_job_definition_adapter() -> Callable[[], None]:
    from moto.batch.models import JobDefinition, batch_backends
    from moto.batch.utils import lowercase_first_key

    original = JobDefinition.__dict__["create_from_cloudformation_json"]

    def create_from_cloudformation_json(
        cls: Any,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        props = cloudformation_json["Properties"]

        def optional(name: str) -> Any:
            return lowercase_first_key(props[name]) if name in props else None

        return batch_backends[account_id][region_name].register_job_definition(
            def_name=props.get("JobDefinitionName", resource_name),
            parameters=dict(props.get("Parameters", {})),
            _type=props.get("Type", "container"),
            tags=dict(props.get("Tags", {})),
            retry_strategy=optional("RetryStrategy"),
            container_properties=optional("ContainerProperties"),
            node_properties=optional("NodeProperties"),
            eks_properties=optional("EksProperties"),
            timeout=optional("Timeout") or {},
            platform_capabilities=props.get("PlatformCapabilities", ["EC2"]),
            propagate_tags=bool(props.get("PropagateTags", False)),
        )

    JobDefinition.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[assignment]

    def uninstall() -> None:
        JobDefinition.create_from_cloudformation_json = original  # type: ignore[method-assign]

    return uninstall


# ---------------------------------------------------------------------------------------------------------------
# Pricing: deployed, the control plane asks the AWS Price List API and EC2 Spot price history; moto emulates
# neither. Offline, the price book reads the same public price data the benchmarks use (data/).


def install_price_book_adapter(data_dir: Path) -> Callable[[], None]:
    from spot_hpc import services
    from spot_hpc.pricing import DataFilePriceBook

    original = services.make_aws_price_book
    book = DataFilePriceBook.from_data_dir(data_dir)

    def offline_price_book(region: str, spot_advisor: Any = None) -> DataFilePriceBook:
        return book

    services.make_aws_price_book = offline_price_book  # type: ignore[assignment]

    def uninstall() -> None:
        services.make_aws_price_book = original  # type: ignore[assignment]

    return uninstall


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: one service. AWS runs executions of the state machines CloudFormation creates. moto's executing
# interpreter (execute_state_machine) keeps its own state machines, apart from those moto's CloudFormation creates;
# after deployment each created state machine is registered with the interpreter under the same name and ARN.


def register_state_machines_for_execution(account_id: str, region: str) -> list[str]:
    from moto.stepfunctions.models import stepfunctions_backends
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    created = stepfunctions_backends[account_id][region]
    executing = stepfunctions_parser_backends[account_id][region]
    registered = []
    known = {sm.arn for sm in executing.state_machines}
    for machine in created.state_machines:
        machine.definition = machine.definition.replace(CONTEXT_PREFIX_PLACEHOLDER, "$$")
        if machine.arn in known:
            continue
        executing.create_state_machine(
            name=machine.name,
            definition=machine.definition,
            roleArn=machine.roleArn,
            loggingConfiguration=getattr(machine, "loggingConfiguration", None),
            tracingConfiguration=getattr(machine, "tracingConfiguration", None),
            sm_type=getattr(machine, "type", None) or "STANDARD",
        )
        registered.append(machine.arn)
    return registered


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: SendTaskFailure's cause. AWS records the error and the cause in the TaskFailed event, so a Catch's
# ResultPath holds both. moto's response layer reads only the error and drops the cause.


def install_send_task_failure_adapter() -> Callable[[], None]:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    original = StepFunctionResponse.send_task_failure

    def send_task_failure(self: Any) -> Any:
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign]

    def uninstall() -> None:
        StepFunctionResponse.send_task_failure = original  # type: ignore[method-assign]

    return uninstall


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: a task token per attempt. AWS gives every attempt of a waitForTaskToken task a token of its own, so
# an answer meant for an attempt that failed and was retried cannot settle the retry (it gets TaskTimedOut). moto
# makes the token once per state and reuses it across the state's retries; a retried attempt gets a fresh one here.


def install_task_token_adapter() -> Callable[[], None]:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback,
    )

    own = StateTaskServiceCallback.__dict__.get("_eval_execution")  # else inherited
    original = StateTaskServiceCallback._eval_execution

    def eval_execution(self: Any, env: Any) -> None:
        retried = env.states.context_object.context_object_data.get("State", {}).get("RetryCount", 0) > 0
        if retried and self.resource.condition == ResourceCondition.WaitForTaskToken:
            env.callback_pool_manager.add(env.states.context_object.update_task_token())
        original(self, env)

    StateTaskServiceCallback._eval_execution = eval_execution  # type: ignore[method-assign]

    def uninstall() -> None:
        if own is None:
            del StateTaskServiceCallback._eval_execution
        else:
            StateTaskServiceCallback._eval_execution = own  # type: ignore[method-assign]

    return uninstall


def answer_untaken(execution_arn: str) -> bool:
    """Whether the task token the execution waits on was answered (SendTaskSuccess, SendTaskFailure) and the execution
    has yet to take the answer. AWS records an answer as it is given; moto hands it to the execution's thread, which
    takes it when next scheduled: until then the execution is not waiting on the outside world, and time moved on
    meanwhile could end the state at its timeout (`VirtualClockWaits`) though the answer came before it."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    region, account = execution_arn.split(":")[3:5]
    backend = stepfunctions_parser_backends[account][region]
    for execution in backend._get_executions():
        if execution.execution_arn == execution_arn and execution.exec_worker is not None:
            # A retried attempt's token is added after the one before (`install_task_token_adapter`): the last is
            # the one waited on.
            endpoints = list(execution.exec_worker.env.callback_pool_manager._pool.values())
            return bool(endpoints) and endpoints[-1].get_outcome() is not None
    return False


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: waits on the clock. AWS waits a retrier's interval (IntervalSeconds, grown by BackoffRate, capped by
# MaxDelaySeconds) before the next attempt, and ends a state at its TimeoutSeconds (a stage's is the run's deadline
# and more), on the same clock as everything else. moto waits both on the wall clock, while offline the control
# plane's time is virtual: a retry came at the same virtual instant (a lease the retrier waits out, the
# NotificationClaimHeld one, never lapsed) after holding the run up for real seconds, and a state's timeout never
# came at all. Both wait for the virtual clock instead, as an execution waits for a task token: the runtime counts a
# retry's wait as waiting on the outside world, and moves time on.


class VirtualClockWaits:
    """Waits of the executions that end when the virtual clock (`now`) reaches their time: a retrier's (by execution
    ARN) and a state's timeout."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now
        self._due: dict[object, datetime] = {}  # a wait (an execution ARN, or a timeout's event) -> when it ends
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._execution = threading.local()  # the execution whose retrier runs on this thread

    def _wait(self, key: object, seconds: float, woken: Callable[[float], bool]) -> bool:
        """Until `seconds` have passed on the virtual clock, or `woken` (given how long it may block) says the wait
        is over; returns whether it was woken."""
        due = self._now() + timedelta(seconds=seconds)
        with self._lock:
            self._due[key] = due
        try:
            while self._now() < due:
                if woken(0.01):
                    return True
                if self._stopped.is_set():
                    # The embedded AWS is gone: the execution must make no call out of it, so it waits for good
                    # (on a daemon thread), as it would on a task token that never comes.
                    threading.Event().wait()
            return woken(0.0)
        finally:
            with self._lock:
                self._due.pop(key, None)

    def sleep(self, seconds: float) -> None:
        """Stands in for moto's time.sleep in a retrier: returns once `seconds` have passed on the virtual clock."""

        def never_woken(block: float) -> bool:
            time.sleep(block)
            return False

        self._wait(getattr(self._execution, "arn", ""), seconds, never_woken)

    def timeout_event(self) -> threading.Event:
        """An event whose wait with a timeout (a state's TimeoutSeconds) ends on the virtual clock."""
        waits = self

        class VirtualTimeoutEvent(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                if timeout is None:
                    return super().wait()
                return waits._wait(self, timeout, lambda block: threading.Event.wait(self, block))

        return VirtualTimeoutEvent()

    def waiting(self, execution_arn: str) -> bool:
        """Whether the execution waits for a retry whose time the virtual clock has not reached."""
        with self._lock:
            due = self._due.get(execution_arn)
        return due is not None and self._now() < due

    def due_times(self) -> list[datetime]:
        """When the waits going on now end."""
        with self._lock:
            return list(self._due.values())

    def retries_due(self) -> list[datetime]:
        """When the retries waited for now are due."""
        with self._lock:
            return [due for key, due in self._due.items() if isinstance(key, str)]


def install_virtual_clock_waits(now: Callable[[], datetime]) -> tuple[VirtualClockWaits, Callable[[], None]]:
    from types import SimpleNamespace

    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.state.exec import execute_state
    from moto.stepfunctions.parser.asl.eval.callback import callback

    waits = VirtualClockWaits(now)
    original_time, original_eval = retrier_decl.time, retrier_decl.RetrierDecl._eval_body
    original_threading, original_event = execute_state.threading, callback.Event

    def eval_body(self: Any, env: Any) -> None:
        waits._execution.arn = env.states.context_object.context_object_data["Execution"]["Id"]
        original_eval(self, env)

    retrier_decl.time = SimpleNamespace(sleep=waits.sleep)  # type: ignore[assignment]
    retrier_decl.RetrierDecl._eval_body = eval_body  # type: ignore[method-assign]
    # The module makes one Event per state run with a timeout, and waits on it for that timeout.
    execute_state.threading = SimpleNamespace(Event=waits.timeout_event)  # type: ignore[assignment]
    # A task token's wait is timed by its own Event too (the task's TimeoutSeconds, or HeartbeatSeconds).
    callback.Event = waits.timeout_event  # type: ignore[misc,assignment]

    def uninstall() -> None:
        waits._stopped.set()
        retrier_decl.time = original_time
        retrier_decl.RetrierDecl._eval_body = original_eval  # type: ignore[method-assign]
        execute_state.threading = original_threading
        callback.Event = original_event  # type: ignore[misc]

    return waits, uninstall


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: StopExecution. AWS ends the execution ABORTED at once. moto stops its program but leaves the
# execution RUNNING until the program returns, which a task waiting on its token never does; the status is set here.


def install_stop_execution_adapter() -> Callable[[], None]:
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.backend.execution import Execution

    original = Execution.stop

    def stop(self: Any, stop_date: Any, error: str | None, cause: str | None) -> None:
        original(self, stop_date, error, cause)
        if self.exec_status == ExecutionStatus.RUNNING:
            self.exec_status, self.stop_date = ExecutionStatus.ABORTED, stop_date

    Execution.stop = stop  # type: ignore[method-assign]

    def uninstall() -> None:
        Execution.stop = original  # type: ignore[method-assign]

    return uninstall


# ---------------------------------------------------------------------------------------------------------------
# CloudFormation: S3 bucket versioning. AWS creates a bucket with its VersioningConfiguration, so every upload
# gets a version id (one pipeline run per object version). moto's CloudFormation ignores the property; it is
# applied to the created buckets.


def apply_bucket_versioning(template: dict[str, Any], physical_ids: dict[str, str], s3: Any) -> list[str]:
    versioned = []
    for logical_id, resource in template.get("Resources", {}).items():
        status = resource.get("Properties", {}).get("VersioningConfiguration", {}).get("Status")
        if resource.get("Type") == "AWS::S3::Bucket" and status and logical_id in physical_ids:
            s3.put_bucket_versioning(Bucket=physical_ids[logical_id], VersioningConfiguration={"Status": status})
            versioned.append(logical_id)
    return versioned


# ---------------------------------------------------------------------------------------------------------------
# IAM: AWS refuses a call the function's role does not allow; moto allows everything. Every AWS call a handler makes
# offline is recorded as the IAM action it needs, so tests can check the template grants exactly that.

_S3_ACTIONS = {
    "ListObjectsV2": "ListBucket",
    "HeadObject": "GetObject",
    "DeleteObjects": "DeleteObject",
    "ListObjectVersions": "ListBucketVersions",
}


# A call on one version of an object is authorised as the version's action, not the object's.
_S3_VERSION_ACTIONS = {"GetObject": "GetObjectVersion", "DeleteObject": "DeleteObjectVersion"}


class AwsCallRecorder:
    def __init__(self) -> None:
        self.actions: dict[str, set[str]] = {}

    def __call__(self, model: Any, params: dict[str, Any] | None = None, **_: Any) -> None:
        function = current_function()
        if function is None:
            return
        service = model.service_model.signing_name
        operation = model.name
        if service == "s3":
            operation = _S3_ACTIONS.get(operation, operation)
            if "versionId" in (params or {}).get("query_string", {}):
                operation = _S3_VERSION_ACTIONS.get(operation, operation)
        self.actions.setdefault(function, set()).add(f"{service}:{operation}")


def record_aws_calls() -> tuple[AwsCallRecorder, Callable[[], None]]:
    import boto3

    recorder = AwsCallRecorder()
    events = boto3._get_default_session()._session.get_component("event_emitter")
    events.register("before-call", recorder, unique_id="spot-hpc-offline-iam-recorder")

    def uninstall() -> None:
        events.unregister("before-call", recorder, unique_id="spot-hpc-offline-iam-recorder")

    return recorder, uninstall
