"""EventBridge delivery offline: the template's rules, matched by moto's own pattern matcher, invoke their targets.

AWS EventBridge delivers a matching event to every target of every rule, retrying per the target's RetryPolicy a
delivery that fails (the target throttled, say) and then sending it to the target's dead-letter queue. A Lambda target
takes the event asynchronously: a function error is retried by Lambda (the template's EventInvokeConfig, twice) and
then goes to its on-failure destination, the same queue, as an invocation record. moto stores the rules and matches
patterns but invokes no Lambda or Step Functions target; this bus does, in-process, once, and dead-letters the event
itself when its target errors. An entry PutEvents refuses (no Source, DetailType or Detail, a Source or DetailType
that is not a non-empty string, a Detail that is not a JSON object, Resources that are not a list of strings) is
refused here too, before any rule sees it: PutEvents answers it as a failed entry, with an ErrorCode and an
ErrorMessage, and puts the other entries. So is an entry over PutEvents'
256 KB, for which it refuses the whole request.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import boto3
from spot_hpc.clock import format_time, utc_now

from spotctl.cli import shown

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"


@dataclass
class Delivery:
    event_id: str
    rule: str
    target: str
    status: str  # ok | error
    error: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "event_id": self.event_id,
            "rule": self.rule,
            "target": self.target,
            "status": self.status,
            "error": self.error,
        }


class RejectedEntry(ValueError):
    """An entry PutEvents refuses: a failed entry of its response (an ErrorCode and an ErrorMessage, no EventId), which
    reaches no rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# The fields of an event (as the bus takes it, and as targets get it) that are PutEvents' entry fields.
_STRING_FIELDS = (("source", "Source"), ("detail-type", "DetailType"))


def _missing(name: str) -> RejectedEntry:
    return RejectedEntry("InvalidArgument", f"Parameter {name} is not valid. Reason: {name} is a required argument.")


def check_entry(entry: Mapping[str, Any]) -> None:
    """Raises RejectedEntry for an entry PutEvents would answer as failed: a Source or DetailType (`source`,
    `detail-type`) missing or not a non-empty string (InvalidArgument), a Detail (`detail`) missing (InvalidArgument)
    or not a JSON object (MalformedDetail), Resources (`resources`) that are not a list of strings (InvalidArgument).
    The fields are checked in the order PutEvents checks them: Source, DetailType, then Detail."""
    for field, name in _STRING_FIELDS:
        if field not in entry:
            raise _missing(name)
        if not isinstance(entry[field], str) or not entry[field]:
            reason = f"{name} must be a non-empty string, not {shown(entry[field])}"
            raise RejectedEntry("InvalidArgument", f"Parameter {name} is not valid. Reason: {reason}.")
    # The API reference marks Detail optional, but PutEvents answers an entry without one as a failed entry.
    if "detail" not in entry:
        raise _missing("Detail")
    if not isinstance(entry["detail"], dict):
        raise RejectedEntry("MalformedDetail", f"Detail is malformed: not a JSON object but {shown(entry['detail'])}.")
    resources = entry.get("resources", [])
    if not isinstance(resources, list) or not all(isinstance(resource, str) for resource in resources):
        reason = f"Resources must be a list of strings, not {shown(resources)}"
        raise RejectedEntry("InvalidArgument", f"Parameter Resources is not valid. Reason: {reason}.")


# PutEvents refuses a request whose entries come to more than 256 KB: a ValidationException, no entry put. An entry
# over it can be put in no request.
MAX_ENTRY_BYTES = 256 * 1024


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it against MAX_ENTRY_BYTES: Time 14 bytes when given, and the UTF-8 bytes
    of Source, DetailType, Detail (its JSON text, written compactly) and each of Resources. For an entry `check_entry`
    takes."""
    detail = json.dumps(entry["detail"], separators=(",", ":"), ensure_ascii=False)
    texts = [entry["source"], entry["detail-type"], detail, *entry.get("resources", [])]
    return (14 if "time" in entry else 0) + sum(len(text.encode("utf-8")) for text in texts)


def check_entry_size(entry: Mapping[str, Any]) -> None:
    """Raises ValueError for an entry over MAX_ENTRY_BYTES, which PutEvents refuses with its whole request."""
    size = entry_size(entry)
    if size > MAX_ENTRY_BYTES:
        raise ValueError(f"{size:,} bytes, over the {MAX_ENTRY_BYTES:,} (256 KB) PutEvents takes of an entry")


def make_event(
    source: str,
    detail_type: str,
    detail: dict[str, Any],
    resources: list[str] | None = None,
    time: datetime | None = None,
    account: str = ACCOUNT_ID,
) -> dict[str, Any]:
    """An event as EventBridge hands it to targets."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": format_time(time or utc_now()),
        "region": REGION,
        "resources": resources or [],
        "detail": detail,
    }


_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")


def schedule_period(expression: str) -> timedelta:
    """The period of a `rate(...)` schedule. Offline time is virtual, so cron schedules are not emulated. A rate
    EventBridge refuses (a value under 1, a unit singular for more than 1 or plural for 1) is refused too: a period
    of 0 would fire forever."""
    match = _RATE.match(expression.strip())
    if not match:
        raise ValueError(f"schedule {expression!r}: only rate(...) schedules are emulated offline")
    value, unit = int(match.group(1)), match.group(2)
    if value < 1 or (value == 1) == unit.endswith("s"):
        raise ValueError(
            f"schedule {expression!r} is not a rate EventBridge takes: a whole number from 1, with the unit singular "
            "for 1 and plural otherwise, e.g. rate(1 hour), rate(5 minutes)"
        )
    return timedelta(**{f"{unit.rstrip('s')}s": value})


class EventBus:
    """The default bus. With `redeliver`, every event put is delivered twice, the second time after the next event
    (EventBridge delivers at least once and keeps no order): a run must come out the same."""

    def __init__(self, redeliver: bool = False) -> None:
        self._lambda = boto3.client("lambda", region_name=REGION)
        self._sfn = boto3.client("stepfunctions", region_name=REGION)
        self._sqs = boto3.client("sqs", region_name=REGION)
        self.deliveries: list[Delivery] = []
        self._next_fire: dict[str, datetime] = {}
        self.redeliver = redeliver
        self._again: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (rule, target, event) to deliver again

    def _rules(self) -> list[Any]:
        from moto.events.models import events_backends

        return list(events_backends[ACCOUNT_ID][REGION].event_buses["default"].rules.values())

    def put(self, entry: dict[str, Any]) -> list[Delivery]:
        """Delivers one event to every target of every enabled rule whose pattern matches it.

        As PutEvents does, the bus gives the entry whatever it left out (id, time, account, region, version, ...),
        keeping what it gave, so that rules and targets see an event of the shape EventBridge delivers. An id that is
        not a non-empty string is none EventBridge gives, and the event gets one of its own instead. An entry
        PutEvents refuses raises RejectedEntry (`check_entry`), and one over its size limit ValueError
        (`check_entry_size`): either is delivered nowhere.
        """
        check_entry(entry)
        check_entry_size(entry)
        event = {**make_event(entry["source"], entry["detail-type"], entry["detail"]), **entry}
        if not isinstance(event["id"], str) or not event["id"]:
            event["id"] = str(uuid.uuid4())
        delivered: list[Delivery] = []
        again, self._again = self._again, []
        for rule in self._rules():
            if rule.state != "ENABLED" or rule.scheduled_expression or not rule.event_pattern.matches_event(event):
                continue
            for target in rule.targets:
                delivered.append(self._deliver(rule.name, target, event))
                if self.redeliver:
                    self._again.append((rule.name, target, event))
        # The events before this one, once more: after it.
        delivered.extend(self._deliver(rule_name, target, earlier) for rule_name, target, earlier in again)
        self.deliveries.extend(delivered)
        return delivered

    def near_misses(self, event: dict[str, Any]) -> dict[str, list[str]]:
        """{rule: the fields of its pattern besides source and detail-type} for each rule that takes the event's
        source and detail-type: the fields an event must also match (the stack's own queue or bucket names)."""
        from moto.events.models import EventPattern

        misses: dict[str, list[str]] = {}
        for rule in self._rules():
            if rule.state != "ENABLED" or rule.scheduled_expression:
                continue
            pattern = rule.event_pattern.get_pattern()
            kind = {key: value for key, value in pattern.items() if key in ("source", "detail-type")}
            if EventPattern(None, kind).matches_event(cast(Any, event)):  # moto types events as a TypedDict
                misses[rule.name] = sorted(_field_paths({k: v for k, v in pattern.items() if k not in kind}))
        return misses

    def fire_due_schedules(self, now: datetime) -> list[Delivery]:
        """Fires every scheduled rule whose rate has come round on the (virtual) clock since it last fired. A rule on a
        cron schedule never fires offline: cron schedules are not emulated, and such a rule stops no other."""
        delivered: list[Delivery] = []
        for rule in self._rules():
            if rule.state != "ENABLED" or not rule.scheduled_expression:
                continue
            if rule.scheduled_expression.strip().startswith("cron("):
                continue
            period = schedule_period(rule.scheduled_expression)
            due = self._next_fire.setdefault(rule.name, now + period)
            while due <= now:
                event = make_event("aws.events", "Scheduled Event", {}, [rule.arn], time=due)
                delivered.extend(self._deliver(rule.name, target, event) for target in rule.targets)
                due += period
            self._next_fire[rule.name] = due
        self.deliveries.extend(delivered)
        return delivered

    def _deliver(self, rule: str, target: dict[str, Any], event: dict[str, Any]) -> Delivery:
        arn = target["Arn"]
        payload = json.loads(target["Input"]) if target.get("Input") else event
        try:
            if ":lambda:" in arn:
                response = self._lambda.invoke(FunctionName=arn, Payload=json.dumps(payload).encode())
                if response.get("FunctionError"):
                    body = json.loads(response["Payload"].read() or b"{}")
                    raise RuntimeError(f"{body.get('errorType')}: {body.get('errorMessage')}")
            elif ":states:" in arn:
                self._sfn.start_execution(stateMachineArn=arn, input=json.dumps(payload))
            else:
                raise RuntimeError(f"target type of {arn} is not emulated")
        except Exception as exc:
            self._dead_letter(target, event, str(exc))
            return Delivery(event["id"], rule, arn, "error", str(exc))
        return Delivery(event["id"], rule, arn, "ok")

    def _dead_letter(self, target: dict[str, Any], event: dict[str, Any], error: str) -> None:
        dlq_arn = (target.get("DeadLetterConfig") or {}).get("Arn")
        if not dlq_arn:
            return
        name = dlq_arn.rsplit(":", 1)[-1]
        url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
        self._sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(event),
            MessageAttributes={"ERROR_MESSAGE": {"DataType": "String", "StringValue": error[:1000]}},
        )


def _field_paths(pattern: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted field names a pattern tests: {"detail": {"jobQueue": [...]}} -> ["detail.jobQueue"]."""
    paths: list[str] = []
    for key, value in pattern.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.extend(_field_paths(value, path) if isinstance(value, dict) else [path])
    return paths
