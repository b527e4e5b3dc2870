"""A Spot instance that EC2 interrupts within its first hour is not charged (EC2 User Guide, "Billing for interrupted
Spot Instances"): told by the interruption warning kept for the instance and its launch time from DescribeInstances,
and billed as nothing in the run's cost."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from spot_hpc.batch import BatchGateway
from spot_hpc.clock import format_time
from spot_hpc.cost import attempt_cost_usd, attempt_from_report, run_cost_usd
from spot_hpc.first_hour import unbilled_instances
from spot_hpc.interruptions import SIGNAL_KEPT_FOR
from spot_hpc.ledger import InstanceSignal, Ledger

INSTANCE = "i-0aaaaaaaaaaaaaaa1"


def _ended_under(*instance_ids: str) -> dict[str, datetime]:
    """Each instance with when the job an interruption ended there stopped: after every warning the test keeps."""
    return dict.fromkeys(instance_ids, datetime.max.replace(tzinfo=UTC))


def _gateway() -> tuple[BatchGateway, Stubber]:
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(ec2)
    stubber.activate()
    return BatchGateway(batch_client=None, ecs_client=None, ec2_client=ec2), stubber


SPOT_TERMINATION = "Server.SpotInstanceTermination"


def _instance(
    instance_id: str, launched: datetime, state: str = "terminated", reason: str | None = SPOT_TERMINATION
) -> dict[str, Any]:
    """As DescribeInstances tells of it: by default, terminated by EC2 taking it back."""
    described: dict[str, Any] = {
        "InstanceId": instance_id,
        "InstanceType": "c6i.4xlarge",
        "Placement": {"AvailabilityZone": "us-east-1b"},
        "LaunchTime": launched,
        "State": {"Name": state},
    }
    if reason is not None:
        described["StateReason"] = {"Code": reason, "Message": f"{reason}: ..."}
    return described


def _described(
    launched: datetime, instance_id: str = INSTANCE, state: str = "terminated", reason: str | None = SPOT_TERMINATION
) -> dict[str, Any]:
    return {"Reservations": [{"Instances": [_instance(instance_id, launched, state, reason)]}]}


def _request(*instance_ids: str) -> dict[str, Any]:
    return {"Filters": [{"Name": "instance-id", "Values": list(instance_ids)}]}


def _warn(ledger: Ledger, at: datetime, signal: str = "interruption warning", instance_id: str = INSTANCE) -> None:
    kept = InstanceSignal(instance_id, signal, warning=signal == "interruption warning", signalled_at=format_time(at))
    ledger.keep_instance_signal(kept, f"event-{instance_id}-{at.isoformat()}", SIGNAL_KEPT_FOR)


@pytest.mark.parametrize(
    ("warned_after_launch", "unbilled"),
    [
        (timedelta(minutes=30), True),
        (timedelta(minutes=57, seconds=59), True),  # interrupted at 59:59
        (timedelta(minutes=58), False),  # interrupted at 60:00, in the second hour
        (timedelta(hours=5), False),
    ],
)
def test_an_instance_is_unbilled_when_its_interruption_falls_in_its_first_hour(
    ledger: Ledger, utc_clock, warned_after_launch, unbilled
):
    # GIVEN an instance launched at some time, and EC2's interruption warning for it (the interruption follows
    # two minutes later)
    launched = utc_clock.now - timedelta(hours=6)
    _warn(ledger, launched + warned_after_launch)
    batch, stubber = _gateway()
    stubber.add_response("describe_instances", _described(launched), _request(INSTANCE))
    # WHEN the instances EC2 interrupted within their first hour are asked for
    services = SimpleNamespace(ledger=ledger, batch=batch)
    found = unbilled_instances(services, _ended_under(INSTANCE), launched - timedelta(hours=1))  # type: ignore[arg-type]
    # THEN the instance is among them exactly when the interruption came before its first hour was out
    assert found == ({INSTANCE} if unbilled else set())
    stubber.assert_no_pending_responses()


def test_an_instance_given_only_a_rebalance_recommendation_is_billed_without_asking_ec2(ledger: Ledger, utc_clock):
    # GIVEN a rebalance recommendation for the instance (EC2 does not interrupt on it: whoever ends the instance
    # after it pays) and a warning for another instance given before `since`
    _warn(ledger, utc_clock.now, "rebalance recommendation")
    _warn(ledger, utc_clock.now - timedelta(hours=2), instance_id="i-0bbbbbbbbbbbbbbb2")
    batch, stubber = _gateway()
    # WHEN the unbilled instances are asked for
    found = unbilled_instances(
        SimpleNamespace(ledger=ledger, batch=batch),  # type: ignore[arg-type]
        _ended_under(INSTANCE, "i-0bbbbbbbbbbbbbbb2"),
        utc_clock.now - timedelta(hours=1),
    )
    # THEN there are none, and EC2 was not asked (the stubber holds no response: a call would fail)
    assert found == set()
    stubber.assert_no_pending_responses()


def test_an_instance_ec2_no_longer_describes_is_billed(ledger: Ledger, utc_clock):
    # GIVEN a warning for an instance EC2 no longer describes (terminated over an hour ago)
    _warn(ledger, utc_clock.now)
    batch, stubber = _gateway()
    stubber.add_response("describe_instances", {"Reservations": []}, _request(INSTANCE))
    # WHEN the unbilled instances are asked for
    found = unbilled_instances(SimpleNamespace(ledger=ledger, batch=batch), _ended_under(INSTANCE), utc_clock.now)  # type: ignore[arg-type]
    # THEN it is billed: a cost too high rather than one hidden
    assert found == set()


def test_an_instance_whose_launch_cannot_be_read_is_billed_and_logged(ledger: Ledger, utc_clock, caplog):
    # GIVEN a warning, and DescribeInstances throttled past the client's retries
    _warn(ledger, utc_clock.now)
    batch, stubber = _gateway()
    stubber.add_client_error("describe_instances", "RequestLimitExceeded", expected_params=_request(INSTANCE))
    # WHEN the unbilled instances are asked for
    with caplog.at_level(logging.WARNING):
        found = unbilled_instances(SimpleNamespace(ledger=ledger, batch=batch), _ended_under(INSTANCE), utc_clock.now)  # type: ignore[arg-type]
    # THEN the instance is billed in full, and the log says why
    assert found == set()
    assert "instance launch times unavailable" in caplog.text


def test_instances_are_described_by_filter_once_for_several():
    # GIVEN two instances (one asked for twice), described with launch times in another zone's offset
    batch, stubber = _gateway()
    launched = datetime.fromisoformat("2026-01-05T08:00:00+02:00")
    described = {
        "Reservations": [
            {"Instances": [_instance("i-1", launched)]},
            {"Instances": [_instance("i-2", launched + timedelta(minutes=5))]},
        ]
    }
    stubber.add_response("describe_instances", described, _request("i-1", "i-2"))
    # WHEN they are described
    instances = batch.describe_instances(["i-2", "i-1", "i-2"])
    # THEN one filtered call gives both: type, zone and launch time in UTC
    assert {
        key: (i.instance_type, i.availability_zone, format_time(i.launched_at)) for key, i in instances.items()
    } == {
        "i-1": ("c6i.4xlarge", "us-east-1b", "2026-01-05T06:00:00Z"),
        "i-2": ("c6i.4xlarge", "us-east-1b", "2026-01-05T06:05:00Z"),
    }
    stubber.assert_no_pending_responses()


def test_an_attempt_interrupted_in_its_instances_first_hour_costs_nothing():
    # GIVEN two 40-minute Spot attempts at $1.20 an hour, one of them on an instance EC2 interrupted within its
    # first hour
    ran = {"capacity": "spot", "nodes": 1, "started_hours": 0.0, "stopped_hours": 40 / 60, "usd_per_hour": 1.2}
    billed = attempt_from_report(ran)
    unbilled = attempt_from_report({**ran, "interrupted_in_first_hour": True})
    # WHEN they are costed
    # THEN the interrupted one costs nothing and the run only the other's 40 minutes
    assert attempt_cost_usd(billed) == pytest.approx(0.8)
    assert attempt_cost_usd(unbilled) == 0.0
    assert run_cost_usd([billed, unbilled]) == pytest.approx(0.8)


@pytest.mark.parametrize("flag", [{}, {"interrupted_in_first_hour": False}, {"interrupted_in_first_hour": "yes"}])
def test_a_report_field_that_is_not_true_does_not_make_an_attempt_free(flag):
    # GIVEN a report row whose flag is missing, false or not a boolean
    ran = {"capacity": "spot", "nodes": 1, "started_hours": 0.0, "stopped_hours": 1.0, "usd_per_hour": 1.0, **flag}
    # WHEN it is read and costed
    attempt = attempt_from_report(ran)
    # THEN it is billed its hour
    assert not attempt.interrupted_in_first_hour
    assert attempt_cost_usd(attempt) == 1.0


def test_container_instances_are_mapped_to_ec2_instances_at_most_100_per_call():
    # GIVEN 101 container instances of one cluster (DescribeContainerInstances takes at most 100), one named twice
    ecs = boto3.client("ecs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(ecs)
    stubber.activate()
    arns = [f"arn:aws:ecs:us-east-1:123456789012:container-instance/spot/{n:032x}" for n in range(101)]

    def described(part: list[str]) -> dict[str, Any]:
        return {"containerInstances": [{"containerInstanceArn": arn, "ec2InstanceId": f"i-{arn[-8:]}"} for arn in part]}

    for part in (arns[:100], arns[100:]):
        stubber.add_response(
            "describe_container_instances", described(part), {"cluster": "spot", "containerInstances": part}
        )
    # WHEN the EC2 instance behind each is asked for
    found = BatchGateway(batch_client=None, ecs_client=ecs, ec2_client=None).instances_of([*arns, arns[0]])
    # THEN two calls give every one
    assert found == {arn: f"i-{arn[-8:]}" for arn in arns}
    stubber.assert_no_pending_responses()


def test_a_warning_kept_from_before_the_instances_launch_does_not_stand_for_its_first_interruption(
    ledger: Ledger, utc_clock
):
    # GIVEN an instance launched an hour and a half ago, a warning for it dated before its launch (given by hand) and
    # EC2's own warning 70 minutes after its launch (the interruption in its second hour)
    launched = utc_clock.now - timedelta(minutes=90)
    _warn(ledger, launched - timedelta(minutes=5))
    _warn(ledger, launched + timedelta(minutes=70))
    batch, stubber = _gateway()
    stubber.add_response("describe_instances", _described(launched), _request(INSTANCE))
    # WHEN the instances EC2 interrupted within their first hour are asked for
    services = SimpleNamespace(ledger=ledger, batch=batch)
    found = unbilled_instances(services, _ended_under(INSTANCE), launched - timedelta(hours=1))  # type: ignore[arg-type]
    # THEN the instance is billed: its interruption is the one its own run was warned of, after its first hour (before,
    # the earliest warning kept, dated before the launch, put it in that hour)
    assert found == set()
    stubber.assert_no_pending_responses()


def test_instances_are_described_at_most_200_ids_per_call():
    # GIVEN 201 instances, as an array's shards get (EC2 refuses a call whose filters hold more than 200 values:
    # FilterLimitExceeded), one named twice
    batch, stubber = _gateway()
    launched = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
    ids = sorted(f"i-{n:017x}" for n in range(201))
    for part in (ids[:200], ids[200:]):
        described = {"Reservations": [{"Instances": [_instance(instance_id, launched) for instance_id in part]}]}
        stubber.add_response("describe_instances", described, _request(*part))
    # WHEN they are described
    found = batch.describe_instances([*ids, ids[0]])
    # THEN two calls describe every one
    assert sorted(found) == ids
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("state", "reason", "unbilled", "awaited"),
    [
        ("terminated", SPOT_TERMINATION, True, False),
        ("shutting-down", SPOT_TERMINATION, True, False),
        ("stopped", "Server.SpotInstanceShutdown", True, False),  # a Spot interruption that stops the instance
        ("terminated", "Client.UserInitiatedShutdown", False, False),  # its owner, Batch, ended it first
        ("running", None, False, True),  # not taken yet: its job stopped on the notice
    ],
)
def test_an_instance_is_unbilled_only_when_ec2_says_it_took_it(
    ledger: Ledger, utc_clock, state, reason, unbilled, awaited
):
    # GIVEN an instance warned 30 minutes after its launch, and what DescribeInstances says of its state and why
    launched = utc_clock.now - timedelta(hours=2)
    warned = launched + timedelta(minutes=30)
    _warn(ledger, warned)
    batch, stubber = _gateway()
    stubber.add_response("describe_instances", _described(launched, state=state, reason=reason), _request(INSTANCE))
    # WHEN the instances EC2 interrupted within their first hour are asked for
    services = SimpleNamespace(ledger=ledger, batch=batch)
    found = unbilled_instances(services, _ended_under(INSTANCE), launched)  # type: ignore[arg-type]
    # THEN it is unbilled when EC2 names a Spot interruption for its end; one still running is awaited, for the SLA
    # guard to look at once the warning's two minutes are out
    assert found == ({INSTANCE} if unbilled else set())
    assert ledger.unbilled_among([INSTANCE]) == found
    due = list(ledger.awaited_interruptions(utc_clock.now))
    assert [(a.instance_id, a.warned_at) for a in due] == ([(INSTANCE, format_time(warned))] if awaited else [])
    if awaited:
        assert list(ledger.awaited_interruptions(warned + timedelta(minutes=1, seconds=59))) == []
